package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the operator's own series, beside controller-runtime's.
type Metrics struct {
	shards           *prometheus.GaugeVec
	readyShards      *prometheus.GaugeVec
	scaleDownBlocked *prometheus.GaugeVec
	migrations       *prometheus.CounterVec
	failovers        *prometheus.CounterVec
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	labels := []string{"namespace", "cluster"}
	m := &Metrics{
		shards: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_operator_cluster_shards", Help: "LedgerShards that exist, by cluster.",
		}, labels),
		readyShards: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_operator_cluster_ready_shards", Help: "LedgerShards that are Ready, by cluster.",
		}, labels),
		scaleDownBlocked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tally_operator_scale_down_blocked", Help: "1 while a cluster's scale-down is refused because shards hold accounts.",
		}, labels),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_operator_migrations_total", Help: "Schema migration Jobs by outcome (started, succeeded, failed).",
		}, []string{"namespace", "shard", "outcome"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_operator_failovers_total", Help: "Failovers by outcome (started, succeeded, refused).",
		}, []string{"namespace", "shard", "outcome"}),
	}
	reg.MustRegister(m.shards, m.readyShards, m.scaleDownBlocked, m.migrations, m.failovers)
	return m
}

func (m *Metrics) observeCluster(ns, name string, shards, ready int32, blocked bool) {
	if m == nil {
		return
	}
	m.shards.WithLabelValues(ns, name).Set(float64(shards))
	m.readyShards.WithLabelValues(ns, name).Set(float64(ready))
	b := 0.0
	if blocked {
		b = 1
	}
	m.scaleDownBlocked.WithLabelValues(ns, name).Set(b)
}

func (m *Metrics) observeMigration(ns, shard, outcome string) {
	if m == nil {
		return
	}
	m.migrations.WithLabelValues(ns, shard, outcome).Inc()
}

func (m *Metrics) observeFailover(ns, shard, outcome string) {
	if m == nil {
		return
	}
	m.failovers.WithLabelValues(ns, shard, outcome).Inc()
}
