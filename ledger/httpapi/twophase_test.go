package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
)

func TestPendingTransfersOverHTTP(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	alice, bob := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("fund", "external", alice, "100.00", "USD"))

	reserve := func(key, amount, extra string) response {
		return c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":%q,"asset":"USD","pending":true%s}`,
			alice, bob, amount, extra), "Idempotency-Key", key)
	}
	made := c.must(201, reserve("hold-1", "30.00", `,"metadata":{"order":"o-1"}`))
	id := made.field("id")
	if made.field("state") != "pending" || made.field("amount") != "30.00" || made.field("expires_at") != "" {
		t.Errorf("pending transfer: %s", made.body)
	}
	var bal struct{ Balance, Available, PendingDebits, PendingCredits string }
	decode := func(r response, v any) {
		t.Helper()
		d := json.NewDecoder(bytes.NewReader(r.body))
		if err := d.Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	balance := func(id string) (b struct{ Balance, Available, PendingDebits, PendingCredits string }) {
		t.Helper()
		var raw map[string]any
		decode(c.must(200, c.do("GET", "/v1/accounts/"+id+"/balance", "")), &raw)
		b.Balance, b.Available = raw["balance"].(string), raw["available"].(string)
		b.PendingDebits, b.PendingCredits = raw["pending_debits"].(string), raw["pending_credits"].(string)
		return b
	}
	if bal = balance(alice); bal.Balance != "100.00" || bal.Available != "70.00" || bal.PendingDebits != "30.00" || bal.PendingCredits != "0.00" {
		t.Errorf("alice while pending: %+v", bal)
	}
	if bal = balance(bob); bal.Balance != "0.00" || bal.PendingCredits != "30.00" {
		t.Errorf("bob while pending: %+v", bal)
	}
	// A replay answers the same bytes; the same key for another request is refused.
	if again := c.must(201, reserve("hold-1", "30.00", `,"metadata":{"order":"o-1"}`)); !bytes.Equal(again.body, made.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay: %s", again.body)
	}
	if r := reserve("hold-1", "31.00", ""); r.code() != ledger.CodeIdempotencyKeyReused {
		t.Errorf("key reused: %d %s", r.status, r.body)
	}
	if r := reserve("hold-2", "70.01", ""); r.code() != ledger.CodeInsufficientFunds {
		t.Errorf("reserving beyond available: %d %s", r.status, r.body)
	}
	if r := reserve("hold-3", "1.00", `,"timeout_seconds":-1`); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("negative timeout: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1.00","asset":"USD","timeout_seconds":5}`, alice, bob), "Idempotency-Key", "t"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("a timeout without pending: %d %s", r.status, r.body)
	}

	// Post part of it: the rest goes back.
	if r := c.do("POST", "/v1/transfers/"+id+"/post", `{"amount":"30.01"}`, "Idempotency-Key", "post-0"); r.code() != ledger.CodeAmountExceedsPending {
		t.Errorf("posting more than held: %d %s", r.status, r.body)
	}
	posted := c.must(201, c.do("POST", "/v1/transfers/"+id+"/post", `{"amount":"20.00"}`, "Idempotency-Key", "post-1"))
	if posted.field("state") != "posted" || posted.field("posted_amount") != "20.00" || posted.field("resolved_by") == "" {
		t.Errorf("posted: %s", posted.body)
	}
	if got := c.must(200, c.do("GET", "/v1/transfers/"+id, "")); !bytes.Equal(got.body, posted.body) {
		t.Errorf("GET after posting:\n%s\nwant\n%s", got.body, posted.body)
	}
	if again := c.must(201, c.do("POST", "/v1/transfers/"+id+"/post", `{"amount":"20.00"}`, "Idempotency-Key", "post-1")); !bytes.Equal(again.body, posted.body) {
		t.Errorf("replayed post: %s", again.body)
	}
	if r := c.do("POST", "/v1/transfers/"+id+"/void", "", "Idempotency-Key", "void-1"); r.code() != ledger.CodeTransferResolved {
		t.Errorf("void after post: %d %s", r.status, r.body)
	}
	if bal = balance(alice); bal.Balance != "80.00" || bal.Available != "80.00" || bal.PendingDebits != "0.00" {
		t.Errorf("alice after posting 20 of 30: %+v", bal)
	}
	if c.balance(bob) != "20.00" {
		t.Errorf("bob after posting: %s", c.balance(bob))
	}

	// Void, with an empty body.
	other := c.must(201, reserve("hold-4", "5.00", "")).field("id")
	if r := c.must(201, c.do("POST", "/v1/transfers/"+other+"/void", "", "Idempotency-Key", "void-2")); r.field("state") != "voided" {
		t.Errorf("voided: %s", r.body)
	}
	if r := c.do("POST", "/v1/transfers/"+other+"/void", `{"amount":"1.00"}`, "Idempotency-Key", "void-3"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("an amount on a void: %d %s", r.status, r.body)
	}
	if r := c.do("GET", "/v1/transfers/"+c.must(201, c.transfer("plain", alice, bob, "1.00", "USD")).field("id"), ""); r.code() != ledger.CodeTransferNotFound {
		t.Errorf("GET of a plain transfer as pending: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/transfers/"+other+"/post", "", ""); r.code() != ledger.CodeIdempotencyKeyRequired {
		t.Errorf("post without a key: %d %s", r.status, r.body)
	}
}

// TestPendingTransferTimesOut: the service's sweep voids a transfer whose timeout passed.
func TestPendingTransferTimesOut(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	alice, bob := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("fund", "external", alice, "10.00", "USD"))
	r := c.must(201, c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"4.00","asset":"USD","pending":true,"timeout_seconds":1}`,
		alice, bob), "Idempotency-Key", "k"))
	if r.field("expires_at") == "" {
		t.Fatalf("no expiry: %s", r.body)
	}
	id, _ := ledger.ParseTransactionID(r.field("id"))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		// The sweep as the service runs it each second.
		if _, err := c.set.ExpireDue(t.Context(), 100); err != nil {
			t.Fatal(err)
		}
		pt, err := c.set.PendingTransfer(t.Context(), id)
		if err != nil {
			t.Fatal(err)
		}
		if pt.State == ledger.StateExpired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s two minutes after its timeout", pt.State)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if c.balance(alice) != "10.00" {
		t.Errorf("alice after the expiry: %s", c.balance(alice))
	}
	if r := c.do("POST", "/v1/transfers/"+id.String()+"/post", "", "Idempotency-Key", "late"); r.code() != ledger.CodeTransferResolved {
		t.Errorf("post after expiry: %d %s", r.status, r.body)
	}
}

