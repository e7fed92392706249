package server

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/store"
)

// poolCollector exports each shard's connection pool statistics at scrape time.
type poolCollector struct {
	stores                              []*store.Store
	acquired, idle, total, max          *prometheus.Desc
	acquires, emptyAcquires, acquireSec *prometheus.Desc
}

func newPoolCollector(stores []*store.Store) *poolCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("tally_db_pool_"+name, help, []string{"shard"}, nil)
	}
	return &poolCollector{
		stores:        stores,
		acquired:      d("acquired_conns", "Connections in use."),
		idle:          d("idle_conns", "Idle connections."),
		total:         d("total_conns", "Open connections."),
		max:           d("max_conns", "Largest allowed number of connections."),
		acquires:      d("acquires_total", "Connections acquired from the pool."),
		emptyAcquires: d("empty_acquires_total", "Acquires that had to wait because no connection was idle."),
		acquireSec:    d("acquire_wait_seconds_total", "Time spent waiting for a connection."),
	}
}

// Describe sends the pool metrics' descriptions.
func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.acquired, c.idle, c.total, c.max, c.acquires, c.emptyAcquires, c.acquireSec} {
		ch <- d
	}
}

// Collect reads each shard's pool statistics now.
func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	for i, st := range c.stores {
		s := st.Pool().Stat()
		shard := strconv.Itoa(i)
		ch <- prometheus.MustNewConstMetric(c.acquired, prometheus.GaugeValue, float64(s.AcquiredConns()), shard)
		ch <- prometheus.MustNewConstMetric(c.idle, prometheus.GaugeValue, float64(s.IdleConns()), shard)
		ch <- prometheus.MustNewConstMetric(c.total, prometheus.GaugeValue, float64(s.TotalConns()), shard)
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(s.MaxConns()), shard)
		ch <- prometheus.MustNewConstMetric(c.acquires, prometheus.CounterValue, float64(s.AcquireCount()), shard)
		ch <- prometheus.MustNewConstMetric(c.emptyAcquires, prometheus.CounterValue, float64(s.EmptyAcquireCount()), shard)
		ch <- prometheus.MustNewConstMetric(c.acquireSec, prometheus.CounterValue, s.AcquireDuration().Seconds(), shard)
	}
}

// batchCollector exports each shard's batching totals at scrape time: their ratio is
// the mean batch size, the first thing to look at when throughput is not what it was.
type batchCollector struct {
	batchers                               []*batcher.Batcher
	batches, requests, busy, queued, reads *prometheus.Desc
	isolations                             *prometheus.Desc
}

func newBatchCollector(batchers []*batcher.Batcher) *batchCollector {
	d := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("tally_batch_"+name, help, []string{"shard"}, nil)
	}
	return &batchCollector{
		batchers: batchers,
		batches:  d("batches_total", "Batches posted to the shard, each one database transaction."),
		requests: d("requests_total", "Transaction requests in those batches."),
		busy:     d("busy_seconds_total", "Time the shard's writers spent posting batches."),
		queued:   d("queued_requests", "Transaction requests waiting for one of the shard's writers."),
		reads:    d("queued_reads", "Balance reads waiting for one of the shard's readers."),
		isolations: d("isolations_total",
			"Batches PostgreSQL refused because of one request, split to answer it alone; any is a validation gap."),
	}
}

// Describe sends the batcher metrics' descriptions.
func (c *batchCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.batches, c.requests, c.busy, c.queued, c.reads, c.isolations} {
		ch <- d
	}
}

// Collect reads each shard's batcher totals now.
func (c *batchCollector) Collect(ch chan<- prometheus.Metric) {
	for i, b := range c.batchers {
		s := b.Stats()
		shard := strconv.Itoa(i)
		ch <- prometheus.MustNewConstMetric(c.batches, prometheus.CounterValue, float64(s.Batches), shard)
		ch <- prometheus.MustNewConstMetric(c.requests, prometheus.CounterValue, float64(s.Requests), shard)
		ch <- prometheus.MustNewConstMetric(c.busy, prometheus.CounterValue, s.Busy.Seconds(), shard)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.QueuedRequests), shard)
		ch <- prometheus.MustNewConstMetric(c.reads, prometheus.GaugeValue, float64(s.QueuedReads), shard)
		ch <- prometheus.MustNewConstMetric(c.isolations, prometheus.CounterValue, float64(s.Isolations), shard)
	}
}
