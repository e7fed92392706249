package httpapi

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/ledger"
)

// Metrics are the API's Prometheus series.
type Metrics struct {
	requests     *prometheus.HistogramVec
	transactions *prometheus.CounterVec
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tally_http_request_duration_seconds",
			Help:    "Latency of API requests, from receipt to response, by route and status.",
			Buckets: []float64{.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "status"}),
		transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_transactions_total",
			Help: "Transfer and transaction requests by kind, outcome (applied, replayed, rejected, error) and problem code.",
		}, []string{"kind", "outcome", "code"}),
	}
	reg.MustRegister(m.requests, m.transactions)
	return m
}

func (m *Metrics) observeRequest(route string, status int, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(route, strconv.Itoa(status)).Observe(d.Seconds())
}

func (m *Metrics) observeTransaction(kind, outcome string, code ledger.Code) {
	if m == nil {
		return
	}
	m.transactions.WithLabelValues(kind, outcome, string(code)).Inc()
}
