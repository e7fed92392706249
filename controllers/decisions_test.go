package controllers

import (
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/instance"
)

func count(n int64) *int64 { return &n }

func TestDecideScaleDown(t *testing.T) {
	tests := []struct {
		name        string
		desired     int32
		existing    []shardCount
		keep        int32
		remove      []int32
		blockedMany int
	}{
		{"nothing above desired", 2, []shardCount{{Index: 0, Accounts: count(5)}, {Index: 1, Accounts: count(0)}}, 2, nil, 0},
		{"empty top shard goes", 1, []shardCount{{Index: 0, Accounts: count(5)}, {Index: 1, Accounts: count(0)}}, 1, []int32{1}, 0},
		{"shard with accounts stays", 1, []shardCount{{Index: 0}, {Index: 1, Accounts: count(3)}}, 2, nil, 1},
		{"uncounted shard stays", 1, []shardCount{{Index: 0}, {Index: 1}}, 2, nil, 1},
		{"empty shards above a blocked one go", 1, []shardCount{{Index: 0}, {Index: 1, Accounts: count(1)}, {Index: 2, Accounts: count(0)}, {Index: 3, Accounts: count(0)}}, 2, []int32{3, 2}, 1},
		{"empty shard below a blocked one stays", 1, []shardCount{{Index: 0}, {Index: 1, Accounts: count(0)}, {Index: 2, Accounts: count(7)}}, 3, nil, 2},
	}
	for _, tt := range tests {
		d := decideScaleDown(tt.desired, tt.existing)
		var removed []int32
		for _, s := range d.Remove {
			removed = append(removed, s.Index)
		}
		if d.Keep != tt.keep || !reflect.DeepEqual(removed, tt.remove) || len(d.Blocked) != tt.blockedMany {
			t.Errorf("%s: keep %d remove %v blocked %v; want keep %d remove %v blocked %d", tt.name, d.Keep, removed, d.Blocked, tt.keep, tt.remove, tt.blockedMany)
		}
	}
}

func TestDecideRollout(t *testing.T) {
	in := func(name string, primary, outdated, healthy bool) rolloutInstance {
		return rolloutInstance{Name: name, Primary: primary, Outdated: outdated, Healthy: healthy}
	}
	tests := []struct {
		name      string
		instances []rolloutInstance
		step      rolloutStep
		target    string
	}{
		{"nothing outdated", []rolloutInstance{in("a", true, false, true), in("b", false, false, true)}, rolloutDone, ""},
		{"replicas first", []rolloutInstance{in("a", true, true, true), in("b", false, true, true), in("c", false, true, true)}, rolloutReplaceReplica, "b"},
		{"then the next replica", []rolloutInstance{in("a", true, true, true), in("b", false, false, true), in("c", false, true, true)}, rolloutReplaceReplica, "c"},
		{"then a switchover to an updated replica", []rolloutInstance{in("a", true, true, true), in("b", false, false, true), in("c", false, false, true)}, rolloutSwitchover, "b"},
		{"never while an instance is unhealthy", []rolloutInstance{in("a", true, true, true), in("b", false, true, true), in("c", false, false, false)}, rolloutWait, "c"},
		{"a single outdated instance waits", []rolloutInstance{in("a", true, true, true)}, rolloutWait, ""},
	}
	for _, tt := range tests {
		step, target := decideRollout(tt.instances)
		if step != tt.step || target != tt.target {
			t.Errorf("%s: got %v %q, want %v %q", tt.name, step, target, tt.step, tt.target)
		}
	}
}

