package failover

import (
	"errors"
	"testing"
	"time"

	"github.com/tallyhq/tally/instance"
)

func replica(name string, tli int64, wal instance.LSN, receiver string) Observation {
	return Observation{Name: name, Status: &instance.Status{Name: name, Running: true, Role: instance.RoleReplica, Timeline: tli, WAL: wal, WALReceiver: receiver}}
}

func gone(name string) Observation { return Observation{Name: name} }

func TestChoosePromotion(t *testing.T) {
	members := []string{"a", "b", "c"}
	anyOne := instance.SyncRule{Method: instance.SyncAny, Number: 1, Required: true}
	firstOne := instance.SyncRule{Method: instance.SyncFirst, Number: 1, Required: true}
	anyTwo := instance.SyncRule{Method: instance.SyncAny, Number: 2, Required: true}
	preferred := instance.SyncRule{Method: instance.SyncAny, Number: 1}
	fencedB := replica("b", 1, 900, "")
	fencedB.Status.Fenced = true
	tests := []struct {
		name    string
		rule    instance.SyncRule
		members []string
		prefer  string
		obs     []Observation
		want    string
		err     error
	}{
		{"the replica that is ahead wins", anyOne, members, "", []Observation{gone("a"), replica("b", 1, 100, ""), replica("c", 1, 200, "")}, "c", nil},
		{"a lagging replica never wins over one ahead", anyOne, members, "", []Observation{gone("a"), replica("b", 1, 300, ""), replica("c", 1, 200, "")}, "b", nil},
		{"ties go to the lowest name", anyOne, members, "", []Observation{gone("a"), replica("c", 1, 200, ""), replica("b", 1, 200, "")}, "b", nil},
		{"prefer breaks a tie only", anyOne, members, "c", []Observation{gone("a"), replica("b", 1, 200, ""), replica("c", 1, 200, "")}, "c", nil},
		{"prefer never beats a replica ahead", anyOne, members, "c", []Observation{gone("a"), replica("b", 1, 201, ""), replica("c", 1, 200, "")}, "b", nil},
		{"a higher timeline beats a higher LSN", anyOne, members, "", []Observation{gone("a"), replica("b", 2, 100, ""), replica("c", 1, 900, "")}, "b", nil},
		{"ANY 1 of 2: one answering standby cannot prove it has every commit", anyOne, members, "", []Observation{gone("a"), replica("b", 1, 100, ""), gone("c")}, "", ErrNoQuorum},
		{"FIRST 1 of 2 counts the same way", firstOne, members, "", []Observation{gone("a"), gone("b"), replica("c", 1, 100, "")}, "", ErrNoQuorum},
		{"ANY 2 of 2: one answering is enough", anyTwo, members, "", []Observation{gone("a"), gone("b"), replica("c", 1, 100, "")}, "c", nil},
		{"a fenced replica does not count", anyOne, members, "", []Observation{gone("a"), fencedB, replica("c", 1, 100, "")}, "", ErrNoQuorum},
		{"a streaming replica means a primary is alive", anyOne, members, "", []Observation{gone("a"), replica("b", 1, 100, "streaming"), replica("c", 1, 200, "")}, "", ErrReceiversStreaming},
		{"another primary means a primary is alive", anyOne, members, "", []Observation{gone("a"), {Name: "b", Status: &instance.Status{Running: true, Role: instance.RolePrimary}}, replica("c", 1, 200, "")}, "", ErrReceiversStreaming},
		{"preferred promotes the best answering replica without a quorum", preferred, members, "", []Observation{gone("a"), replica("b", 1, 100, ""), gone("c")}, "b", nil},
		{"preferred with nobody answering", preferred, members, "", []Observation{gone("a"), gone("b"), gone("c")}, "", ErrNoCandidate},
		{"two instances, ANY 1: the one standby suffices", anyOne, []string{"a", "b"}, "", []Observation{gone("a"), replica("b", 1, 100, "")}, "b", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.obs {
				if tt.obs[i].Status != nil {
					tt.obs[i].Status.Name = tt.obs[i].Name
				}
			}
			got, err := ChoosePromotion(tt.rule, tt.members, "a", tt.prefer, tt.obs)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got.Name != tt.want {
				t.Fatalf("chose %q (%s), want %q", got.Name, got.Reason, tt.want)
			}
		})
	}
}

