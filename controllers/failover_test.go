package controllers_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/instance"
)

// haShard creates a one-shard cluster, brings it up, and waits until the operator has
// dialled all three simulated instance managers.
func haShard(t *testing.T, cluster string) (ns, shard string) {
	t.Helper()
	ns = newNamespace(t)
	createCluster(t, ns, cluster, 1)
	shard = specs.ShardName(cluster, 0)
	bringUpShard(t, ns, shard)
	eventually(t, "instances observed", func() error {
		for n := int32(1); n <= 3; n++ {
			if fakes.get(ns, specs.InstanceName(shard, n)) == nil {
				return fmt.Errorf("instance %d not dialled", n)
			}
		}
		return nil
	})
	return ns, shard
}

func shardStatus(t *testing.T, ns, shard string) v1alpha1.LedgerShardStatus {
	t.Helper()
	var s v1alpha1.LedgerShard
	if err := get(ns, shard, &s); err != nil {
		t.Fatal(err)
	}
	return s.Status
}

func roleLabel(t *testing.T, ns, pod string) string {
	t.Helper()
	var p corev1.Pod
	if err := get(ns, pod, &p); err != nil {
		t.Fatal(err)
	}
	return p.Labels[specs.LabelRole]
}

func waitPrimary(t *testing.T, ns, shard, want string) {
	t.Helper()
	eventually(t, "primary "+want, func() error {
		st := shardStatus(t, ns, shard)
		if st.CurrentPrimary != want || st.TargetPrimary != want {
			return fmt.Errorf("current %q target %q", st.CurrentPrimary, st.TargetPrimary)
		}
		for n := int32(1); n <= 3; n++ {
			pod := specs.InstanceName(shard, n)
			want := string(v1alpha1.RoleReplica)
			if pod == st.CurrentPrimary {
				want = string(v1alpha1.RolePrimary)
			}
			if got := roleLabel(t, ns, pod); got != want {
				return fmt.Errorf("%s labelled %q, want %q", pod, got, want)
			}
		}
		return nil
	})
}

// The primary's manager stops answering: after the failover delay the operator promotes
// the most advanced replica, moves the role labels and status, repoints the other
// replica, and rejoins the old primary when it returns.
func TestOperatorFailsOverLostPrimary(t *testing.T) {
	ns, shard := haShard(t, "ha")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	fakes.update(ns, p2, func(f *fakeInstance) { f.st.WAL = 5000 })
	fakes.update(ns, p3, func(f *fakeInstance) { f.st.WAL = 6000 }) // ahead
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })

	waitPrimary(t, ns, shard, p3)
	expectEvent(t, ns, "PromotionChosen")
	expectEvent(t, ns, "Promoted")
	if f := fakes.get(ns, p2); f.st.Upstream != p3 {
		t.Errorf("%s follows %q, want %s", p2, f.st.Upstream, p3)
	}
	if f := fakes.get(ns, p2); f.promotions != 0 {
		t.Errorf("the lagging replica was promoted")
	}
	st := shardStatus(t, ns, shard)
	for _, in := range st.Instances {
		if in.Name == p1 && in.Reachable {
			t.Errorf("lost primary reported reachable: %+v", in)
		}
	}

	// The old primary comes back still believing it is primary: it is told to follow.
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = false })
	eventually(t, "old primary rejoins", func() error {
		f := fakes.get(ns, p1)
		st, _ := f.Status(ctx)
		if st.Role != instance.RoleReplica || st.Upstream != p3 || st.WALReceiver != "streaming" {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	expectEvent(t, ns, "Following")
}

// A hung primary keeps its connections open, so its standbys' WAL receivers go on
// "streaming" until their timeout. With synchronous standbys required that is no reason
// to wait: the failover detaches every standby before it promotes, and a primary without
// standbys cannot acknowledge a commit.
func TestHungPrimaryFailsOverWhileReceiversStream(t *testing.T) {
	ns, shard := haShard(t, "hung")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	fakes.update(ns, p3, func(f *fakeInstance) { f.st.WAL = 6000 })
	for _, p := range []string{p2, p3} {
		fakes.update(ns, p, func(f *fakeInstance) { f.stuck = true })
	}
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })
	waitPrimary(t, ns, shard, p3)
	expectEvent(t, ns, "Detached")
	if f := fakes.get(ns, p2); f.st.Upstream != p3 {
		t.Errorf("%s follows %q, want %s", p2, f.st.Upstream, p3)
	}
}