func TestDecideRetire(t *testing.T) {
	required := instance.SyncRule{Method: instance.SyncAny, Number: 1, Required: true}
	primary := func(names string, wal instance.LSN, standbys ...instance.Standby) *instance.Status {
		return &instance.Status{Running: true, Role: instance.RolePrimary, SyncStandbyNames: names, WAL: wal, Standbys: standbys}
	}
	healthy := []rolloutInstance{{Name: "s-1", Healthy: true}, {Name: "s-2", Healthy: true}}
	tests := []struct {
		name string
		in   retireInput
		want retireDecision
	}{
		{"nothing leaving", retireInput{Rule: required, Primary: "s-1"}, retireDecision{Step: retireDone}},
		{"leaving primary switches over to a healthy replica of the spec",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-3", Replicas: []rolloutInstance{{Name: "s-1"}, {Name: "s-2", Healthy: true}}},
			retireDecision{Step: retireSwitchover, Target: "s-2"}},
		{"leaving primary without a healthy replica waits",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-3", Replicas: []rolloutInstance{{Name: "s-1"}}},
			retireDecision{Step: retireWait}},
		{"unhealthy primary waits",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", Replicas: healthy},
			retireDecision{Step: retireWait}},
		{"asynchronous: delete once the primary is healthy",
			retireInput{Rule: instance.SyncRule{}, Leaving: []string{"s-3"}, Primary: "s-1", PrimaryStatus: primary("", 10)},
			retireDecision{Step: retireDelete}},
		{"primary still waits for the leaving instance",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", PrimaryStatus: primary(`ANY 1 ("s-2", "s-3")`, 10), Mark: 5},
			retireDecision{Step: retireWait}},
		{"preferred durability: delete once the primary stops waiting",
			retireInput{Rule: instance.SyncRule{Method: instance.SyncAny, Number: 1}, Leaving: []string{"s-3"}, Primary: "s-1", PrimaryStatus: primary(`ANY 1 ("s-2")`, 10)},
			retireDecision{Step: retireDelete}},
		{"required: the first look only sees the new setting",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", PrimaryStatus: primary(`ANY 1 ("s-2")`, 10, instance.Standby{Name: "s-2", FlushLSN: 20})},
			retireDecision{Step: retireWait, Seen: true}},
		{"required: the next look takes the mark",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", Seen: true, PrimaryStatus: primary(`ANY 1 ("s-2")`, 10, instance.Standby{Name: "s-2", FlushLSN: 20})},
			retireDecision{Step: retireWait, Seen: true, Mark: 10}},
		{"required: a staying standby behind the mark waits",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", Seen: true, Mark: 10,
				PrimaryStatus: primary(`ANY 1 ("s-2")`, 30, instance.Standby{Name: "s-2", FlushLSN: 9}, instance.Standby{Name: "s-3", FlushLSN: 30})},
			retireDecision{Step: retireWait, Seen: true, Mark: 10}},
		{"required: delete once a staying standby flushed past the mark",
			retireInput{Rule: required, Leaving: []string{"s-3"}, Primary: "s-1", Seen: true, Mark: 10,
				PrimaryStatus: primary(`ANY 1 ("s-2")`, 30, instance.Standby{Name: "s-2", FlushLSN: 10})},
			retireDecision{Step: retireDelete, Seen: true, Mark: 10}},
		{"required two: one staying standby is not enough",
			retireInput{Rule: instance.SyncRule{Method: instance.SyncAny, Number: 2, Required: true}, Leaving: []string{"s-4"}, Primary: "s-1", Seen: true, Mark: 10,
				PrimaryStatus: primary(`ANY 2 ("s-2", "s-3")`, 30, instance.Standby{Name: "s-2", FlushLSN: 10}, instance.Standby{Name: "s-3", FlushLSN: 9})},
			retireDecision{Step: retireWait, Seen: true, Mark: 10}},
	}
	for _, tt := range tests {
		got := decideRetire(tt.in)
		got.Reason = ""
		if got != tt.want {
			t.Errorf("%s: got %+v, want %+v", tt.name, got, tt.want)
		}
		if got.Step == retireWait && decideRetire(tt.in).Reason == "" {
			t.Errorf("%s: waits without saying why", tt.name)
		}
	}
}