func TestQuorumNeeded(t *testing.T) {
	for _, tt := range []struct{ n, k, want int }{{2, 1, 2}, {2, 2, 1}, {4, 1, 4}, {4, 2, 3}, {1, 1, 1}, {1, 2, 1}, {0, 1, 1}} {
		if got := QuorumNeeded(tt.n, tt.k); got != tt.want {
			t.Errorf("QuorumNeeded(%d, %d) = %d, want %d", tt.n, tt.k, got, tt.want)
		}
	}
}

func TestPrimaryLost(t *testing.T) {
	now := time.Now()
	healthy := Observation{Name: "a", Status: &instance.Status{Running: true, Role: instance.RolePrimary}}
	fenced := Observation{Name: "a", Status: &instance.Status{Running: false, Role: instance.RolePrimary, Fenced: true}}
	tests := []struct {
		name      string
		obs       Observation
		downSince time.Time
		want      bool
	}{
		{"healthy primary", healthy, now.Add(-time.Hour), false},
		{"gone longer than the delay", gone("a"), now.Add(-3 * time.Second), true},
		{"gone for less than the delay", gone("a"), now.Add(-time.Second), false},
		{"first missed answer", gone("a"), time.Time{}, false},
		{"fenced counts as down", fenced, now.Add(-3 * time.Second), true},
		{"demoted to replica counts as down", replica("a", 1, 1, ""), now.Add(-3 * time.Second), true},
	}
	for _, tt := range tests {
		if got := PrimaryLost(tt.obs, tt.downSince, now, 2*time.Second); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestNeedsFollow(t *testing.T) {
	following := replica("b", 2, 1, "streaming")
	following.Status.Upstream = "a"
	elsewhere := replica("b", 2, 1, "")
	elsewhere.Status.Upstream = "c"
	oldPrimary := Observation{Name: "b", Status: &instance.Status{Running: true, Role: instance.RolePrimary}}
	fenced := Observation{Name: "b", Status: &instance.Status{Fenced: true}}
	for _, tt := range []struct {
		name string
		obs  Observation
		want bool
	}{
		{"follows the primary", following, false},
		{"follows someone else", elsewhere, true},
		{"a second primary", oldPrimary, true},
		{"fenced", fenced, true},
		{"does not answer", gone("b"), false},
		{"the primary itself", Observation{Name: "a", Status: &instance.Status{Running: true, Role: instance.RolePrimary}}, false},
	} {
		if got := NeedsFollow("a", tt.obs); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestAdoptablePrimary(t *testing.T) {
	primary := func(name string) Observation {
		return Observation{Name: name, Status: &instance.Status{Name: name, Running: true, Role: instance.RolePrimary}}
	}
	if name, ok := AdoptablePrimary("a", []Observation{gone("a"), primary("b"), replica("c", 2, 1, "")}); !ok || name != "b" {
		t.Errorf("one promoted replica: got %q %v", name, ok)
	}
	if _, ok := AdoptablePrimary("a", []Observation{gone("a"), replica("b", 1, 1, ""), replica("c", 1, 1, "")}); ok {
		t.Error("no primary: nothing to adopt")
	}
	if _, ok := AdoptablePrimary("a", []Observation{gone("a"), primary("b"), primary("c")}); ok {
		t.Error("two primaries must never be adopted")
	}
	if _, ok := AdoptablePrimary("a", []Observation{primary("a"), replica("b", 1, 1, "")}); ok {
		t.Error("the lost primary itself is not adoptable")
	}
}
