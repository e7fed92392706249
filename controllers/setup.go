package controllers

import (
	"github.com/prometheus/client_golang/prometheus"
	ctrl "sigs.k8s.io/controller-runtime"
)

// Setup registers both reconcilers with the manager, and the operator's metrics with reg.
func Setup(mgr ctrl.Manager, image string, accounts AccountCounter, reg prometheus.Registerer) error {
	metrics := NewMetrics(reg)
	if err := (&ClusterReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Image: image, Accounts: accounts, Metrics: metrics,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&ShardReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Accounts: &accounts, Metrics: metrics,
	}).SetupWithManager(mgr)
}
