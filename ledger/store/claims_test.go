package store_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/store"
)

func claim(key, request string, runsOn int) store.Claim {
	return store.Claim{Caller: "test", Key: key, Hash: sha256.Sum256([]byte(request)), RunsOn: runsOn}
}

// A key claimed here for a request on another shard is the request's: the same claim
// again goes on, a different request under the key is 409 here whether it is claimed or
// posted, and a key recorded here by a request that ran here refuses claims of others.
func TestClaimsMakeKeysTheCallersAcrossShards(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 100))
	ran := f.post("ran-here", usd(alice, bob, 1))

	outs, err := f.store.ClaimKeys(ctx, []store.Claim{claim("k1", "transfer a", 1), claim("k2", "transfer b", 3)})
	if err != nil || outs[0].Status != 0 || outs[1].Status != 0 {
		t.Fatalf("fresh claims: %+v %v", outs, err)
	}
	outs, err = f.store.ClaimKeys(ctx, []store.Claim{
		claim("k2", "transfer c", 3),       // another request
		claim("k1", "transfer a", 1),       // the same claim again: a retry
		claim("ran-here", "transfer d", 1), // used by a request that ran here
		claim("k3", "transfer e", 2),       // fresh
	})
	if err != nil {
		t.Fatal(err)
	}
	wantCode(t, "another request under a claimed key", outs[0], ledger.CodeIdempotencyKeyReused)
	if outs[1].Status != 0 || outs[3].Status != 0 {
		t.Errorf("a retried and a fresh claim: %+v %+v", outs[1], outs[3])
	}
	wantCode(t, "a claim of a key used here", outs[2], ledger.CodeIdempotencyKeyReused)

	// Requests that run here see the claims.
	wantCode(t, "a transaction under a key claimed for another shard", f.post("k1", usd(alice, bob, 1)), ledger.CodeIdempotencyKeyReused)
	wantCode(t, "a reservation under a key claimed for another shard", f.reserve("k3", alice, bob, 1, time.Time{}), ledger.CodeIdempotencyKeyReused)
	if again := f.post("ran-here", usd(alice, bob, 1)); !again.Replayed || again.Status != ran.Status {
		t.Errorf("the request that ran here no longer replays: %+v", again)
	}
	if f.balance(bob) != 1 {
		t.Errorf("bob holds %d, want 1", f.balance(bob))
	}

	for _, bad := range []store.Claim{{Caller: "test", Key: "x", RunsOn: -1}, {Caller: "test", Key: "x", RunsOn: ledger.MaxShards},
		{Caller: "te\x00st", Key: "x"}, {Caller: "test", Key: ""}} {
		if _, err := f.store.ClaimKey(ctx, bad); err == nil {
			t.Errorf("claim %+v accepted", bad)
		}
	}
	f.verify()
}

// The table holds a claim or a record, never a mix: PostgreSQL refuses a claim that could
// answer a replay here, or one for a shard that cannot exist.
func TestClaimsAreNothingButClaims(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 2)
	conn := f.db.SuperConn(t)
	for name, row := range map[string]string{
		"claim with a body":        `('test', 'a', $1, 307, '{}', NULL, 1)`,
		"claim with a transaction": `('test', 'b', $1, 307, NULL, gen_random_uuid(), 1)`,
		"claim with a status":      `('test', 'c', $1, 201, NULL, NULL, 1)`,
		"claim for shard 65536":    `('test', 'd', $1, 307, NULL, NULL, 65536)`,
		"record answering nothing": `('test', 'e', $1, 201, NULL, NULL, NULL)`,
	} {
		h := sha256.Sum256([]byte(name))
		if _, err := conn.Exec(ctx, `INSERT INTO tally.idempotency_keys (caller, key, request_hash, status, body, transaction_id, runs_on) VALUES `+row, h[:]); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}

// Concurrent claims of one key, through the batcher, by different requests: exactly one
// wins, and every retry of the winner goes on.
func TestConcurrentClaimsOfOneKey(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 8)
	b, err := batcher.New(f.store, batcher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	defer b.Stop()
	const requests, tries = 8, 3
	var mu sync.Mutex
	won := map[int]int{}
	var wg sync.WaitGroup
	for r := range requests {
		for range tries {
			wg.Add(1)
			go func() {
				defer wg.Done()
				out, err := b.ClaimKey(ctx, claim("contended", fmt.Sprint("request ", r), r%2+1))
				if err != nil {
					t.Error(err)
					return
				}
				if out.Status == 0 {
					mu.Lock()
					won[r]++
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(won) != 1 {
		t.Fatalf("requests that own the key: %v, want exactly one", won)
	}
	for r, n := range won {
		if n != tries {
			t.Errorf("request %d owns the key in %d of its %d tries", r, n, tries)
		}
	}
}
