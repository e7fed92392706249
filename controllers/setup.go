package controllers

import (
	ctrl "sigs.k8s.io/controller-runtime"
)

// Setup registers both reconcilers with the manager.
func Setup(mgr ctrl.Manager, image string, accounts AccountCounter) error {
	if err := (&ClusterReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Image: image, Accounts: accounts,
	}).SetupWithManager(mgr); err != nil {
		return err
	}
	return (&ShardReconciler{
		Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("tally-operator"), Accounts: &accounts,
	}).SetupWithManager(mgr)
}
