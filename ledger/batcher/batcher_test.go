package batcher_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func setup(t *testing.T) (*store.Store, ledger.AccountID, ledger.AccountID) {
	t.Helper()
	st := store.New(pgtest.NewDB(t).AppPool(t, 4))
	ext, _ := ledger.NewAccountID(0)
	if _, _, _, err := st.RegisterAsset(context.Background(), "USD", 2, ext); err != nil {
		t.Fatal(err)
	}
	acc, _ := ledger.NewAccountID(0)
	if _, err := st.CreateAccount(context.Background(), ledger.Account{ID: acc, Owner: "a", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
	return st, ext, acc
}

func deposit(t *testing.T, key string, ext, to ledger.AccountID) store.Request {
	id, _ := ledger.NewTransactionID(0)
	return store.Request{Caller: "c", Key: key, Hash: sha256.Sum256([]byte(key)), Body: []byte("{}"),
		Transaction: ledger.Transaction{ID: id, CreatedAt: time.Now(), Postings: []ledger.Posting{{From: ext, To: to, Amount: 1, Asset: "USD"}}}}
}

func TestConfigBounds(t *testing.T) {
	st, _, _ := setup(t)
	for _, c := range []batcher.Config{{Writers: -1}, {Writers: 17}, {MaxBatch: 1001}, {Linger: time.Second}, {Readers: 17}} {
		if _, err := batcher.New(st, c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}

// A request whose caller gave up before a writer took it is never applied.
func TestCancelledRequestIsNotApplied(t *testing.T) {
	st, ext, acc := setup(t)
	b, err := batcher.New(st, batcher.Config{Writers: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := b.PostTransaction(ctx, deposit(t, "gone", ext, acc)); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	b.Start() // the writer now finds the cancelled request first
	out, err := b.PostTransaction(context.Background(), deposit(t, "kept", ext, acc))
	if err != nil || out.Status != 201 {
		t.Fatalf("next request: %v %+v", err, out)
	}
	b.Stop()
	if bal, _ := st.Balance(context.Background(), acc); bal.Posted() != 1 {
		t.Errorf("balance %d: the cancelled request was applied", bal.Posted())
	}
	if _, err := b.PostTransaction(context.Background(), deposit(t, "late", ext, acc)); !errors.Is(err, batcher.ErrStopped) {
		t.Errorf("after stop: %v", err)
	}
}

// Coalesced balance reads: each read answers for its own account, a missing account is
// not found alone, and a read that starts after a transfer was acknowledged sees it.
func TestCoalescedBalanceReadsAreFresh(t *testing.T) {
	st, ext, acc := setup(t)
	other, _ := ledger.NewAccountID(0)
	if _, err := st.CreateAccount(context.Background(), ledger.Account{ID: other, Owner: "b", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
	missing, _ := ledger.NewAccountID(0)
	b, err := batcher.New(st, batcher.Config{Readers: 1})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	defer b.Stop()
	ctx := context.Background()
	const writes, readers = 30, 16
	var wg sync.WaitGroup
	errs := make(chan error, writes*readers*2)
	for w := range writes {
		out, err := b.PostTransaction(ctx, deposit(t, fmt.Sprint("d", w), ext, acc))
		if err != nil || out.Status != 201 {
			t.Fatalf("deposit %d: %v %+v", w, err, out)
		}
		// Every read started now must see at least w+1 deposits on acc, none on other.
		for r := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id, want := acc, int64(w+1)
				if r%4 == 1 {
					id, want = other, 0
				}
				bal, err := b.Balance(ctx, id)
				switch {
				case err != nil:
					errs <- err
				case bal.AccountID != id || bal.Asset != "USD":
					errs <- fmt.Errorf("read of %s answered %+v", id, bal)
				case id == acc && bal.Posted() < want, id == other && bal.Posted() != want:
					errs <- fmt.Errorf("read after %d deposits saw %d on %s", w+1, bal.Posted(), id)
				}
				if r%4 == 2 {
					if _, err := b.Balance(ctx, missing); ledger.CodeOf(err) != ledger.CodeAccountNotFound {
						errs <- fmt.Errorf("missing account: %v", err)
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// Stats count what waits in the queues: requests and reads submitted before any writer
// or reader runs are queued, and none is once they have been answered.
func TestStatsCountQueued(t *testing.T) {
	st, ext, acc := setup(t)
	b, err := batcher.New(st, batcher.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 3 {
		wg.Go(func() {
			if out, err := b.PostTransaction(ctx, deposit(t, fmt.Sprint("q", i), ext, acc)); err != nil || out.Status != 201 {
				t.Errorf("deposit %d: %v %+v", i, err, out)
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			if _, err := b.Balance(ctx, acc); err != nil {
				t.Errorf("read: %v", err)
			}
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for s := b.Stats(); s.QueuedRequests != 3 || s.QueuedReads != 2; s = b.Stats() {
		if time.Now().After(deadline) {
			b.Start() // lets the submitters finish
			t.Fatalf("3 requests and 2 reads submitted, none answered: %+v", s)
		}
		time.Sleep(time.Millisecond) // the submitters have not all enqueued yet
	}
	b.Start()
	wg.Wait()
	b.Stop()
	if s := b.Stats(); s.QueuedRequests != 0 || s.QueuedReads != 0 || s.Requests != 3 {
		t.Errorf("after the answers: %+v", s)
	}
}

// One request the database refuses must not fail its neighbours. A full batch of 100 is
// queued before the writer starts, so it is posted as one: 98 deposits, one request whose
// transaction id names another shard (Validate cannot see that; the database refuses the
// statement), and one whose metadata PostgreSQL cannot store (Validate refuses it before
// it joins). Each good request is applied once; each bad one gets its own 400.
func TestPoisonedRequestFailsAlone(t *testing.T) {
	st, ext, acc := setup(t)
	b, err := batcher.New(st, batcher.Config{Writers: 1, MaxBatch: 100})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	const good = 98
	type answer struct {
		i   int
		out ledger.Outcome
		err error
	}
	answers := make(chan answer, good+2)
	var wg sync.WaitGroup
	for i := range good + 1 {
		req := deposit(t, fmt.Sprint("k", i), ext, acc)
		if i == good/2 {
			req.Transaction.ID, _ = ledger.NewTransactionID(1) // not this shard's
		}
		wg.Go(func() {
			out, err := b.PostTransaction(ctx, req)
			answers <- answer{i, out, err}
		})
	}
	nul := deposit(t, "nul", ext, acc)
	nul.Transaction.Metadata = []byte(`{"a":"\u0000"}`)
	if _, err := b.PostTransaction(ctx, nul); ledger.CodeOf(err) != ledger.CodeInvalidRequest {
		t.Errorf("metadata PostgreSQL cannot store: %v, want invalid_request before batching", err)
	}
	deadline := time.Now().Add(time.Minute)
	for b.Stats().QueuedRequests != good+1 {
		if time.Now().After(deadline) {
			b.Start()
			t.Fatalf("requests not queued: %+v", b.Stats())
		}
		time.Sleep(time.Millisecond)
	}
	b.Start()
	wg.Wait()
	b.Stop()
	close(answers)
	for a := range answers {
		switch {
		case a.i == good/2:
			if ledger.CodeOf(a.err) != ledger.CodeInvalidRequest {
				t.Errorf("poisoned request: %v %+v, want invalid_request", a.err, a.out)
			}
		case a.err != nil || a.out.Status != 201:
			t.Errorf("request %d next to the poisoned one: %v %+v", a.i, a.err, a.out)
		}
	}
	if bal, _ := st.Balance(ctx, acc); bal.Posted() != good {
		t.Errorf("balance %d, want %d deposits", bal.Posted(), good)
	}
	if s := b.Stats(); s.Isolations == 0 {
		t.Errorf("the poisoned batch was never split: %+v", s)
	}
}

// freezingProxy forwards connections to PostgreSQL until frozen; then the connections it
// holds stay open and carry nothing more, as a hung primary's do (its kernel still
// acknowledges), while new connections reach the server, as the Service does once it
// leads to the new primary.
type freezingProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*atomic.Bool // one frozen flag per connection
	done   chan struct{}
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{ln: ln, target: target, done: make(chan struct{})}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			frozen := &atomic.Bool{}
			p.mu.Lock()
			p.conns = append(p.conns, frozen)
			p.mu.Unlock()
			go p.pipe(client, server, frozen)
			go p.pipe(server, client, frozen)
		}
	}()
	t.Cleanup(func() { close(p.done); ln.Close() })
	return p
}

func (p *freezingProxy) pipe(from, to net.Conn, frozen *atomic.Bool) {
	defer to.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if frozen.Load() {
			<-p.done
			from.Close()
			return
		}
		if n > 0 {
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *freezingProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.conns {
		f.Store(true)
	}
}

// A batch stuck on a connection whose server stopped answering (a hung primary) fails
// after the batch timeout, and no later batch rides on a connection opened before that:
// once the address leads to a live server again, the next batch reaches it, instead of
// each pooled connection to the hung server costing a batch timeout in turn.
func TestHungServerCostsOneBatch(t *testing.T) {
	db := pgtest.NewDB(t)
	cfg, err := pgxpool.ParseConfig(db.AppDSN())
	if err != nil {
		t.Fatal(err)
	}
	p := newFreezingProxy(t, net.JoinHostPort(cfg.ConnConfig.Host, strconv.Itoa(int(cfg.ConnConfig.Port))))
	cfg.ConnConfig.Host, cfg.ConnConfig.Port = "127.0.0.1", uint16(p.ln.Addr().(*net.TCPAddr).Port)
	cfg.MaxConns = 4
	store.ConfigurePool(cfg)
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	st := store.New(pool)
	ext, _ := ledger.NewAccountID(0)
	if _, _, _, err := st.RegisterAsset(ctx, "USD", 2, ext); err != nil {
		t.Fatal(err)
	}
	acc, _ := ledger.NewAccountID(0)
	if _, err := st.CreateAccount(ctx, ledger.Account{ID: acc, Owner: "a", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
	// every connection the pool may hold is open, to the server about to hang
	var held []*pgxpool.Conn
	for range cfg.MaxConns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	for _, c := range held {
		c.Release()
	}
	b, err := batcher.New(st, batcher.Config{Writers: 1, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	b.Start()
	defer b.Stop()
	if out, err := b.PostTransaction(ctx, deposit(t, "before", ext, acc)); err != nil || out.Status != 201 {
		t.Fatalf("before the hang: %v %+v", err, out)
	}
	p.freeze()
	// The first batch after the hang is ambiguous: it may have reached the server.
	if _, err := b.PostTransaction(ctx, deposit(t, "hung", ext, acc)); !errors.Is(err, context.DeadlineExceeded) && !store.Unavailable(err) {
		t.Fatalf("on the hung server: %v, want a timeout", err)
	}
	for i := range 3 {
		if out, err := b.PostTransaction(ctx, deposit(t, fmt.Sprintf("after-%d", i), ext, acc)); err != nil || out.Status != 201 {
			t.Fatalf("batch %d after the one that timed out: %v %+v; it rode on a connection to the hung server", i+1, err, out)
		}
	}
}

// Two-phase steps batch by kind: reservations queued together are made in one batch, and
// two resolutions of one transfer never share a batch (the database would refuse it
// whole): the second waits for the next batch and finds the transfer resolved.
func TestStepsBatchByKind(t *testing.T) {
	st, ext, acc := setup(t)
	ctx := context.Background()
	fund := deposit(t, "fund", ext, acc)
	fund.Transaction.Postings[0].Amount = 1000
	if out, err := st.PostTransaction(ctx, fund); err != nil || out.Status != 201 {
		t.Fatalf("fund: %v %+v", err, out)
	}
	bob, _ := ledger.NewAccountID(0)
	if _, err := st.CreateAccount(ctx, ledger.Account{ID: bob, Owner: "b", Asset: "USD"}); err != nil {
		t.Fatal(err)
	}
	newStep := func(key string) store.Step {
		id, _ := ledger.NewTransactionID(0)
		return store.Step{Caller: "c", Key: key, Hash: sha256.Sum256([]byte(key)), ID: id, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}
	}
	// queued runs the calls before the batcher's writers start, so that they batch, and
	// returns the batches they took.
	queued := func(calls []func(*batcher.Batcher)) uint64 {
		b, err := batcher.New(st, batcher.Config{Writers: 1})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, call := range calls {
			wg.Go(func() { call(b) })
		}
		for b.Stats().QueuedRequests != len(calls) {
			time.Sleep(time.Millisecond)
		}
		b.Start()
		wg.Wait()
		b.Stop()
		if s := b.Stats(); s.Isolations != 0 {
			t.Errorf("isolations: %+v", s)
		}
		return b.Stats().Batches
	}

	const n = 20
	pending := make([]ledger.TransactionID, n)
	var calls []func(*batcher.Batcher)
	for i := range n {
		calls = append(calls, func(b *batcher.Batcher) {
			holding, _ := ledger.NewAccountID(0)
			out, err := b.Reserve(ctx, newStep(fmt.Sprint("r", i)), store.Reservation{From: acc, To: bob, Amount: 10, Asset: "USD", HoldingID: holding, ClearingID: holding})
			if err != nil || out.Status != 201 {
				t.Errorf("reserve %d: %v %+v", i, err, out)
			}
			pending[i] = out.Transaction
		})
	}
	if batches := queued(calls); batches != 1 {
		t.Errorf("%d reservations took %d batches, want 1", n, batches)
	}

	var codes sync.Map
	calls = nil
	for i := 1; i < n; i++ {
		calls = append(calls, func(b *batcher.Batcher) {
			out, err := b.Resolve(ctx, newStep(fmt.Sprint("p", i)), pending[i], ledger.ResolvePost, 0)
			if err != nil || out.Status != 201 {
				t.Errorf("post %d: %v %+v", i, err, out)
			}
		})
	}
	for _, how := range []ledger.Resolution{ledger.ResolvePost, ledger.ResolveVoid} {
		calls = append(calls, func(b *batcher.Batcher) {
			out, err := b.Resolve(ctx, newStep("race-"+string(how)), pending[0], how, 0)
			if err != nil {
				t.Errorf("%s: %v", how, err)
			}
			codes.Store(how, out)
		})
	}
	// Transfer 0's first resolution joins the others' batch; its second, the next batch.
	if batches := queued(calls); batches != 2 {
		t.Errorf("resolutions took %d batches, want 2", batches)
	}
	post, _ := codes.Load(ledger.ResolvePost)
	void, _ := codes.Load(ledger.ResolveVoid)
	won, lost := post.(ledger.Outcome), void.(ledger.Outcome)
	want := int64(n * 10)
	if won.Status != 201 {
		won, lost, want = lost, won, (n-1)*10
	}
	if won.Status != 201 || lost.Status != http.StatusConflict {
		t.Errorf("two resolutions of one transfer: %d %s and %d %s", won.Status, won.Body, lost.Status, lost.Body)
	}
	if b, err := st.Balance(ctx, bob); err != nil || b.Available != want {
		t.Errorf("bob: %+v %v", b, err)
	}
}
