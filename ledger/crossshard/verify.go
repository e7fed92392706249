package crossshard

import (
	"context"
	"fmt"
	"sort"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// Verify checks every shard's own invariants and then those that span shards:
//   - per asset, every balance of every shard sums to zero;
//   - each transfer a destination applied was reserved by its source for that account
//     and amount, and not returned; each settled transfer was applied, each returned one
//     refused, each at most once (the destination's record is keyed by the transfer);
//   - each pair of clearing accounts, with what was applied but not yet settled, sums to
//     zero: they owe each other exactly what is in flight.
//
// Shards are read one after another, so the check is exact while no transfer between
// shards moves; on a live ledger a finding that names a transfer in flight may be one
// that moved between two reads: verify again.
func (d *Driver) Verify(ctx context.Context) ([]store.Violation, error) {
	return d.verify(ctx, (*store.Store).Verify)
}

// VerifyIncremental is Verify with each shard checked from its latest checkpoint
// (store.VerifyIncremental).
func (d *Driver) VerifyIncremental(ctx context.Context) ([]store.Violation, error) {
	return d.verify(ctx, (*store.Store).VerifyIncremental)
}

func (d *Driver) verify(ctx context.Context, verifyShard func(*store.Store, context.Context) ([]store.Violation, error)) ([]store.Violation, error) {
	var found []store.Violation
	records := make([]store.ShardRecords, len(d.shards))
	for i, st := range d.shards {
		vs, err := verifyShard(st, ctx)
		if err != nil {
			return nil, fmt.Errorf("crossshard: verify shard %d: %w", i, err)
		}
		for _, v := range vs {
			found = append(found, store.Violation{Check: fmt.Sprintf("shard %d: %s", i, v.Check), Detail: v.Detail})
		}
		if records[i], err = st.CrossShardRecords(ctx); err != nil {
			return nil, fmt.Errorf("crossshard: read shard %d: %w", i, err)
		}
	}
	add := func(check, format string, args ...any) {
		found = append(found, store.Violation{Check: check, Detail: fmt.Sprintf(format, args...)})
	}

	totals := map[string]int64{}
	for _, r := range records {
		for asset, n := range r.Totals {
			totals[asset] += n
		}
	}
	for _, asset := range sortedKeys(totals) {
		if totals[asset] != 0 {
			add("money is conserved across shards", "asset %s: every balance of every shard sums to %d", asset, totals[asset])
		}
	}

	// What each destination did, by transfer id.
	received := map[ledger.TransactionID]store.ReceivedTransfer{}
	for dst, r := range records {
		for _, in := range r.Received {
			if in.ID.Shard() == dst {
				add("a transfer between shards crosses shards", "shard %d received transfer %s from itself", dst, in.ID)
			}
			received[in.ID] = in
		}
	}
	// pairs[{asset, a, b}] with a < b: the two clearing balances plus what is in flight.
	type pair struct {
		asset string
		a, b  int
	}
	pairs := map[pair]int64{}
	key := func(asset string, x, y int) pair {
		if x > y {
			x, y = y, x
		}
		return pair{asset, x, y}
	}
	for s, r := range records {
		for k, bal := range r.Clearing {
			pairs[key(k.Asset, s, k.Peer)] += bal
		}
		for _, t := range r.Sent {
			in, ok := received[t.ID]
			switch {
			case ok && (in.To != t.Remote || in.Amount != t.Amount || in.Asset != t.Asset):
				add("a destination applies what its source reserved", "transfer %s: shard %d reserved %d %s for %s, shard %d has %d %s for %s",
					t.ID, s, t.Amount, t.Asset, t.Remote, t.Remote.Shard(), in.Amount, in.Asset, in.To)
			case t.State == ledger.StatePosted && !(ok && in.Applied):
				add("a settled transfer was applied", "transfer %s from shard %d is settled but shard %d did not apply it", t.ID, s, t.Remote.Shard())
			case t.State == ledger.StateVoided && !(ok && !in.Applied):
				add("a returned transfer was refused", "transfer %s from shard %d was returned but shard %d did not refuse it", t.ID, s, t.Remote.Shard())
			case t.State == ledger.StatePending && ok && in.Applied:
				pairs[key(t.Asset, s, t.Remote.Shard())] += t.Amount // applied there, not settled here yet
			}
			delete(received, t.ID)
		}
	}
	for _, in := range received {
		if in.Applied {
			add("a destination applies what its source reserved", "shard %d applied transfer %s, which shard %d never reserved",
				in.To.Shard(), in.ID, in.ID.Shard())
		}
	}
	for p, sum := range pairs {
		if sum != 0 {
			add("clearing accounts owe each other what is in flight", "asset %s, shards %d and %d: clearing balances and transfers in flight sum to %d",
				p.asset, p.a, p.b, sum)
		}
	}
	return found, nil
}

func sortedKeys(m map[string]int64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
