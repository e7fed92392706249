package controllers

import (
	"cmp"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/labels"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/controllers/specs"
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
	// LostNodeGrace: see ShardReconciler.LostNodeGrace.
	LostNodeGrace time.Duration
	// OperatorNamespace: see ShardReconciler.OperatorNamespace.
	OperatorNamespace string
}

// DefaultMaxConcurrentReconciles is how many shards are reconciled at once by default.
const DefaultMaxConcurrentReconciles = 8

// CacheOptions limits the manager's cache to the objects the operator made, by their
// managed-by label: without it the operator would watch and hold in memory every Pod,
// Secret and volume of the whole cluster, under a small memory limit, and could read
// Secrets that are none of its business.
func CacheOptions() cache.Options {
	managed := labels.SelectorFromSet(labels.Set{specs.LabelManagedBy: specs.ManagedBy})
	by := cache.ByObject{Label: managed}
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}: by, &corev1.Secret{}: by, &corev1.PersistentVolumeClaim{}: by, &corev1.Service{}: by,
		&corev1.ConfigMap{}: by, &corev1.ServiceAccount{}: by, &appsv1.Deployment{}: by, &batchv1.Job{}: by, &batchv1.CronJob{}: by,
		&policyv1.PodDisruptionBudget{}: by, &rbacv1.Role{}: by, &rbacv1.RoleBinding{}: by, &networkingv1.NetworkPolicy{}: by,
	}}
}

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
		LostNodeGrace:           o.LostNodeGrace,
		OperatorNamespace:       o.OperatorNamespace,
	}).SetupWithManager(mgr)
}
