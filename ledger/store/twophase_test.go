package store_test

import (
	"context"
	"crypto/sha256"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// step is a fresh two-phase step under key, made at the given time.
func step(t testing.TB, key string, at time.Time) store.Step {
	t.Helper()
	id, err := ledger.NewTransactionID(0)
	if err != nil {
		t.Fatal(err)
	}
	return store.Step{Caller: "test", Key: key, Hash: sha256.Sum256([]byte(key)), ID: id, CreatedAt: at.UTC().Truncate(time.Microsecond)}
}

func (f *fixture) reserve(key string, from, to ledger.AccountID, amount int64, expires time.Time) ledger.Outcome {
	f.t.Helper()
	out, err := f.store.Reserve(context.Background(), step(f.t, key, time.Now()), reservation(from, to, amount, expires))
	if err != nil {
		f.t.Fatalf("reserve %s: %v", key, err)
	}
	return out
}

func reservation(from, to ledger.AccountID, amount int64, expires time.Time) store.Reservation {
	holding, _ := ledger.NewAccountID(0)
	clearing, _ := ledger.NewAccountID(0)
	return store.Reservation{From: from, To: to, Amount: amount, Asset: "USD", Expires: expires, HoldingID: holding, ClearingID: clearing}
}

func (f *fixture) resolve(key string, pending ledger.TransactionID, how ledger.Resolution, amount int64) ledger.Outcome {
	f.t.Helper()
	out, err := f.store.Resolve(context.Background(), step(f.t, key, time.Now()), pending, how, amount)
	if err != nil {
		f.t.Fatalf("resolve %s: %v", key, err)
	}
	return out
}

func (f *fixture) balances(id ledger.AccountID) ledger.Balance {
	f.t.Helper()
	b, err := f.store.Balance(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return b
}

func (f *fixture) pending(id ledger.TransactionID) ledger.PendingTransfer {
	f.t.Helper()
	p, err := f.store.PendingTransfer(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return p
}

func wantCode(t *testing.T, what string, out ledger.Outcome, want ledger.Code) {
	t.Helper()
	if got := problemCode(t, out); got != want {
		t.Errorf("%s: %d %s, want %q", what, out.Status, out.Body, want)
	}
}

func TestPendingTransferReservesThenPostsInPart(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))

	out := f.reserve("r1", alice, bob, 300, time.Time{})
	if out.Status != 201 || out.Transaction == (ledger.TransactionID{}) {
		t.Fatalf("reserve: %d %s", out.Status, out.Body)
	}
	id := out.Transaction
	if b := f.balances(alice); b.Available != 700 || b.Reserved != 300 || b.Posted() != 1000 || b.Incoming != 0 {
		t.Errorf("alice after reserving: %+v", b)
	}
	if b := f.balances(bob); b.Available != 0 || b.Incoming != 300 || b.Posted() != 0 {
		t.Errorf("bob after reserving: %+v", b)
	}
	if p := f.pending(id); p.State != ledger.StatePending || p.Amount != 300 || p.From != alice || p.To != bob {
		t.Errorf("pending transfer: %+v", p)
	}
	// What is reserved cannot be spent twice.
	wantCode(t, "spend the reserved money", f.post("spend", usd(alice, bob, 701)), ledger.CodeInsufficientFunds)
	wantCode(t, "reserve it again", f.reserve("r2", alice, bob, 701, time.Time{}), ledger.CodeInsufficientFunds)

	wantCode(t, "post more than reserved", f.resolve("p0", id, ledger.ResolvePost, 301), ledger.CodeAmountExceedsPending)
	posted := f.resolve("p1", id, ledger.ResolvePost, 200)
	if posted.Status != 201 {
		t.Fatalf("post: %d %s", posted.Status, posted.Body)
	}
	if b := f.balances(alice); b.Available != 800 || b.Reserved != 0 {
		t.Errorf("alice after posting 200 of 300: %+v", b)
	}
	if b := f.balances(bob); b.Available != 200 || b.Incoming != 0 {
		t.Errorf("bob after posting: %+v", b)
	}
	p := f.pending(id)
	if p.State != ledger.StatePosted || p.PostedAmount != 200 || p.ResolvedBy != posted.Transaction || p.ResolvedAt.IsZero() {
		t.Errorf("posted transfer: %+v", p)
	}
	// Resolved once: a second post, a void after the post; a replay answers as before.
	wantCode(t, "post again", f.resolve("p2", id, ledger.ResolvePost, 0), ledger.CodeTransferResolved)
	wantCode(t, "void after post", f.resolve("v1", id, ledger.ResolveVoid, 0), ledger.CodeTransferResolved)
	replay, err := f.store.Resolve(context.Background(), step(t, "p1", time.Now()), id, ledger.ResolvePost, 200)
	if err != nil || replay.Status != 201 || !replay.Replayed || replay.Transaction != posted.Transaction {
		t.Errorf("replay of the post: %v %+v", err, replay)
	}
	other := step(t, "p1", time.Now())
	other.Hash = sha256.Sum256([]byte("something else"))
	if out, err := f.store.Resolve(context.Background(), other, id, ledger.ResolvePost, 0); err != nil || problemCode(t, out) != ledger.CodeIdempotencyKeyReused || out.Replayed {
		t.Errorf("key reused for another request: %v %+v", err, out)
	}
	f.verify()
}

func TestPendingTransferVoidsAndExpires(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))

	voided := f.reserve("r1", alice, bob, 400, time.Time{}).Transaction
	if out := f.resolve("v1", voided, ledger.ResolveVoid, 0); out.Status != 201 {
		t.Fatalf("void: %d %s", out.Status, out.Body)
	}
	if b := f.balances(alice); b.Available != 1000 || b.Reserved != 0 {
		t.Errorf("alice after the void: %+v", b)
	}
	wantCode(t, "post after void", f.resolve("p1", voided, ledger.ResolvePost, 0), ledger.CodeTransferResolved)

	// Expiry: a transfer whose time is up can no longer be posted, and the sweep voids it.
	made := time.Now()
	expires := made.Add(time.Second)
	due := f.reserve("r2", alice, bob, 250, expires).Transaction
	if ids, err := f.store.ExpiredTransfers(context.Background(), made, 10); err != nil || len(ids) != 0 {
		t.Errorf("due before its time: %v %v", ids, err)
	}
	late := expires.Add(time.Millisecond)
	if out, err := f.store.Resolve(context.Background(), step(t, "p2", late), due, ledger.ResolvePost, 0); err != nil || problemCode(t, out) != ledger.CodeTransferExpired {
		t.Errorf("post after expiry: %v %d %s", err, out.Status, out.Body)
	}
	ids, err := f.store.ExpiredTransfers(context.Background(), late, 10)
	if err != nil || len(ids) != 1 || ids[0] != due {
		t.Fatalf("due: %v %v", ids, err)
	}
	if out, err := f.store.Resolve(context.Background(), step(t, "e1", late), due, ledger.ResolveExpire, 0); err != nil || out.Status != 201 {
		t.Fatalf("expire: %v %+v", err, out)
	}
	if p := f.pending(due); p.State != ledger.StateExpired || p.PostedAmount != 0 {
		t.Errorf("expired transfer: %+v", p)
	}
	if b := f.balances(alice); b.Available != 1000 || b.Reserved != 0 {
		t.Errorf("alice after the expiry: %+v", b)
	}
	if ids, _ := f.store.ExpiredTransfers(context.Background(), late, 10); len(ids) != 0 {
		t.Errorf("still due after expiring: %v", ids)
	}
	wantCode(t, "unknown transfer", f.resolve("x", ledger.TransactionID(f.external), ledger.ResolveVoid, 0), ledger.CodeTransferNotFound)
	f.verify()
}

