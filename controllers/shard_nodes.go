package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
)

// DefaultLostNodeGrace is how long past its deadline a pod on a lost node may stay
// Terminating before the operator deletes it for good.
const DefaultLostNodeGrace = 30 * time.Second

// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch

// reconcileNodes looks at the nodes the shard's instances run on: a pod stuck
// Terminating on a lost node is deleted for good so that it is re-created elsewhere
// (podStuckOnLostNode), and it notes whether the primary's node is cordoned, for the
// drain step.
func (r *ShardReconciler) reconcileNodes(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	var pods corev1.PodList
	if err := r.List(ctx, &pods, client.InNamespace(shard.Namespace),
		client.MatchingLabels{specs.LabelShard: shard.Name, specs.LabelComponent: specs.ComponentPostgres}); err != nil {
		return err
	}
	grace := r.LostNodeGrace
	if grace <= 0 {
		grace = DefaultLostNodeGrace
	}
	st.nodeSchedulable = map[string]bool{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.Spec.NodeName == "" {
			continue
		}
		var node *corev1.Node
		var n corev1.Node
		err := r.Get(ctx, types.NamespacedName{Name: pod.Spec.NodeName}, &n)
		switch {
		case err == nil:
			node = &n
		case !apierrors.IsNotFound(err):
			return err
		}
		st.nodeSchedulable[pod.Name] = node != nil && !node.Spec.Unschedulable && nodeReady(node) && pod.DeletionTimestamp.IsZero()
		if pod.Name == st.primary && node != nil && node.Spec.Unschedulable {
			st.primaryCordoned = true
		}
		if !podStuckOnLostNode(pod, node, []string{st.primary, st.target}, time.Now(), grace) {
			continue
		}
		zero := int64(0)
		if err := r.Delete(ctx, pod, &client.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s on lost node %s: %w", pod.Name, pod.Spec.NodeName, err)
		}
		r.Recorder.Eventf(shard, nil, corev1.EventTypeWarning, "PodOnLostNodeDeleted", "Delete",
			"deleted pod %s for good: it was terminating on node %s, which is not ready; it is created again elsewhere", pod.Name, pod.Spec.NodeName)
	}
	return nil
}

// reconcileDrain switches over away from a primary whose node is cordoned, before a
// drain's eviction would wait on the primary's disruption budget forever
// (decideDrainSwitchover). It acts only while the shard is otherwise at rest.
func (r *ShardReconciler) reconcileDrain(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if st.fs == nil || st.ha != "" || !st.primaryCordoned || st.primary != st.target {
		return nil
	}
	var candidates []drainCandidate
	pg := specs.ResolvePostgres(shard.Spec.Postgres)
	for _, in := range st.instances {
		if in.Name == st.primary || !specs.InSpec(shard.Name, in.Name, pg.Instances) {
			continue
		}
		candidates = append(candidates, drainCandidate{Name: in.Name, Healthy: instanceHealthy(in, false), Schedulable: st.nodeSchedulable[in.Name]})
	}
	target := decideDrainSwitchover(st.primaryCordoned, candidates)
	if target == "" {
		st.ha, st.haMsg = v1alpha1.ReasonFailoverBlocked, fmt.Sprintf("the node of primary %s is cordoned, and no healthy replica on a schedulable node can take over", st.primary)
		st.requeue = failoverRetry
		return nil
	}
	r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "DrainSwitchover", "Switchover",
		"switching over to %s: the node of primary %s is cordoned (a drain would wait on the primary's disruption budget)", target, st.primary)
	r.plannedSwitchover(st, shard.UID, target, "drain")
	return nil
}
