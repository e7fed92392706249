package store_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

func (f *fixture) batch(reqs ...store.Request) []ledger.Outcome {
	f.t.Helper()
	outs, err := f.store.PostBatch(context.Background(), reqs)
	if err != nil {
		f.t.Fatalf("batch: %v", err)
	}
	return outs
}

func statuses(outs []ledger.Outcome) string {
	s := ""
	for _, o := range outs {
		s += fmt.Sprintf("%d", o.Status)
		if o.Replayed {
			s += "r"
		}
		s += " "
	}
	return s
}

// A rejection in the middle of a batch fails alone; its neighbours apply.
func TestBatchRejectionFailsAlone(t *testing.T) {
	f := newFixture(t, 4)
	a, b, c, d := f.account("a", 0), f.account("b", 0), f.account("c", 0), f.account("d", 0)
	f.post("dep", usd(f.external, a, 100))
	frozen := f.account("e", 0)
	if _, err := f.store.SetStatus(context.Background(), frozen, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	outs := f.batch(
		request(t, "1", usd(a, b, 10)),
		request(t, "2", usd(c, d, 1)), // c has nothing
		request(t, "3", usd(a, frozen, 1)),
		request(t, "4", usd(a, b, 10)),
	)
	if got := statuses(outs); got != "201 422 422 201 " {
		t.Fatalf("outcomes %s", got)
	}
	if problemCode(t, outs[1]) != ledger.CodeInsufficientFunds || problemCode(t, outs[2]) != ledger.CodeAccountFrozen {
		t.Errorf("codes %s %s", outs[1].Body, outs[2].Body)
	}
	if f.balance(a) != 80 || f.balance(b) != 20 || f.balance(c) != 0 {
		t.Errorf("balances a=%d b=%d c=%d", f.balance(a), f.balance(b), f.balance(c))
	}
	f.verify()
}

// One hot account many times in one batch: each transfer is judged against the balance
// the transfers before it left, exactly as if they ran one by one.
func TestBatchHotAccountInArrivalOrder(t *testing.T) {
	f := newFixture(t, 4)
	hot, b := f.account("hot", 0), f.account("b", 0)
	f.post("dep", usd(f.external, hot, 100))
	outs := f.batch(
		request(t, "1", usd(hot, b, 80)),                 // 100 -> 20
		request(t, "2", usd(hot, b, 30)),                 // would go to -10: rejected
		request(t, "3", usd(f.external, hot, 50)),        // 20 -> 70
		request(t, "4", usd(hot, b, 30)),                 // 70 -> 40
		request(t, "5", usd(hot, b, 41)),                 // would go to -1: rejected
		request(t, "6", usd(b, hot, 5), usd(hot, b, 45)), // net -40 for hot: 40 -> 0
		request(t, "7", usd(hot, b, 1)),                  // rejected: nothing left
	)
	if got := statuses(outs); got != "201 422 201 201 422 201 422 " {
		t.Fatalf("outcomes %s", got)
	}
	if f.balance(hot) != 0 || f.balance(b) != 150 {
		t.Errorf("hot=%d b=%d", f.balance(hot), f.balance(b))
	}
	entries, err := f.store.Entries(context.Background(), hot, 0, 20)
	if err != nil {
		t.Fatal(err)
	}
	var after []int64
	for i := len(entries) - 1; i >= 0; i-- {
		after = append(after, entries[i].BalanceAfter)
	}
	if fmt.Sprint(after) != "[100 20 70 40 45 0]" {
		t.Errorf("running balances %v", after)
	}
	f.verify()
}

// Keys already used replay or conflict inside a batch, beside new requests.
func TestBatchIdempotency(t *testing.T) {
	f := newFixture(t, 4)
	a, b := f.account("a", 0), f.account("b", 0)
	f.post("dep", usd(f.external, a, 100))
	first := request(t, "k1", usd(a, b, 10))
	f.batch(first)
	changed := request(t, "k1", usd(a, b, 11))
	outs := f.batch(first, request(t, "k2", usd(a, b, 5)))
	if got := statuses(outs); got != "201r 201 " {
		t.Fatalf("outcomes %s", got)
	}
	outs = f.batch(changed)
	if outs[0].Status != 409 || problemCode(t, outs[0]) != ledger.CodeIdempotencyKeyReused {
		t.Errorf("changed request: %d %s", outs[0].Status, outs[0].Body)
	}
	if f.balance(b) != 15 {
		t.Errorf("b=%d", f.balance(b))
	}
	if _, err := f.store.PostBatch(context.Background(), []store.Request{first, first}); err == nil {
		t.Error("a batch with one key twice must be refused: the batcher never builds one")
	}
}

// A batch whose commit fails applies nothing and records no key: every request in it
// gets the error, and the same requests succeed once the cause is gone.
func TestBatchCommitFailureAppliesNothing(t *testing.T) {
	f := newFixture(t, 4)
	a, b := f.account("a", 0), f.account("b", 0)
	f.post("dep", usd(f.external, a, 100))
	owner := f.db.SuperConn(t)
	// A commit-time failure, injected as the owner: any transaction with {"fail": true}
	// metadata makes the whole database transaction fail at COMMIT.
	if _, err := owner.Exec(context.Background(), `
		CREATE FUNCTION tally.test_fail() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
		  IF NEW.metadata ? 'fail' THEN RAISE EXCEPTION 'injected commit failure'; END IF;
		  RETURN NULL;
		END $$;
		CREATE CONSTRAINT TRIGGER test_fail AFTER INSERT ON tally.transactions
		  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION tally.test_fail();`); err != nil {
		t.Fatal(err)
	}
	poison := request(t, "p", usd(a, b, 1))
	poison.Transaction.Metadata = []byte(`{"fail":true}`)
	reqs := []store.Request{request(t, "x", usd(a, b, 10)), poison, request(t, "y", usd(a, b, 10))}
	if _, err := f.store.PostBatch(context.Background(), reqs); err == nil {
		t.Fatal("the batch committed despite the failure")
	}
	if f.balance(a) != 100 || f.balance(b) != 0 {
		t.Errorf("a failed batch was half-applied: a=%d b=%d", f.balance(a), f.balance(b))
	}
	if _, err := owner.Exec(context.Background(), "DROP TRIGGER test_fail ON tally.transactions"); err != nil {
		t.Fatal(err)
	}
	outs := f.batch(reqs...)
	if got := statuses(outs); got != "201 201 201 " {
		t.Errorf("after the cause is gone: %s", got)
	}
	if f.balance(b) != 21 {
		t.Errorf("b=%d", f.balance(b))
	}
	f.verify()
}

// A request whose running balance would overflow a bigint mid-way (though its net is
// fine) is refused on its own; it must not fail the batch around it.
func TestBatchIntermediateOverflowFailsAlone(t *testing.T) {
	f := newFixture(t, 4)
	a, b, c := f.account("a", 0), f.account("b", 0), f.account("c", 0)
	f.post("dep", usd(f.external, a, 10))
	const huge = 1<<63 - 1
	outs := f.batch(
		request(t, "ok1", usd(a, b, 1)),
		// b gets huge and then passes it on: its running balance would be 1 + huge
		request(t, "poison", usd(f.external, b, huge), usd(b, c, huge)),
		request(t, "ok2", usd(a, b, 1)),
	)
	if got := statuses(outs); got != "201 422 201 " {
		t.Fatalf("outcomes %s: %s", got, outs[1].Body)
	}
	if problemCode(t, outs[1]) != ledger.CodeBalanceLimitExceeded {
		t.Errorf("poison: %s", outs[1].Body)
	}
	if f.balance(b) != 2 || f.balance(c) != 0 {
		t.Errorf("b=%d c=%d", f.balance(b), f.balance(c))
	}
	f.verify()
}

// Each leg's running balance is stored with its entry, so each must respect the floor:
// a transaction that passes money through an account in the order given applies, the
// same postings in an order that would take the account below its floor mid-way do not.
// Before, only each account's net was checked, and the journal could show a balance
// below the floor.
func TestEveryLegRespectsTheFloor(t *testing.T) {
	f := newFixture(t, 4)
	a, b, c := f.account("a", 0), f.account("b", 0), f.account("c", 0)
	f.post("dep", usd(f.external, a, 100))
	out := f.post("dips", usd(b, c, 100), usd(a, b, 100))
	if problemCode(t, out) != ledger.CodeInsufficientFunds {
		t.Fatalf("b would sit at -100 between the legs: %d %s", out.Status, out.Body)
	}
	if out := f.post("through", usd(a, b, 100), usd(b, c, 100)); out.Status != 201 {
		t.Fatalf("through b in order: %d %s", out.Status, out.Body)
	}
	if f.balance(a) != 0 || f.balance(b) != 0 || f.balance(c) != 100 {
		t.Errorf("balances a=%d b=%d c=%d", f.balance(a), f.balance(b), f.balance(c))
	}
	entries, err := f.store.Entries(context.Background(), b, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.BalanceAfter < 0 {
			t.Errorf("entry %d shows b at %d, below its floor", e.ID, e.BalanceAfter)
		}
	}
	f.verify()
}

// A refusal for funds names the account, not what it holds.
func TestInsufficientFundsRevealsNoBalance(t *testing.T) {
	f := newFixture(t, 4)
	a, b := f.account("a", 0), f.account("b", 0)
	f.post("dep", usd(f.external, a, 4321))
	for i, postings := range [][]ledger.Posting{{usd(a, b, 9999)}, {usd(a, b, 4000), usd(a, b, 999)}} {
		out := f.post(fmt.Sprint("short", i), postings...)
		if problemCode(t, out) != ledger.CodeInsufficientFunds || strings.Contains(string(out.Body), "4321") || !strings.Contains(string(out.Body), a.String()) {
			t.Errorf("refusal %d: %s", i, out.Body)
		}
	}
}
