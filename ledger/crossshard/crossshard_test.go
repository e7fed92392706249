package crossshard_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/crossshard"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// cluster is shards, each its own database, with USD registered on each, written to
// directly or, batched, through a batcher per shard as the service does.
type cluster struct {
	t   *testing.T
	set *shardset.Set
	ext []ledger.AccountID
}

func newCluster(t *testing.T, shards int, maxConns int32, batched bool) *cluster {
	t.Helper()
	stores := make([]*store.Store, shards)
	var fronts []shardset.Front
	for i := range stores {
		stores[i] = store.New(pgtest.NewShardDB(t, i).AppPool(t, maxConns))
		if batched {
			b, err := batcher.New(stores[i], batcher.Config{})
			if err != nil {
				t.Fatal(err)
			}
			b.Start()
			t.Cleanup(b.Stop)
			fronts = append(fronts, b)
		}
	}
	set, err := shardset.New(stores, fronts, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	asset, _, err := set.RegisterAsset(context.Background(), "USD", 2)
	if err != nil {
		t.Fatal(err)
	}
	return &cluster{t: t, set: set, ext: asset.ExternalAccounts}
}

// account opens an account on the shard and funds it with amount.
func (c *cluster) account(shard int, amount int64) ledger.AccountID {
	c.t.Helper()
	id, err := ledger.NewAccountID(shard)
	if err != nil {
		c.t.Fatal(err)
	}
	st := c.set.Shards()[shard]
	if _, err := st.CreateAccount(context.Background(), ledger.Account{ID: id, Owner: "o", Asset: "USD"}); err != nil {
		c.t.Fatal(err)
	}
	if amount > 0 {
		tx, _ := ledger.NewTransactionID(shard)
		out, err := st.PostTransaction(context.Background(), store.Request{Caller: "test", Key: "fund-" + id.String(),
			Transaction: ledger.Transaction{ID: tx, CreatedAt: time.Now().UTC(),
				Postings: []ledger.Posting{{From: c.ext[shard], To: id, Amount: amount, Asset: "USD"}}}})
		if err != nil || out.Status != http.StatusCreated {
			c.t.Fatalf("fund: %v %+v", err, out)
		}
	}
	return id
}

func (c *cluster) balance(id ledger.AccountID) ledger.Balance {
	c.t.Helper()
	b, err := c.set.Balance(context.Background(), id)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

func (c *cluster) transfer(key string, from, to ledger.AccountID, amount int64) (ledger.Outcome, crossshard.Result, error) {
	return c.set.TransferAcross(context.Background(),
		shardset.StepRequest{Caller: "test", Key: key, Hash: sha256.Sum256([]byte(key))},
		shardset.PostingRequest{From: shardset.Account{ID: from}, To: shardset.Account{ID: to}, Amount: amount, Asset: "USD"}, time.Minute)
}

func (c *cluster) verify() {
	c.t.Helper()
	vs, err := c.set.Driver().Verify(context.Background())
	if err != nil {
		c.t.Fatal(err)
	}
	for _, v := range vs {
		c.t.Errorf("cluster verify: %s", v)
	}
}

var errCrash = errors.New("crashed here")

// TestCrashBetweenEverySteps stops the driver after each step, as a crash of the replica
// driving it would, and a fresh driver (a restarted replica's resumer) completes it:
// applied and settled once, or refused and returned, never both and never twice.
func TestCrashBetweenEverySteps(t *testing.T) {
	c := newCluster(t, 3, 8, true)
	for _, refused := range []bool{false, true} {
		for _, point := range []crossshard.Point{"after-reserve", crossshard.AfterApply, crossshard.AfterResolve} {
			t.Run(fmt.Sprintf("%s refused=%v", point, refused), func(t *testing.T) {
				c.t = t
				src, dst := c.account(0, 1000), c.account(2, 0)
				if refused {
					if _, err := c.set.SetStatus(context.Background(), dst, ledger.StatusFrozen); err != nil {
						t.Fatal(err)
					}
				}
				key := string(point) + fmt.Sprint(refused)
				var id ledger.TransactionID
				if point == "after-reserve" {
					// The replica died after the reservation committed: only the record remains.
					id = reserveOnly(t, c, key, src, dst, 300)
				} else {
					c.set.Driver().Stop = func(p crossshard.Point) error {
						if p == point {
							return errCrash
						}
						return nil
					}
					out, res, err := c.transfer(key, src, dst, 300)
					c.set.Driver().Stop = nil
					if err != nil || out.Status != http.StatusCreated {
						t.Fatalf("transfer: %v %+v", err, out)
					}
					id = out.Transaction
					if point == crossshard.AfterApply && res.Transfer.State != ledger.StatePending {
						t.Errorf("stopped after applying, yet %s", res.Transfer.State)
					}
				}
				restarted := crossshard.New(c.set.Shards(), nil, time.Now)
				for range 2 { // a second resumer pass finds nothing more to do
					if _, err := restarted.Resume(context.Background(), 0, 100); err != nil {
						t.Fatal(err)
					}
				}
				res, err := restarted.Complete(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				want, srcWant, dstWant := ledger.StatePosted, int64(700), int64(300)
				if refused {
					want, srcWant, dstWant = ledger.StateVoided, 1000, 0
				}
				if res.Transfer.State != want || (refused && len(res.Refusal) == 0) {
					t.Errorf("ended %s (refusal %s), want %s", res.Transfer.State, res.Refusal, want)
				}
				if b := c.balance(src); b.Posted() != srcWant || b.Reserved != 0 {
					t.Errorf("source: %+v, want %d", b, srcWant)
				}
				if b := c.balance(dst); b.Posted() != dstWant {
					t.Errorf("destination: %+v, want %d", b, dstWant)
				}
				c.verify()
			})
		}
	}
}

// reserveOnly makes the first step of a transfer between shards and nothing more.
func reserveOnly(t *testing.T, c *cluster, key string, from, to ledger.AccountID, amount int64) ledger.TransactionID {
	t.Helper()
	tx, _ := ledger.NewTransactionID(from.Shard())
	holding, _ := ledger.NewAccountID(from.Shard())
	clearing, _ := ledger.NewAccountID(from.Shard())
	out, err := c.set.Shards()[from.Shard()].Reserve(context.Background(),
		store.Step{Caller: "test", Key: key, Hash: sha256.Sum256([]byte(key)), ID: tx, CreatedAt: time.Now().UTC()},
		store.Reservation{From: from, Remote: to, Amount: amount, Asset: "USD", HoldingID: holding, ClearingID: clearing})
	if err != nil || out.Status != http.StatusCreated {
		t.Fatalf("reserve: %v %+v", err, out)
	}
	if b := c.balance(from); b.Reserved != amount {
		t.Errorf("reserved: %+v", b)
	}
	return out.Transaction
}

// TestDriversRaceOnOneTransfer: many drivers complete one transfer at once; it is
// applied once and settled once.
func TestDriversRaceOnOneTransfer(t *testing.T) {
	c := newCluster(t, 2, 16, true)
	src, dst := c.account(0, 1000), c.account(1, 0)
	id := reserveOnly(t, c, "k", src, dst, 250)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half drive through the batchers (the service's replica), half straight to
			// the stores (other replicas).
			d := c.set.Driver()
			if i%2 == 1 {
				d = crossshard.New(c.set.Shards(), nil, time.Now)
			}
			res, err := d.Complete(context.Background(), id)
			if err != nil || res.Transfer.State != ledger.StatePosted {
				t.Errorf("driver: %v %+v", err, res)
			}
		}()
	}
	wg.Wait()
	if c.balance(src).Posted() != 750 || c.balance(dst).Posted() != 250 {
		t.Errorf("source %+v destination %+v", c.balance(src), c.balance(dst))
	}
	c.verify()
}

// TestRandomTransfersAcrossThreeShards: 64 clients move money at random among 1,000
// accounts on three shards, most transfers crossing shards. Afterwards every transfer is
// in the state it was reported in, money is conserved, and the cluster verifies clean.
func TestRandomTransfersAcrossThreeShards(t *testing.T) {
	const shards, accounts, clients, perClient = 3, 1000, 64, 15
	c := newCluster(t, shards, 40, true)
	ids := make([]ledger.AccountID, accounts)
	for i := range ids {
		ids[i] = c.account(i%shards, 10_000)
	}
	type report struct {
		key   string
		from  ledger.AccountID
		state ledger.PendingState // posted, or voided (refused), or "" (refused at the source)
		id    ledger.TransactionID
	}
	reports := make(chan report, clients*perClient)
	var wg sync.WaitGroup
	for w := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := range perClient {
				from := ids[rng.IntN(accounts)]
				to := ids[rng.IntN(accounts)]
				for to.Shard() == from.Shard() {
					to = ids[rng.IntN(accounts)]
				}
				key := fmt.Sprintf("w%d-%d", w, n)
				out, res, err := c.transfer(key, from, to, 1+rng.Int64N(20_000)) // some exceed the funds
				if err != nil {
					t.Error(err)
					return
				}
				r := report{key: key, from: from}
				if out.Status == http.StatusCreated {
					r.state, r.id = res.Transfer.State, out.Transaction
				}
				reports <- r
			}
		}()
	}
	wg.Wait()
	close(reports)
	settled := 0
	for r := range reports {
		if r.id == (ledger.TransactionID{}) {
			continue
		}
		pt, err := c.set.PendingTransfer(context.Background(), r.id)
		if err != nil {
			t.Fatal(err)
		}
		if pt.State != r.state || r.state != ledger.StatePosted {
			t.Errorf("transfer %s reported %s, stands %s", r.key, r.state, pt.State)
		}
		settled++
	}
	if settled < clients*perClient/4 {
		t.Errorf("only %d of %d transfers settled", settled, clients*perClient)
	}
	var total int64
	for _, id := range ids {
		b := c.balance(id)
		if b.Reserved != 0 {
			t.Errorf("account %s still has %d reserved", id, b.Reserved)
		}
		total += b.Posted()
	}
	if total != accounts*10_000 {
		t.Errorf("accounts hold %d, want %d", total, accounts*10_000)
	}
	c.verify()
}

// TestVerifyFindsMoneyAppliedTwice: a destination that applies a transfer its source
// never made (as a second, forged application would) is found by the cluster verify.
func TestVerifyFindsMoneyAppliedTwice(t *testing.T) {
	c := newCluster(t, 2, 8, false)
	src, dst := c.account(0, 1000), c.account(1, 0)
	if _, _, err := c.transfer("k", src, dst, 100); err != nil {
		t.Fatal(err)
	}
	c.verify()
	forged, _ := ledger.NewTransactionID(0)
	tx, _ := ledger.NewTransactionID(1)
	clearing, _ := ledger.NewAccountID(1)
	in, err := c.set.Shards()[1].ApplyInbound(context.Background(),
		ledger.PendingTransfer{ID: forged, Remote: dst, Amount: 100, Asset: "USD"}, tx, time.Now().UTC(), clearing)
	if err != nil || !in.Applied {
		t.Fatalf("forged application: %v %+v", err, in)
	}
	vs, err := c.set.Driver().Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	checks := map[string]bool{}
	for _, v := range vs {
		checks[v.Check] = true
	}
	if !checks["a destination applies what its source reserved"] || !checks["clearing accounts owe each other what is in flight"] {
		t.Errorf("verify found %v", vs)
	}
}
