package controllers

import (
	"context"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// deletionRecheck is how soon a shard whose deletion waits looks again.
const deletionRecheck = 5 * time.Second

// reconcileProtection puts the protection finalizer on the shard and gives its
// credentials the owners the deletion policy asks for (volumes get theirs when applied):
// the shard under Delete, nobody under Retain.
func (r *ShardReconciler) reconcileProtection(ctx context.Context, shard *v1alpha1.LedgerShard, _ *shardState) error {
	if shard.DeletionTimestamp.IsZero() && !controllerutil.ContainsFinalizer(shard, specs.FinalizerShardProtection) {
		orig := shard.DeepCopy()
		controllerutil.AddFinalizer(shard, specs.FinalizerShardProtection)
		if err := r.Patch(ctx, shard, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return err
		}
	}
	for _, name := range []string{specs.SecretSuperuser(shard.Name), specs.SecretApp(shard.Name), specs.SecretReplication(shard.Name), specs.SecretMonitor(shard.Name), specs.SecretRelay(shard.Name), specs.SecretCDC(shard.Name), specs.SecretStatusToken(shard.Name)} {
		var s corev1.Secret
		if err := r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: name}, &s); apierrors.IsNotFound(err) {
			continue
		} else if err != nil {
			return err
		}
		want := slices.DeleteFunc(slices.Clone(s.OwnerReferences), func(o metav1.OwnerReference) bool { return o.UID == shard.UID })
		want = append(want, specs.DataOwners(shard)...)
		if equality.Semantic.DeepEqual(want, s.OwnerReferences) || (len(want) == 0 && len(s.OwnerReferences) == 0) {
			continue
		}
		orig := s.DeepCopy()
		s.OwnerReferences = want
		if err := r.Patch(ctx, &s, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return err
		}
	}
	return nil
}

// reconcileDeletion decides what a deleted shard's finalizer does (decideShardDeletion).
// It reports whether the shard was released; one that waits keeps being reconciled, and
// st.deletion says why it waits.
func (r *ShardReconciler) reconcileDeletion(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) (released bool, err error) {
	if !controllerutil.ContainsFinalizer(shard, specs.FinalizerShardProtection) {
		return true, nil
	}
	facts := shardDeletionFacts{Shard: shard.Name, Index: shard.Spec.Index, Policy: shard.Spec.DeletionPolicy, Cluster: shard.Spec.Cluster, Accounts: shard.Status.Accounts}
	var cluster v1alpha1.LedgerCluster
	err = r.Get(ctx, types.NamespacedName{Namespace: shard.Namespace, Name: shard.Spec.Cluster}, &cluster)
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, err
	default:
		facts.ClusterLive = cluster.DeletionTimestamp.IsZero()
		facts.Listed = shard.Spec.Index < cluster.Spec.Shards
		facts.RecordedLost = slices.Contains(cluster.Status.LostShards, shard.Spec.Index)
	}
	d := decideShardDeletion(facts)
	if !d.Release {
		if st.deletion != d.Wait {
			r.Recorder.Eventf(shard, nil, corev1.EventTypeWarning, v1alpha1.ReasonDeletionBlocked, "Delete", "%s", d.Wait)
		}
		st.deletion, st.requeue = d.Wait, deletionRecheck
		return false, nil
	}
	orig := shard.DeepCopy()
	controllerutil.RemoveFinalizer(shard, specs.FinalizerShardProtection)
	if err := r.Patch(ctx, shard, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return false, client.IgnoreNotFound(err)
	}
	r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "ShardReleased", "Delete", "shard %s deleted; deletionPolicy %s",
		shard.Name, shard.Spec.DeletionPolicy.Resolved())
	return true, nil
}
