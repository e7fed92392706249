package store_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// fixture is a fresh shard-0 database with USD registered.
type fixture struct {
	t        testing.TB
	db       *pgtest.DB
	store    *store.Store
	external ledger.AccountID
}

func newFixture(t testing.TB, maxConns int32) *fixture {
	t.Helper()
	db := pgtest.NewDB(t)
	s := store.New(db.AppPool(t, maxConns))
	extID, err := ledger.NewAccountID(0)
	if err != nil {
		t.Fatal(err)
	}
	_, ext, created, err := s.RegisterAsset(context.Background(), "USD", 2, extID)
	if err != nil || !created || ext != extID {
		t.Fatalf("register USD: %v created=%v", err, created)
	}
	return &fixture{t: t, db: db, store: s, external: ext}
}

// posterModes are the two ways transactions reach the store: one database transaction
// per request, and coalesced into batches.
var posterModes = []string{"direct", "batched"}

func (f *fixture) poster(mode string) shardset.Front {
	f.t.Helper()
	if mode == "direct" {
		return f.store
	}
	b, err := batcher.New(f.store, batcher.Config{})
	if err != nil {
		f.t.Fatal(err)
	}
	b.Start()
	f.t.Cleanup(b.Stop)
	return b
}

func (f *fixture) account(owner string, floor int64) ledger.AccountID {
	f.t.Helper()
	id, err := ledger.NewAccountID(0)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := f.store.CreateAccount(context.Background(), ledger.Account{ID: id, Owner: owner, Asset: "USD", BalanceFloor: floor}); err != nil {
		f.t.Fatalf("create account: %v", err)
	}
	return id
}

// post submits postings under a fresh idempotency key and returns the outcome.
func (f *fixture) post(key string, postings ...ledger.Posting) ledger.Outcome {
	f.t.Helper()
	out, err := f.store.PostTransaction(context.Background(), request(f.t, key, postings...))
	if err != nil {
		f.t.Fatalf("post %s: %v", key, err)
	}
	return out
}

func request(t testing.TB, key string, postings ...ledger.Posting) store.Request {
	t.Helper()
	id, err := ledger.NewTransactionID(0)
	if err != nil {
		t.Fatal(err)
	}
	return store.Request{
		Caller: "test", Key: key, Hash: sha256.Sum256([]byte(fmt.Sprint(postings))),
		Transaction: ledger.Transaction{ID: id, Postings: postings, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)},
		Body:        []byte(`{"id":"` + id.String() + `"}`),
	}
}

func usd(from, to ledger.AccountID, amount int64) ledger.Posting {
	return ledger.Posting{From: from, To: to, Amount: amount, Asset: "USD"}
}

