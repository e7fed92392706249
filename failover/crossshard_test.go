package failover_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

// TestCrossShardTransfersThroughFailover moves money both ways between two shards, each a
// local high-availability shard of two instances, and kills the primary of one of them (the source of half
// the transfers and the destination of the other half) with SIGKILL mid-way. Once the
// resumer has finished what was in flight, every transfer reported settled is settled,
// every one reserved has ended, money is conserved and the cluster verifies clean.
func TestCrossShardTransfersThroughFailover(t *testing.T) {
	for _, victim := range []int{0, 1} {
		t.Run(fmt.Sprintf("primary of shard %d killed", victim), func(t *testing.T) {
			shards := []*haLedger{
				startHALedgerShard(t, 0, 2, anyOneRequired, time.Second),
				startHALedgerShard(t, 1, 2, anyOneRequired, time.Second),
			}
			set, err := shardset.New([]*store.Store{shards[0].store, shards[1].store}, nil, time.Now)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			if _, err := set.Asset(ctx, "USD"); err != nil {
				t.Fatal(err)
			}

			type report struct {
				id    ledger.TransactionID
				state ledger.PendingState
			}
			var mu sync.Mutex
			var reports []report
			failed := 0
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for w := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					rng := rand.New(rand.NewPCG(uint64(w), 11))
					for n := 0; ; n++ {
						select {
						case <-stop:
							return
						default:
						}
						src := rng.IntN(2)
						from, to := shards[src].accounts[rng.IntN(accounts)], shards[1-src].accounts[rng.IntN(accounts)]
						key := fmt.Sprintf("x%d-%d", w, n)
						reqCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
						out, res, err := set.TransferAcross(reqCtx, shardset.StepRequest{Caller: "ha", Key: key, Hash: sha256.Sum256([]byte(key))},
							shardset.PostingRequest{From: shardset.Account{ID: from}, To: shardset.Account{ID: to}, Amount: 1 + rng.Int64N(100), Asset: "USD"}, 5*time.Second)
						cancel()
						mu.Lock()
						if err != nil || out.Status != http.StatusCreated {
							failed++ // not reserved, or the answer was lost: a client would replay it
						} else {
							reports = append(reports, report{out.Transaction, res.Transfer.State})
						}
						mu.Unlock()
						if err != nil {
							time.Sleep(50 * time.Millisecond)
						}
					}
				}()
			}
			time.Sleep(3 * time.Second)
			old := shards[victim].shard.CurrentPrimary()
			shards[victim].shard.Kill(old)
			waitPrimaryOtherThan(t, shards[victim].shard, old, time.Minute)
			// Two instances: the new primary has no synchronous standby, so (durability
			// required) its commits wait until the old one rejoins as a replica.
			if err := shards[victim].shard.Restart(old); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
			close(stop)
			wg.Wait()

			// Finish what is in flight, as every replica's resumer does.
			deadline := time.Now().Add(2 * time.Minute)
			for {
				resumeCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
				_, err := set.Driver().Resume(resumeCtx, 0, 1000)
				cancel()
				inFlight := 0
				for _, sh := range shards {
					ids, err := sh.store.InFlight(ctx, time.Now(), 1000)
					if err != nil {
						t.Fatal(err)
					}
					inFlight += len(ids)
				}
				if err == nil && inFlight == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d transfers still in flight after two minutes: %v", inFlight, err)
				}
				time.Sleep(200 * time.Millisecond)
			}

			settled := 0
			for _, r := range reports {
				pt, err := set.PendingTransfer(ctx, r.id)
				if err != nil {
					t.Fatal(err)
				}
				// Every destination account is active: every reserved transfer settles.
				if pt.State != ledger.StatePosted || (r.state != ledger.StatePending && r.state != pt.State) {
					t.Errorf("transfer %s reported %s, ended %s", r.id, r.state, pt.State)
				}
				if r.state == ledger.StatePosted {
					settled++
				}
			}
			t.Logf("%d transfers reserved (%d reported settled at once, the rest completed later), %d not reserved or answer lost", len(reports), settled, failed)
			if settled == 0 {
				t.Fatal("no transfer was settled")
			}
			var total int64
			for _, sh := range shards {
				for _, id := range sh.accounts {
					b, err := sh.store.Balance(ctx, id)
					if err != nil {
						t.Fatal(err)
					}
					total += b.Posted()
				}
			}
			if want := int64(2 * accounts * 1_000_000); total != want {
				t.Errorf("the accounts hold %d, want %d", total, want)
			}
			vs, err := set.Driver().Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, v := range vs {
				t.Errorf("cluster verify: %s", v)
			}
		})
	}
}