func TestReversalOverHTTP(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	alice, bob := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("fund", "external", alice, "10.00", "USD"))
	paid := c.must(201, c.transfer("pay", alice, bob, "3.00", "USD")).field("id")
	rev := c.must(201, c.do("POST", "/v1/transactions/"+paid+"/reverse", `{"metadata":{"reason":"refund"}}`, "Idempotency-Key", "r1"))
	if rev.field("reverses") != paid {
		t.Errorf("reversal: %s", rev.body)
	}
	if got := c.must(200, c.do("GET", "/v1/transactions/"+rev.field("id"), "")); !bytes.Equal(got.body, rev.body) {
		t.Errorf("GET of the reversal:\n%s\nwant\n%s", got.body, rev.body)
	}
	if c.balance(alice) != "10.00" || c.balance(bob) != "0.00" {
		t.Errorf("after the reversal: alice %s bob %s", c.balance(alice), c.balance(bob))
	}
	if r := c.do("POST", "/v1/transactions/"+paid+"/reverse", "", "Idempotency-Key", "r2"); r.code() != ledger.CodeAlreadyReversed {
		t.Errorf("second reversal: %d %s", r.status, r.body)
	}
	if again := c.must(201, c.do("POST", "/v1/transactions/"+paid+"/reverse", `{"metadata":{"reason":"refund"}}`, "Idempotency-Key", "r1")); !bytes.Equal(again.body, rev.body) {
		t.Errorf("replayed reversal: %s", again.body)
	}
}

// TestPlacementAcrossScaling: from one shard to three, an owner's new accounts join its
// old ones, new owners spread over every shard, new ones included, and a caller may name
// a shard.
func TestPlacementAcrossScaling(t *testing.T) {
	shard0 := pgtest.NewShardDB(t, 0)
	one := newClientOver(t, []*pgtest.DB{shard0}, nil)
	one.asset("USD", 2)
	var before []string
	for i := range 12 {
		before = append(before, one.account(fmt.Sprint("old-", i), "USD"))
	}
	three := newClientOver(t, []*pgtest.DB{shard0, pgtest.NewShardDB(t, 1), pgtest.NewShardDB(t, 2)}, nil)
	if err := three.set.SyncAssets(t.Context()); err != nil {
		t.Fatal(err)
	}
	shardOf := func(id string) int {
		t.Helper()
		acc, err := ledger.ParseAccountID(id)
		if err != nil {
			t.Fatal(err)
		}
		return acc.Shard()
	}
	for i := range before {
		if s := shardOf(three.account(fmt.Sprint("old-", i), "USD")); s != 0 {
			t.Errorf("old-%d's new account went to shard %d, its others are on 0", i, s)
		}
	}
	spread := map[int]int{}
	for i := range 60 {
		owner := fmt.Sprint("new-", i)
		first := shardOf(three.account(owner, "USD"))
		spread[first]++
		if again := shardOf(three.account(owner, "USD")); again != first {
			t.Errorf("%s's accounts on shards %d and %d", owner, first, again)
		}
	}
	if len(spread) != 3 {
		t.Errorf("new owners over the shards: %v", spread)
	}
	named := three.must(201, three.do("POST", "/v1/accounts", `{"owner":"old-0","asset":"USD","shard":2}`)).field("id")
	if shardOf(named) != 2 {
		t.Errorf("named shard 2, got %d", shardOf(named))
	}
	if r := three.do("POST", "/v1/accounts", `{"owner":"x","asset":"USD","shard":3}`); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("a shard that does not exist: %d %s", r.status, r.body)
	}
	// An owner split over shards moves money between its accounts all the same.
	a, b := before[0], named
	three.must(201, three.transfer("fund", "external", a, "10.00", "USD"))
	if r := three.must(201, three.transfer("across", a, b, "4.00", "USD")); r.field("state") != "posted" {
		t.Errorf("between the owner's shards: %s", r.body)
	}
}