func TestPendingTransferRefusals(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob, frozen := f.account("alice", 0), f.account("bob", 0), f.account("frozen", 0)
	f.post("dep", usd(f.external, alice, 1000))
	if _, err := f.store.SetStatus(context.Background(), frozen, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	missing, _ := ledger.NewAccountID(0)
	wantCode(t, "to a frozen account", f.reserve("a", alice, frozen, 1, time.Time{}), ledger.CodeAccountFrozen)
	wantCode(t, "to a missing account", f.reserve("b", alice, missing, 1, time.Time{}), ledger.CodeAccountNotFound)
	wantCode(t, "to itself", f.reserve("c", alice, alice, 1, time.Time{}), ledger.CodeSameAccount)
	wantCode(t, "from a frozen account", f.reserve("d", frozen, bob, 1, time.Time{}), ledger.CodeAccountFrozen)
	// A refusal is recorded under its key: the replay answers it again.
	if again := f.reserve("a", alice, frozen, 1, time.Time{}); problemCode(t, again) != ledger.CodeAccountFrozen || !again.Replayed {
		t.Errorf("replayed refusal: %+v", again)
	}

	// An account with a pending transfer either way cannot close: its post or void
	// could not complete.
	id := f.reserve("r", alice, bob, 1000, time.Time{}).Transaction
	for _, acc := range []ledger.AccountID{alice, bob} {
		if _, err := f.store.SetStatus(context.Background(), acc, ledger.StatusClosed); ledger.CodeOf(err) != ledger.CodeAccountHasPending {
			t.Errorf("closing %s with a transfer pending: %v", acc, err)
		}
	}
	// The holding account is moved by reserving and resolving only.
	var holding [16]byte
	if err := f.db.SuperConn(t).QueryRow(context.Background(), "SELECT id FROM tally.accounts WHERE kind = 'holding'").Scan(&holding); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.PostTransaction(context.Background(), request(t, "steal", usd(ledger.AccountID(holding), bob, 1))); err == nil || !strings.Contains(err.Error(), "holds pending transfers") {
		t.Errorf("a transfer out of the holding account: %v", err)
	}
	if _, err := f.store.SetStatus(context.Background(), ledger.AccountID(holding), ledger.StatusFrozen); ledger.CodeOf(err) != ledger.CodeExternalAccountReadOnly {
		t.Errorf("freezing the holding account: %v", err)
	}
	f.resolve("v", id, ledger.ResolveVoid, 0)
	if _, err := f.store.SetStatus(context.Background(), bob, ledger.StatusClosed); err != nil {
		t.Errorf("closing bob once nothing is pending: %v", err)
	}
	f.verify()
}

// TestDatabaseResolvesOnce: the rules hold in the database itself, whatever a client
// of it does: a resolved transfer never changes again, and never posts more than it held.
func TestDatabaseResolvesOnce(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))
	open := f.reserve("r1", alice, bob, 100, time.Time{}).Transaction
	done := f.reserve("r2", alice, bob, 100, time.Time{}).Transaction
	f.resolve("p", done, ledger.ResolvePost, 0)
	conn := f.db.SuperConn(t)
	for _, c := range []struct {
		what string
		sql  string
		id   ledger.TransactionID
	}{
		{"void a posted transfer", "UPDATE tally.pending_transfers SET state = 'voided', posted_amount = NULL WHERE id = $1", done},
		{"post above the amount", "UPDATE tally.pending_transfers SET state = 'posted', posted_amount = 101, resolved_by = id, resolved_at = now() WHERE id = $1", open},
		{"change the amount", "UPDATE tally.pending_transfers SET amount = 50 WHERE id = $1", open},
		{"resolve without a transaction", "UPDATE tally.pending_transfers SET state = 'voided' WHERE id = $1", open},
		{"forget a transfer", "DELETE FROM tally.pending_transfers WHERE id = $1", open},
	} {
		if _, err := conn.Exec(context.Background(), c.sql, [16]byte(c.id)); err == nil {
			t.Errorf("%s: the database allowed it", c.what)
		}
	}
	f.verify()
}

