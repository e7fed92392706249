package controllers

import (
	"reflect"
	"testing"
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
