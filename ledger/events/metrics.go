package events

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the relay's, per shard.
type Metrics struct {
	lag       *prometheus.GaugeVec
	backlog   *prometheus.GaugeVec
	active    *prometheus.GaugeVec
	published *prometheus.CounterVec
	records   *prometheus.CounterVec
	errors    *prometheus.CounterVec
}

// NewMetrics registers the relay's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	shard := []string{"shard"}
	m := &Metrics{
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_events_lag_seconds",
			Help: "Age of the oldest event the shard committed and Kafka has not acknowledged (0: none waits)."}, shard),
		backlog: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_events_backlog",
			Help: "Events in the shard's outbox not yet acknowledged by Kafka."}, shard),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "tally_events_relay_active",
			Help: "1 while this relay has the shard's turn to publish, 0 while it stands by."}, shard),
		published: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_events_published_total",
			Help: "Events published and acknowledged by Kafka."}, shard),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_events_records_total",
			Help: "Kafka records published (one per event and account)."}, shard),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tally_events_publish_errors_total",
			Help: "Rounds whose records Kafka did not acknowledge (they are published again)."}, shard),
	}
	reg.MustRegister(m.lag, m.backlog, m.active, m.published, m.records, m.errors)
	return m
}

// shardMetrics are one shard's series; without Metrics they go nowhere.
type shardMetrics struct {
	lag, backlog, active       prometheus.Gauge
	published, records, errors prometheus.Counter
}

func (m *Metrics) forShard(shard int) shardMetrics {
	if m == nil {
		m = NewMetrics(prometheus.NewRegistry())
	}
	l := prometheus.Labels{"shard": strconv.Itoa(shard)}
	return shardMetrics{lag: m.lag.With(l), backlog: m.backlog.With(l), active: m.active.With(l),
		published: m.published.With(l), records: m.records.With(l), errors: m.errors.With(l)}
}
