package controllers

import (
	"fmt"
	"sort"
)

// shardCount is one existing shard as the scale-down decision sees it.
type shardCount struct {
	Index int32
	Name  string
	// Accounts is the shard's customer account count, counted just now; nil when it could
	// not be counted.
	Accounts *int64
}

// scaleDecision is the outcome of decideScaleDown.
type scaleDecision struct {
	// Keep is how many shards (indexes 0..Keep-1) the ledger must keep serving.
	Keep int32
	// Remove lists shards that may be deleted, highest index first.
	Remove []shardCount
	// Blocked lists shards above the desired count that must stay, and why.
	Blocked []string
}

// decideScaleDown decides which shards above the desired count may go.
//
// Why so careful: a shard's database is the only copy of its accounts' money. Removing a
// shard that holds even one account destroys money, so a shard goes only when a fresh
// count says it holds none. A count that failed is treated as "holds accounts": we would
// rather refuse a scale-down than guess.
//
// Why from the top: account and transaction ids carry their shard index, and the ledger
// serves shards 0..n-1 by position. A hole in that range would renumber shards, so shards
// are removed from the highest index down, stopping at the first one that must stay;
// everything below it stays too.
func decideScaleDown(desired int32, existing []shardCount) scaleDecision {
	sorted := append([]shardCount(nil), existing...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Index > sorted[j].Index })
	d := scaleDecision{Keep: desired}
	blockedAt := int32(-1)
	for _, s := range sorted {
		if s.Index < desired {
			continue
		}
		switch {
		case s.Accounts == nil:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s: its accounts could not be counted", s.Name))
		case *s.Accounts > 0:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s holds %d accounts", s.Name, *s.Accounts))
		case blockedAt < 0:
			d.Remove = append(d.Remove, s)
			continue
		default:
			d.Blocked = append(d.Blocked, fmt.Sprintf("shard %s is empty but a higher shard must stay", s.Name))
		}
		if blockedAt < 0 {
			blockedAt = s.Index
			d.Keep = s.Index + 1
		}
	}
	if blockedAt >= 0 {
		// Nothing below a blocked shard may go, even if counted empty.
		kept := d.Remove[:0]
		for _, s := range d.Remove {
			if s.Index > blockedAt {
				kept = append(kept, s)
			}
		}
		d.Remove = kept
	}
	return d
}

// rolloutInstance is one PostgreSQL instance as the rollout decision sees it.
type rolloutInstance struct {
	Name string
	// Outdated: its pod runs a spec older than the shard's.
	Outdated bool
	// Healthy: its pod is ready, its manager answers and, for a replica, it streams from
	// the primary.
	Healthy bool
	Primary bool
}

// rolloutStep is what decideRollout asks for next.
type rolloutStep int

const (
	rolloutDone rolloutStep = iota
	// rolloutWait: something is unhealthy; disrupt nothing until it recovers.
	rolloutWait
	// rolloutReplaceReplica: delete the named replica's pod; it comes back with the new
	// spec on the same volume and catches up.
	rolloutReplaceReplica
	// rolloutSwitchover: hand the primary role to the named, already updated replica.
	rolloutSwitchover
)

// decideRollout orders a rolling update of a shard's PostgreSQL pods: replicas first, one
// at a time, then a switchover to an updated replica, after which the old primary is an
// outdated replica like any other.
//
// Why this order: a replica's restart costs nothing but a moment of redundancy, while
// the primary's would stop writes; a switchover to an updated, streaming synchronous
// standby loses no acknowledged commit and pauses writes for about a second. Why one at a
// time and only when all are healthy: with ANY 1 of two standbys, taking one down while
// the other lags would leave writes waiting, and a shard that is already degraded must
// not be made worse by routine maintenance.
func decideRollout(instances []rolloutInstance) (rolloutStep, string) {
	var outdatedPrimary bool
	var outdatedReplica, updatedReplica string
	for _, in := range instances {
		if !in.Healthy {
			return rolloutWait, in.Name
		}
		switch {
		case in.Primary:
			outdatedPrimary = in.Outdated
		case in.Outdated && outdatedReplica == "":
			outdatedReplica = in.Name
		case !in.Outdated && updatedReplica == "":
			updatedReplica = in.Name
		}
	}
	switch {
	case outdatedReplica != "":
		return rolloutReplaceReplica, outdatedReplica
	case outdatedPrimary && updatedReplica != "":
		return rolloutSwitchover, updatedReplica
	case outdatedPrimary:
		return rolloutWait, "" // a single instance: nothing to switch over to
	}
	return rolloutDone, ""
}
