package controllers

import (
	"cmp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Options configure the reconcilers.
type Options struct {
	// Image is the operator's own image, the default for the ledger and migrations.
	Image    string
	Accounts AccountCounter
	// Registry receives the operator's metrics.
	Registry prometheus.Registerer
	// Instances reaches the instance managers (StatusAPIDialer in a cluster); nil leaves
	// failover alone.
	Instances     InstanceDialer
	FailoverDelay time.Duration
	// MaxConcurrentReconciles bounds the shards reconciled at once
	// (DefaultMaxConcurrentReconciles when zero).
	MaxConcurrentReconciles int
}

// DefaultMaxConcurrentReconciles is how many shards are reconciled at once by default.
const DefaultMaxConcurrentReconciles = 8

// Setup registers both reconcilers with the manager.
func Setup(mgr ctrl.Manager, o Options) error {
	metrics := NewMetrics(o.Registry)
	if err := (&ClusterReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Image: o.Image, Accounts: o.Accounts, Metrics: metrics,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	accounts := o.Accounts
	return (&ShardReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Accounts: &accounts, Metrics: metrics,
		Instances: o.Instances, FailoverDelay: o.FailoverDelay,
		MaxConcurrentReconciles: cmp.Or(o.MaxConcurrentReconciles, DefaultMaxConcurrentReconciles),
	}).SetupWithManager(mgr)
}