func (f *fixture) balance(id ledger.AccountID) int64 {
	f.t.Helper()
	b, err := f.store.Balance(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return b.Posted()
}

func (f *fixture) verify() {
	f.t.Helper()
	violations, err := f.store.Verify(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	for _, v := range violations {
		f.t.Errorf("invariant broken: %s", v)
	}
}

func problemCode(t *testing.T, out ledger.Outcome) ledger.Code {
	t.Helper()
	if out.Status == 201 {
		return ""
	}
	var p struct{ Code ledger.Code }
	if err := jsonUnmarshal(out.Body, &p); err != nil {
		t.Fatalf("problem body %q: %v", out.Body, err)
	}
	return p.Code
}

func TestTransferMovesMoney(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	if out := f.post("dep", usd(f.external, alice, 10000)); out.Status != 201 {
		t.Fatalf("deposit: %d %s", out.Status, out.Body)
	}
	if out := f.post("t1", usd(alice, bob, 1234)); out.Status != 201 {
		t.Fatalf("transfer: %d %s", out.Status, out.Body)
	}
	if got := f.balance(alice); got != 10000-1234 {
		t.Errorf("alice = %d", got)
	}
	if got := f.balance(bob); got != 1234 {
		t.Errorf("bob = %d", got)
	}
	if got := f.balance(f.external); got != -10000 {
		t.Errorf("external = %d", got)
	}
	entries, err := f.store.Entries(context.Background(), alice, 0, 10)
	if err != nil || len(entries) != 2 {
		t.Fatalf("entries: %v %d", err, len(entries))
	}
	if entries[0].Amount != -1234 || entries[0].BalanceAfter != 8766 || entries[1].Amount != 10000 {
		t.Errorf("entries newest first with running balance: %+v", entries)
	}
	f.verify()
}

func TestRejections(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob, carol := f.account("alice", 0), f.account("bob", 0), f.account("carol", -500)
	f.post("dep", usd(f.external, alice, 1000))
	missing, _ := ledger.NewAccountID(0)
	eurExt, _ := ledger.NewAccountID(0)
	if _, _, _, err := f.store.RegisterAsset(context.Background(), "EUR", 2, eurExt); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.SetStatus(context.Background(), bob, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	closed := f.account("dave", 0)
	if _, err := f.store.SetStatus(context.Background(), closed, ledger.StatusClosed); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		postings []ledger.Posting
		want     ledger.Code
	}{
		{"insufficient funds", []ledger.Posting{usd(alice, carol, 1001)}, ledger.CodeInsufficientFunds},
		{"overdraft floor", []ledger.Posting{usd(carol, alice, 501)}, ledger.CodeInsufficientFunds},
		{"net of postings overdraws", []ledger.Posting{usd(alice, carol, 800), usd(alice, carol, 300)}, ledger.CodeInsufficientFunds},
		{"frozen destination", []ledger.Posting{usd(alice, bob, 1)}, ledger.CodeAccountFrozen},
		{"frozen source", []ledger.Posting{usd(bob, alice, 1)}, ledger.CodeAccountFrozen},
		{"closed", []ledger.Posting{usd(alice, closed, 1)}, ledger.CodeAccountClosed},
		{"missing", []ledger.Posting{usd(alice, missing, 1)}, ledger.CodeAccountNotFound},
		{"same account", []ledger.Posting{usd(alice, alice, 1)}, ledger.CodeSameAccount},
		{"asset mismatch", []ledger.Posting{{From: alice, To: carol, Amount: 1, Asset: "EUR"}}, ledger.CodeAssetMismatch},
		{"asset mismatch with external", []ledger.Posting{{From: eurExt, To: carol, Amount: 1, Asset: "EUR"}}, ledger.CodeAssetMismatch},
		{"one bad posting fails all", []ledger.Posting{usd(alice, carol, 10), usd(carol, missing, 1)}, ledger.CodeAccountNotFound},
	}
	for i, tt := range tests {
		out := f.post(fmt.Sprintf("k%d", i), tt.postings...)
		if got := problemCode(t, out); got != tt.want {
			t.Errorf("%s: got %q (%d %s), want %q", tt.name, got, out.Status, out.Body, tt.want)
		}
		if out.Status != tt.want.Status() {
			t.Errorf("%s: status %d, want %d", tt.name, out.Status, tt.want.Status())
		}
	}
	if got := f.balance(alice); got != 1000 {
		t.Errorf("rejections moved money: alice = %d", got)
	}
	if out := f.post("ok", usd(carol, alice, 500)); out.Status != 201 {
		t.Errorf("overdraft down to floor: %d %s", out.Status, out.Body)
	}
	f.verify()
}

func TestRejectionIsRecordedForReplay(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	req := request(t, "k", usd(alice, bob, 5))
	first, err := f.store.PostTransaction(context.Background(), req)
	if err != nil || first.Status != 422 {
		t.Fatalf("first: %v %d", err, first.Status)
	}
	f.post("dep", usd(f.external, alice, 100))
	again, err := f.store.PostTransaction(context.Background(), req)
	if err != nil || !again.Replayed || again.Status != 422 || string(again.Body) != string(first.Body) {
		t.Fatalf("replay of a rejection must return it unchanged: %v %+v", err, again)
	}
}

func TestAccountStatusLifecycle(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	a := f.account("alice", 0)
	f.post("dep", usd(f.external, a, 100))
	steps := []struct {
		to   ledger.Status
		want ledger.Code
	}{
		{ledger.StatusFrozen, ""},
		{ledger.StatusFrozen, ""},
		{ledger.StatusActive, ""},
		{ledger.StatusClosed, ledger.CodeAccountNotEmpty},
	}
	for _, s := range steps {
		_, err := f.store.SetStatus(ctx, a, s.to)
		if got := codeOrEmpty(err); got != s.want {
			t.Fatalf("-> %s: got %q (%v), want %q", s.to, got, err, s.want)
		}
	}
	b := f.account("bob", 0)
	f.post("out", usd(a, b, 100))
	if acc, err := f.store.SetStatus(ctx, a, ledger.StatusClosed); err != nil || acc.Status != ledger.StatusClosed {
		t.Fatalf("close empty account: %v %v", err, acc.Status)
	}
	if _, err := f.store.SetStatus(ctx, a, ledger.StatusActive); codeOrEmpty(err) != ledger.CodeAccountClosed {
		t.Fatalf("reopen closed: %v", err)
	}
	if _, err := f.store.SetStatus(ctx, f.external, ledger.StatusFrozen); codeOrEmpty(err) != ledger.CodeExternalAccountReadOnly {
		t.Fatalf("freeze external: %v", err)
	}
	missing, _ := ledger.NewAccountID(0)
	if _, err := f.store.SetStatus(ctx, missing, ledger.StatusFrozen); codeOrEmpty(err) != ledger.CodeAccountNotFound {
		t.Fatalf("freeze missing: %v", err)
	}
}

func codeOrEmpty(err error) ledger.Code {
	if err == nil {
		return ""
	}
	return ledger.CodeOf(err)
}