// Once a pass has found the primary lost, no later pass tries to count its accounts: the
// count would wait out its timeout on every pass and hold the failover back.
func TestLostPrimaryIsNotCounted(t *testing.T) {
	ns, shard := haShard(t, "uncounted")
	p1, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	var mu sync.Mutex
	var counted []string
	countSeen.Store(ns+"/"+shard, func(s *v1alpha1.LedgerShard) {
		if s.Status.CurrentPrimary != p1 {
			return
		}
		for _, in := range s.Status.Instances {
			if in.Name == p1 && !in.Reachable {
				mu.Lock()
				counted = append(counted, s.ResourceVersion)
				mu.Unlock()
			}
		}
	})
	t.Cleanup(func() { countSeen.Delete(ns + "/" + shard) })
	fakes.update(ns, p3, func(f *fakeInstance) { f.st.WAL = 6000 })
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })
	waitPrimary(t, ns, shard, p3)
	mu.Lock()
	defer mu.Unlock()
	if len(counted) > 0 {
		t.Errorf("accounts counted on the lost primary %s in %d passes after it was seen lost", p1, len(counted))
	}
}

// With one of two synchronous standbys missing nobody can prove it has every
// acknowledged commit: no failover, the old primary keeps its role, and the shard says
// why.
func TestOperatorRefusesFailoverWithoutQuorum(t *testing.T) {
	ns, shard := haShard(t, "noquorum")
	p1, p2 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2)
	waitPrimary(t, ns, shard, p1)
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })
	fakes.update(ns, p2, func(f *fakeInstance) { f.down = true })
	eventually(t, "Degraded FailoverBlocked", func() error {
		st := shardStatus(t, ns, shard)
		c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionDegraded)
		if c == nil || c.Status != metav1.ConditionTrue || c.Reason != v1alpha1.ReasonFailoverBlocked {
			return fmt.Errorf("conditions %+v", st.Conditions)
		}
		return nil
	})
	expectEvent(t, ns, "FailoverRefused")
	var evs eventsv1.EventList
	if err := k8s.List(ctx, &evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	for _, e := range evs.Items {
		if e.Reason == "FailoverRefused" && e.Type != corev1.EventTypeWarning {
			t.Errorf("FailoverRefused recorded as %s, want Warning", e.Type)
		}
	}
	// The time the primary was first found unhealthy is kept in status, where a
	// restarted operator finds it, and is not restarted by later reconciles.
	since := shardStatus(t, ns, shard).PrimaryUnhealthySince
	if since == nil {
		t.Fatal("status.primaryUnhealthySince not set while the primary is lost")
	}
	time.Sleep(2 * testFailoverDelay)
	st := shardStatus(t, ns, shard)
	if st.CurrentPrimary != p1 || st.TargetPrimary != p1 || roleLabel(t, ns, p1) != string(v1alpha1.RolePrimary) {
		t.Fatalf("primary role moved or was withdrawn without a quorum: %+v", st)
	}
	if st.PrimaryUnhealthySince == nil || !st.PrimaryUnhealthySince.Equal(since) {
		t.Errorf("primaryUnhealthySince moved from %v to %v", since, st.PrimaryUnhealthySince)
	}
	for n := int32(2); n <= 3; n++ {
		if f := fakes.get(ns, specs.InstanceName(shard, n)); f.promotions != 0 {
			t.Fatalf("%s was promoted", f.name)
		}
	}
	// The standby returns: now the failover can go ahead.
	fakes.update(ns, p2, func(f *fakeInstance) { f.down = false })
	eventually(t, "failover after the quorum returns", func() error {
		if st := shardStatus(t, ns, shard); st.CurrentPrimary == p1 || st.PrimaryUnhealthySince != nil {
			return fmt.Errorf("primary %s, unhealthy since %v", st.CurrentPrimary, st.PrimaryUnhealthySince)
		}
		return nil
	})
}

// setSpecPrimary asks for a switchover to name, as kubectl patch would.
func setSpecPrimary(t *testing.T, ns, shard, name string) {
	t.Helper()
	update(t, ns, shard, &v1alpha1.LedgerShard{}, func(s *v1alpha1.LedgerShard) { s.Spec.Primary = name })
}

