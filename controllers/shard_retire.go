package controllers

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/instance"
)

// retirePoll is how often a shard with instances waiting to retire is looked at again.
const retirePoll = 2 * time.Second

// retireMark is decideRetire's mark, valid for the primary it was taken on.
type retireMark struct {
	primary string
	seen    bool
	lsn     instance.LSN
}

// reconcileRetire removes the instances beyond a shrunken spec.instances, pod and
// volume, once decideRetire says none of them can hold an acknowledged commit that the
// instances staying lack; a leaving primary is switched over first. It never acts while
// a failover is in progress or blocked.
func (r *ShardReconciler) reconcileRetire(ctx context.Context, shard *v1alpha1.LedgerShard, st *shardState) error {
	if st.fs == nil || st.ha != "" {
		return nil
	}
	leaving, err := r.leavingInstances(ctx, shard)
	if err != nil {
		return err
	}
	if len(leaving) == 0 {
		r.retireAt.Delete(shard.UID)
		return nil
	}
	in := retireInput{Rule: st.fs.Rule, Leaving: leaving, Primary: st.primary}
	for _, o := range st.observed {
		if o.Name == st.primary {
			in.PrimaryStatus = o.Status
		}
	}
	for _, i := range st.instances {
		if i.Name != st.primary {
			in.Replicas = append(in.Replicas, rolloutInstance{Name: i.Name, Healthy: instanceHealthy(i, false)})
		}
	}
	if m, ok := r.retireAt.Load(shard.UID); ok && m.(retireMark).primary == st.primary {
		in.Seen, in.Mark = m.(retireMark).seen, m.(retireMark).lsn
	}
	d := decideRetire(in)
	r.retireAt.Store(shard.UID, retireMark{primary: st.primary, seen: d.Seen, lsn: d.Mark})
	switch d.Step {
	case retireWait:
		st.retire = d.Reason
		if st.requeue == 0 || st.requeue > retirePoll {
			st.requeue = retirePoll
		}
	case retireSwitchover:
		r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "RetireSwitchover", "Retire",
			"switching over to %s: primary %s is beyond spec.instances", d.Target, st.primary)
		r.plannedSwitchover(st, shard.UID, d.Target, "retire")
	case retireDelete:
		for _, name := range leaving {
			if err := r.deleteInstance(ctx, shard.Namespace, name); err != nil {
				return err
			}
			r.Recorder.Eventf(shard, nil, corev1.EventTypeNormal, "InstanceRetired", "Retire",
				"deleted instance %s and its volume: it is beyond spec.instances and holds nothing the others lack", name)
		}
		r.retireAt.Delete(shard.UID)
	}
	return nil
}

// leavingInstances lists the instances beyond spec.instances that still have a pod or a
// volume, sorted.
func (r *ShardReconciler) leavingInstances(ctx context.Context, shard *v1alpha1.LedgerShard) ([]string, error) {
	pg := specs.ResolvePostgres(shard.Spec.Postgres)
	sel := []client.ListOption{client.InNamespace(shard.Namespace),
		client.MatchingLabels{specs.LabelShard: shard.Name, specs.LabelComponent: specs.ComponentPostgres}}
	var pods corev1.PodList
	if err := r.List(ctx, &pods, sel...); err != nil {
		return nil, err
	}
	var pvcs corev1.PersistentVolumeClaimList
	if err := r.List(ctx, &pvcs, sel...); err != nil {
		return nil, err
	}
	// Objects already being deleted are on their way out.
	names := make([]string, 0, len(pods.Items)+len(pvcs.Items))
	for _, p := range pods.Items {
		if p.DeletionTimestamp.IsZero() {
			names = append(names, p.Name)
		}
	}
	for _, p := range pvcs.Items {
		if p.DeletionTimestamp.IsZero() {
			names = append(names, p.Name)
		}
	}
	var leaving []string
	for _, name := range names {
		if !specs.InSpec(shard.Name, name, pg.Instances) && !slices.Contains(leaving, name) {
			leaving = append(leaving, name)
		}
	}
	slices.Sort(leaving)
	return leaving, nil
}

// deleteInstance deletes an instance's pod and its volume.
func (r *ShardReconciler) deleteInstance(ctx context.Context, ns, name string) error {
	pod := &corev1.Pod{}
	pod.Name, pod.Namespace = name, ns
	if err := r.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("retire: delete pod %s: %w", name, err)
	}
	pvc := &corev1.PersistentVolumeClaim{}
	pvc.Name, pvc.Namespace = name, ns
	if err := r.Delete(ctx, pvc); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("retire: delete volume %s: %w", name, err)
	}
	return nil
}