func TestDecideShardDeletion(t *testing.T) {
	live := shardDeletionFacts{Shard: "pay-1", Index: 1, Cluster: "pay", ClusterLive: true, Listed: true, Accounts: count(3)}
	with := func(change func(*shardDeletionFacts)) shardDeletionFacts {
		f := live
		change(&f)
		return f
	}
	tests := []struct {
		name                string
		facts               shardDeletionFacts
		release, lost, wait bool
	}{
		{"Retain, listed, holds accounts: waits", live, false, false, true},
		{"Retain, listed, count unknown: waits", with(func(f *shardDeletionFacts) { f.Accounts = nil }), false, false, true},
		{"Retain, listed, empty: goes", with(func(f *shardDeletionFacts) { f.Accounts = count(0) }), true, false, false},
		{"cluster gone: goes", with(func(f *shardDeletionFacts) { f.ClusterLive = false }), true, false, false},
		{"scaled below it: goes", with(func(f *shardDeletionFacts) { f.Listed = false }), true, false, false},
		{"Delete, holds accounts, not recorded: waits for the record", with(func(f *shardDeletionFacts) { f.Policy = v1alpha1.DeletionPolicyDelete }), false, true, true},
		{"Delete, holds accounts, recorded: goes as lost", with(func(f *shardDeletionFacts) {
			f.Policy, f.RecordedLost = v1alpha1.DeletionPolicyDelete, true
		}), true, true, false},
		{"Delete, empty: goes, nothing lost", with(func(f *shardDeletionFacts) {
			f.Policy, f.Accounts = v1alpha1.DeletionPolicyDelete, count(0)
		}), true, false, false},
		{"Delete, cluster deleted: goes", with(func(f *shardDeletionFacts) {
			f.Policy, f.ClusterLive = v1alpha1.DeletionPolicyDelete, false
		}), true, false, false},
	}
	for _, tt := range tests {
		d := decideShardDeletion(tt.facts)
		if d.Release != tt.release || d.Lost != tt.lost || (d.Wait != "") != tt.wait {
			t.Errorf("%s: %+v", tt.name, d)
		}
	}
}

func TestPodStuckOnLostNode(t *testing.T) {
	now := time.Now()
	past := metav1.NewTime(now.Add(-time.Minute))
	soon := metav1.NewTime(now.Add(time.Minute))
	ready := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}}}
	lost := &corev1.Node{Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionUnknown}}}}
	pod := func(name string, deleting *metav1.Time) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, DeletionTimestamp: deleting}}
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		node *corev1.Node
		want bool
	}{
		{"terminating past its deadline on a lost node", pod("r", &past), lost, true},
		{"on a node that is gone", pod("r", &past), nil, true},
		{"on a ready node: its kubelet will finish", pod("r", &past), ready, false},
		{"not past its deadline and the grace", pod("r", &soon), lost, false},
		{"not being deleted", pod("r", nil), lost, false},
		{"the current primary: failed over first", pod("p", &past), lost, false},
		{"the target primary: a person decides", pod("q", &past), lost, false},
	}
	for _, tt := range tests {
		if got := podStuckOnLostNode(tt.pod, tt.node, []string{"p", "q"}, now, 10*time.Second); got != tt.want {
			t.Errorf("%s: %v", tt.name, got)
		}
	}
}

func TestDecideDrainSwitchover(t *testing.T) {
	healthy := drainCandidate{Name: "b", Healthy: true, Schedulable: true}
	tests := []struct {
		name     string
		cordoned bool
		replicas []drainCandidate
		want     string
	}{
		{"primary's node not cordoned", false, []drainCandidate{healthy}, ""},
		{"a healthy replica on a schedulable node", true, []drainCandidate{healthy}, "b"},
		{"lagging replica skipped", true, []drainCandidate{{Name: "a", Schedulable: true}, healthy}, "b"},
		{"replica on a cordoned node skipped", true, []drainCandidate{{Name: "a", Healthy: true}, healthy}, "b"},
		{"nobody fit", true, []drainCandidate{{Name: "a", Healthy: true}, {Name: "c", Schedulable: true}}, ""},
	}
	for _, tt := range tests {
		if got := decideDrainSwitchover(tt.cordoned, tt.replicas); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
}
