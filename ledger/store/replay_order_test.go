package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/ledger/store"
)

// Two batches that replay the same keys, in opposite arrival orders, at the same time:
// each locks the replayed records it touches (so its commit waits for the standbys), and
// in arrival order they would wait for each other in a cycle, a deadlock PostgreSQL
// breaks by failing one. Locked in (caller, key) order they never do. post_batch is
// called here without the store's retry, which would hide a deadlock.
func TestReplaysNeverDeadlock(t *testing.T) {
	f := newFixture(t, 4)
	a := f.account("a", 0)
	const keys = 100
	reqs := make([]store.Request, keys)
	for i := range reqs {
		reqs[i] = request(t, fmt.Sprintf("k%03d", i), usd(f.external, a, 1))
	}
	f.batch(reqs...) // every key is now committed: what follows are replays
	reversed := slices.Clone(reqs)
	slices.Reverse(reversed)
	pool := f.db.AppPool(t, 2)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, batch := range [][]store.Request{reqs, reversed} {
		wg.Go(func() {
			for range 30 {
				rows, err := pool.Query(ctx, "SELECT req FROM tally.post_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)", store.BatchArgs(batch)...)
				if err == nil {
					rows.Close()
					err = rows.Err()
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		var pgErr *pgconn.PgError
		if errorsAs(err, &pgErr) && pgErr.Code == "40P01" {
			t.Fatalf("two batches of replays deadlocked: %v", err)
		}
		t.Fatal(err)
	}
}
