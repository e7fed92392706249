// Package settest serves a shard set over test databases as the ledger service does:
// each shard's store behind its batcher.
package settest

import (
	"testing"
	"time"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

// Batched is a shard set over dbs (in shard order), each shard's pool of maxConns
// behind a running batcher, all stopped when the test ends.
func Batched(t testing.TB, dbs []*pgtest.DB, maxConns int32) *shardset.Set {
	t.Helper()
	stores := make([]*store.Store, len(dbs))
	fronts := make([]shardset.Front, len(dbs))
	for i, db := range dbs {
		stores[i] = store.New(db.AppPool(t, maxConns))
		b, err := batcher.New(stores[i], batcher.Config{})
		if err != nil {
			t.Fatal(err)
		}
		b.Start()
		t.Cleanup(b.Stop)
		fronts[i] = b
	}
	set, err := shardset.New(stores, fronts, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return set
}