// Setting spec.primary switches over: the old primary is fenced first, then the target
// is promoted, and the old primary follows it.
func TestOperatorSwitchesOverOnSpec(t *testing.T) {
	ns, shard := haShard(t, "switch")
	p1, p2 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2)
	waitPrimary(t, ns, shard, p1)
	setSpecPrimary(t, ns, shard, p2)
	waitPrimary(t, ns, shard, p2)
	expectEvent(t, ns, "SwitchoverStarted")
	expectEvent(t, ns, "Fenced")
	eventually(t, "old primary follows", func() error {
		st, _ := fakes.get(ns, p1).Status(ctx)
		if st.Role != instance.RoleReplica || st.Upstream != p2 || st.Fenced {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	// The cluster controller's apply does not undo the user's spec.primary.
	time.Sleep(time.Second)
	var s v1alpha1.LedgerShard
	if err := get(ns, shard, &s); err != nil || s.Spec.Primary != p2 {
		t.Fatalf("spec.primary %q %v", s.Spec.Primary, err)
	}
}

// A new PostgreSQL image rolls out replicas first, one at a time, then switches over to
// an updated replica, then replaces the old primary; the primary role never lands on an
// outdated pod after the switchover.
func TestRollingUpdateReplicasFirstThenSwitchover(t *testing.T) {
	ns, shard := haShard(t, "roll")
	p1 := specs.InstanceName(shard, 1)
	waitPrimary(t, ns, shard, p1)
	for n := int32(2); n <= 3; n++ {
		markPodReady(t, ns, specs.InstanceName(shard, n))
	}
	update(t, ns, "roll", &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Image = "postgres:17.9" })
	// Play the kubelet: every recreated pod starts and becomes ready.
	var order []string
	eventually(t, "every pod on the new image", func() error {
		var pods corev1.PodList
		if err := k8s.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels{specs.LabelShard: shard}); err != nil {
			return err
		}
		outdated := 0
		for _, p := range pods.Items {
			if p.Spec.Containers[0].Image != "postgres:17.9" {
				outdated++
				continue
			}
			if !podIsReady(&p) {
				if !slices.Contains(order, p.Name) {
					order = append(order, p.Name)
				}
				markPodReady(t, ns, p.Name)
			}
		}
		if outdated > 0 || len(pods.Items) != 3 {
			return fmt.Errorf("%d of %d pods outdated", outdated, len(pods.Items))
		}
		return nil
	})
	if len(order) != 3 || order[2] != p1 {
		t.Fatalf("replaced in order %v, want the two replicas first and %s last", order, p1)
	}
	expectEvent(t, ns, "RolloutSwitchover")
	st := shardStatus(t, ns, shard)
	if st.CurrentPrimary == p1 {
		t.Fatalf("primary still %s", p1)
	}
	waitPrimary(t, ns, shard, st.CurrentPrimary)
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// After spec.instances shrinks, the primary still lists the instance that is no longer
// in the spec as a synchronous standby (its manager read the shape when it started), so
// that instance may hold the only copy of a commit: a failover must still count it.
func TestFailoverCountsInstancesBeyondTheSpec(t *testing.T) {
	ns, shard := haShard(t, "shrunk")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	shrinkInstances(t, ns, "shrunk", shard, 2)
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })
	fakes.update(ns, p3, func(f *fakeInstance) { f.down = true })
	expectEvent(t, ns, "FailoverRefused")
	time.Sleep(2 * testFailoverDelay)
	if st := shardStatus(t, ns, shard); st.CurrentPrimary != p1 {
		t.Fatalf("promoted %s while %s, a synchronous standby of the old primary, did not answer", st.CurrentPrimary, p3)
	}
	if f := fakes.get(ns, p2); f.promotions != 0 {
		t.Fatal("promoted p2")
	}
}

// shrinkInstances sets the cluster's spec.postgres.instances and waits for the shard to
// carry it.
func shrinkInstances(t *testing.T, ns, cluster, shard string, n int32) {
	t.Helper()
	update(t, ns, cluster, &v1alpha1.LedgerCluster{}, func(c *v1alpha1.LedgerCluster) { c.Spec.Postgres.Instances = int32p(n) })
	eventually(t, "shard spec shrunk", func() error {
		var s v1alpha1.LedgerShard
		if err := get(ns, shard, &s); err != nil {
			return err
		}
		if s.Spec.Postgres.Instances == nil || *s.Spec.Postgres.Instances != n {
			return fmt.Errorf("instances %v", s.Spec.Postgres.Instances)
		}
		return nil
	})
}

