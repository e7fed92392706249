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