// TestConcurrentResolutionsOneWins: many resolutions of one transfer at once, and many
// reservations against one balance: exactly one resolution wins, and reservations never
// reserve more than the account holds.
func TestConcurrentResolutionsOneWins(t *testing.T) {
	f := newFixture(t, 24)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))
	id := f.reserve("r", alice, bob, 500, time.Time{}).Transaction

	var wg sync.WaitGroup
	outs := make([]ledger.Outcome, 16)
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			how := []ledger.Resolution{ledger.ResolvePost, ledger.ResolveVoid}[i%2]
			out, err := f.store.Resolve(context.Background(), step(t, "k"+string(rune('a'+i)), time.Now()), id, how, 0)
			if err != nil {
				t.Error(err)
			}
			outs[i] = out
		}()
	}
	wg.Wait()
	won := 0
	for _, o := range outs {
		switch {
		case o.Status == 201:
			won++
		case problemCode(t, o) != ledger.CodeTransferResolved:
			t.Errorf("a losing resolution: %d %s", o.Status, o.Body)
		}
	}
	if won != 1 {
		t.Errorf("%d resolutions won", won)
	}

	// 20 reservations of 100 against the 500 or 1000 left: never more than it holds.
	avail := f.balances(alice).Available
	var mu sync.Mutex
	reserved := 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := f.store.Reserve(context.Background(), step(t, "c"+string(rune('a'+i)), time.Now()), reservation(alice, bob, 100, time.Time{}))
			if err != nil {
				t.Error(err)
				return
			}
			if out.Status == 201 {
				mu.Lock()
				reserved++
				mu.Unlock()
			} else if problemCode(t, out) != ledger.CodeInsufficientFunds {
				t.Errorf("reservation: %d %s", out.Status, out.Body)
			}
		}()
	}
	wg.Wait()
	if want := int(avail / 100); reserved != want {
		t.Errorf("%d reservations of 100 against %d available", reserved, avail)
	}
	if b := f.balances(alice); b.Available != avail-int64(reserved)*100 || b.Reserved != int64(reserved)*100 {
		t.Errorf("alice after %d reservations: %+v", reserved, b)
	}
	f.verify()
}