// waitShardProgressing waits for the shard's Progressing condition.
func waitShardProgressing(t *testing.T, ns, shard string, status metav1.ConditionStatus, reason string) {
	t.Helper()
	eventually(t, "shard Progressing "+reason, func() error {
		c := meta.FindStatusCondition(shardStatus(t, ns, shard).Conditions, v1alpha1.ConditionProgressing)
		if c == nil || c.Status != status || c.Reason != reason {
			return fmt.Errorf("Progressing %+v", c)
		}
		return nil
	})
}

// instanceLeft reports nil once an instance's pod and volume are gone or being deleted.
func instanceLeft(ns, name string) error {
	for _, obj := range []client.Object{&corev1.Pod{}, &corev1.PersistentVolumeClaim{}} {
		err := get(ns, name, obj)
		if err == nil && obj.GetDeletionTimestamp().IsZero() {
			return fmt.Errorf("%T %s still there", obj, name)
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// After spec.instances shrinks, the instance beyond it stays while the primary still
// waits for it as a synchronous standby, and while no staying standby has flushed what
// the primary had written when it stopped waiting; then its pod and volume go.
func TestShrinkRetiresInstanceOnceNothingDependsOnIt(t *testing.T) {
	ns, shard := haShard(t, "retire")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	// The primary waits for p2 or p3, and p2 has everything so far.
	fakes.update(ns, p1, func(f *fakeInstance) {
		f.st.SyncStandbyNames, f.st.WAL = fmt.Sprintf(`ANY 1 (%q, %q)`, p2, p3), 2000
		f.st.Standbys = []instance.Standby{{Name: p2, FlushLSN: 2000}, {Name: p3, FlushLSN: 2000}}
	})
	shrinkInstances(t, ns, "retire", shard, 2)
	waitShardProgressing(t, ns, shard, metav1.ConditionTrue, v1alpha1.ReasonRetiringInstances)
	time.Sleep(5 * time.Second) // a few retire polls
	if err := instanceLeft(ns, p3); err == nil {
		t.Fatalf("%s retired while the primary still waits for it", p3)
	}
	// The primary stops waiting for p3 at 3000, but p2 has not flushed that far: p3
	// may hold commits no staying standby has.
	fakes.update(ns, p1, func(f *fakeInstance) {
		f.st.SyncStandbyNames, f.st.WAL = fmt.Sprintf(`ANY 1 (%q)`, p2), 3000
		f.st.Standbys = []instance.Standby{{Name: p2, FlushLSN: 2500}, {Name: p3, FlushLSN: 3000}}
	})
	time.Sleep(5 * time.Second)
	if err := instanceLeft(ns, p3); err == nil {
		t.Fatalf("%s retired before %s flushed past the primary's WAL", p3, p2)
	}
	fakes.update(ns, p1, func(f *fakeInstance) { f.st.Standbys[0].FlushLSN = 3000 })
	eventually(t, p3+" retired", func() error { return instanceLeft(ns, p3) })
	expectEvent(t, ns, "InstanceRetired")
	for _, name := range []string{p1, p2} {
		var pod corev1.Pod
		if err := get(ns, name, &pod); err != nil || !pod.DeletionTimestamp.IsZero() {
			t.Fatalf("%s: %v, deleting %v", name, err, pod.DeletionTimestamp)
		}
	}
	eventually(t, "shard no longer retiring", func() error {
		if c := meta.FindStatusCondition(shardStatus(t, ns, shard).Conditions, v1alpha1.ConditionProgressing); c == nil || c.Reason == v1alpha1.ReasonRetiringInstances {
			return fmt.Errorf("Progressing %+v", c)
		}
		return nil
	})
}

// A primary beyond the shrunken spec hands its role to a replica of the spec first.
func TestShrinkSwitchesOverLeavingPrimary(t *testing.T) {
	ns, shard := haShard(t, "retirepri")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	setSpecPrimary(t, ns, shard, p3)
	waitPrimary(t, ns, shard, p3)
	shrinkInstances(t, ns, "retirepri", shard, 2)
	expectEvent(t, ns, "RetireSwitchover")
	eventually(t, "primary moved into the spec", func() error {
		if st := shardStatus(t, ns, shard); st.CurrentPrimary != p1 {
			return fmt.Errorf("primary %s", st.CurrentPrimary)
		}
		return nil
	})
	// The leaving instance gives up the label the -rw Service selects at once, though it
	// is beyond spec.instances and not yet deleted.
	if role := roleLabel(t, ns, p3); role != string(v1alpha1.RoleReplica) {
		t.Errorf("the retiring former primary %s is labelled %q", p3, role)
	}
	fakes.update(ns, p1, func(f *fakeInstance) {
		f.st.SyncStandbyNames = fmt.Sprintf(`ANY 1 (%q)`, p2)
		f.st.Standbys = []instance.Standby{{Name: p2, FlushLSN: f.st.WAL}}
	})
	eventually(t, p3+" retired", func() error { return instanceLeft(ns, p3) })
	if st := shardStatus(t, ns, shard); st.CurrentPrimary != p1 {
		t.Fatalf("primary %s after retiring %s; spec.primary still names it", st.CurrentPrimary, p3)
	}
}

// While a failover has withdrawn the primary role (status.targetPrimary empty) and cannot
// finish (here every promotion fails), no pod carries the primary label: the reconcile
// that re-applies pods must not hand it back to the lost primary, whose -rw Service
// would then take writes again.
func TestWithdrawnRoleStaysWithdrawn(t *testing.T) {
	ns, shard := haShard(t, "withdrawn")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	for _, p := range []string{p2, p3} {
		fakes.update(ns, p, func(f *fakeInstance) { f.refuse = true })
	}
	fakes.update(ns, p1, func(f *fakeInstance) { f.down = true })
	expectEvent(t, ns, "PromotionFailed")
	eventually(t, "role withdrawn", func() error {
		if st := shardStatus(t, ns, shard); st.TargetPrimary != "" {
			return fmt.Errorf("target %q", st.TargetPrimary)
		}
		return nil
	})
	time.Sleep(4 * testFailoverDelay) // several reconciles, each applying the pods
	for _, p := range []string{p1, p2, p3} {
		if role := roleLabel(t, ns, p); role == string(v1alpha1.RolePrimary) {
			t.Errorf("%s is labelled primary while the role is withdrawn", p)
		}
	}
	for _, p := range []string{p2, p3} { // let the failover finish
		fakes.update(ns, p, func(f *fakeInstance) { f.refuse = false })
	}
	eventually(t, "a new primary", func() error {
		if st := shardStatus(t, ns, shard); st.TargetPrimary == "" || st.TargetPrimary == p1 {
			return fmt.Errorf("target %q", st.TargetPrimary)
		}
		return nil
	})
}

// A switchover waits for the old primary's WAL receivers to stop (up to 30 s); that wait
// runs outside the reconcile, which goes on reporting the shard: Progressing/SwitchingOver
// while it lasts, then the new primary. Before, the reconcile blocked in the wait and the
// shard's status said nothing until it ended.
func TestSwitchoverWaitDoesNotBlockReconcile(t *testing.T) {
	ns, shard := haShard(t, "slowswitch")
	p1, p2, p3 := specs.InstanceName(shard, 1), specs.InstanceName(shard, 2), specs.InstanceName(shard, 3)
	waitPrimary(t, ns, shard, p1)
	for _, p := range []string{p2, p3} {
		fakes.update(ns, p, func(f *fakeInstance) { f.stuck = true })
	}
	setSpecPrimary(t, ns, shard, p2)
	eventually(t, "Progressing/SwitchingOver during the wait", func() error {
		c := meta.FindStatusCondition(shardStatus(t, ns, shard).Conditions, v1alpha1.ConditionProgressing)
		if c == nil || c.Reason != v1alpha1.ReasonSwitchingOver {
			return fmt.Errorf("Progressing %+v", c)
		}
		return nil
	})
	for _, p := range []string{p2, p3} {
		fakes.update(ns, p, func(f *fakeInstance) { f.stuck = false })
	}
	waitPrimary(t, ns, shard, p2)
}