func TestReversal(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))
	paid := f.post("pay", usd(alice, bob, 300), usd(alice, bob, 50))
	var original ledger.TransactionID
	if err := f.db.SuperConn(t).QueryRow(context.Background(),
		"SELECT transaction_id FROM tally.idempotency_keys WHERE key = 'pay'").Scan(&original); err != nil || paid.Status != 201 {
		t.Fatalf("the payment: %v %d", err, paid.Status)
	}
	reverse := func(key string, id ledger.TransactionID) ledger.Outcome {
		out, err := f.store.Reverse(context.Background(), step(t, key, time.Now()), id)
		if err != nil {
			t.Fatalf("reverse: %v", err)
		}
		return out
	}
	out := reverse("rev", original)
	if out.Status != 201 {
		t.Fatalf("reversal: %d %s", out.Status, out.Body)
	}
	if f.balance(alice) != 1000 || f.balance(bob) != 0 {
		t.Errorf("after the reversal alice %d bob %d", f.balance(alice), f.balance(bob))
	}
	tx, err := f.store.Transaction(context.Background(), out.Transaction)
	if err != nil || tx.Reverses != original || len(tx.Postings) != 2 || tx.Postings[0] != usd(bob, alice, 300) {
		t.Errorf("the reversal: %v %+v", err, tx)
	}
	wantCode(t, "reverse again", reverse("rev2", original), ledger.CodeAlreadyReversed)
	wantCode(t, "reverse nothing", reverse("rev3", ledger.TransactionID(alice)), ledger.CodeTransactionNotFound)
	held := f.reserve("r", alice, bob, 10, time.Time{}).Transaction
	wantCode(t, "reverse a reservation", reverse("rev4", held), ledger.CodeNotReversible)
	// A reversal is a transaction like any other: it needs the funds.
	f.post("again", usd(alice, bob, 500))
	spent := f.post("spent", usd(bob, f.external, 500))
	if spent.Status != 201 {
		t.Fatalf("bob spends: %d", spent.Status)
	}
	var again ledger.TransactionID
	if err := f.db.SuperConn(t).QueryRow(context.Background(), "SELECT transaction_id FROM tally.idempotency_keys WHERE key = 'again'").Scan(&again); err != nil {
		t.Fatal(err)
	}
	wantCode(t, "reverse what was spent", reverse("rev5", again), ledger.CodeInsufficientFunds)
	f.verify()
}
