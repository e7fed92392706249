package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
)

// slotted opens an account whose balance is held in n slots.
func (f *fixture) slotted(owner string, n int) ledger.AccountID {
	f.t.Helper()
	id, err := ledger.NewAccountID(0)
	if err != nil {
		f.t.Fatal(err)
	}
	a, err := f.store.CreateAccount(context.Background(), ledger.Account{ID: id, Owner: owner, Asset: "USD", BalanceSlots: n})
	if err != nil || a.BalanceSlots != n {
		f.t.Fatalf("create account with %d slots: %v %+v", n, err, a)
	}
	return id
}

// slots reads each slot's balance of an account, by slot.
func (f *fixture) slots(id ledger.AccountID) map[int]int64 {
	f.t.Helper()
	rows, err := f.db.SuperConn(f.t).Query(context.Background(), "SELECT slot, posted FROM tally.balances WHERE account_id = $1", [16]byte(id))
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	out := map[int]int64{}
	for rows.Next() {
		var slot int
		var posted int64
		if err := rows.Scan(&slot, &posted); err != nil {
			f.t.Fatal(err)
		}
		out[slot] = posted
	}
	return out
}

// TestSlotsConserveMoneyUnderConcurrentDebitsAndCredits: a merchant account with 8 slots
// is paid by many and pays out, from concurrent writers, batched and not. Debits often
// need more than one slot holds, and sometimes more than the account holds. No caller
// sees an error, no slot goes below zero, the balance is the sum of what was applied,
// and every invariant holds.
func TestSlotsConserveMoneyUnderConcurrentDebitsAndCredits(t *testing.T) {
	for _, mode := range posterModes {
		t.Run(mode, func(t *testing.T) {
			const (
				workers   = 16
				perWorker = 60
				payers    = 20
			)
			f := newFixture(t, workers+4)
			poster := f.poster(mode)
			if mode == "batched" { // several writers, so batches take slots side by side
				b, err := batcher.New(f.store, batcher.Config{Writers: 4})
				if err != nil {
					t.Fatal(err)
				}
				b.Start()
				t.Cleanup(b.Stop)
				poster = b
			}
			merchant := f.slotted("merchant", 8)
			ids := make([]ledger.AccountID, payers)
			for i := range ids {
				ids[i] = f.account(fmt.Sprint("payer-", i), 0)
				f.post(fmt.Sprint("fund-", i), usd(f.external, ids[i], 1_000_000))
			}
			var credited, debited, applied, rejected atomic.Int64
			var failures sync.Map
			var wg sync.WaitGroup
			for w := range workers {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(w), 7))
					for n := range perWorker {
						payer := ids[rng.IntN(payers)]
						amount := 1 + rng.Int64N(500)
						var p ledger.Posting
						if rng.IntN(3) == 0 { // a payout, often more than one slot holds
							amount = 1 + rng.Int64N(3000)
							p = usd(merchant, payer, amount)
						} else {
							p = usd(payer, merchant, amount)
						}
						out, err := poster.PostTransaction(context.Background(), request(t, fmt.Sprintf("w%d-%d", w, n), p))
						switch {
						case err != nil:
							failures.Store(err.Error(), true)
						case out.Status == 201 && p.To == merchant:
							credited.Add(amount)
							applied.Add(1)
						case out.Status == 201:
							debited.Add(amount)
							applied.Add(1)
						case out.Status == 422:
							rejected.Add(1)
						default:
							failures.Store(string(out.Body), true)
						}
					}
				})
			}
			wg.Wait()
			failures.Range(func(k, _ any) bool {
				t.Errorf("a caller saw an error: %v", k)
				return true
			})
			if applied.Load() == 0 || rejected.Load() == 0 {
				t.Errorf("the test must exercise both outcomes: applied %d, rejected %d", applied.Load(), rejected.Load())
			}
			if got, want := f.balance(merchant), credited.Load()-debited.Load(); got != want {
				t.Errorf("merchant holds %d, credits minus debits applied are %d", got, want)
			}
			slots := f.slots(merchant)
			if len(slots) != 8 {
				t.Errorf("slots %v", slots)
			}
			for s, v := range slots {
				if s < 1 || s > 8 || v < 0 {
					t.Errorf("slot %d holds %d", s, v)
				}
			}
			f.verify()
		})
	}
}

// TestDebitDrawsFromSeveralSlots: credits spread over the slots; a debit more than any one
// slot holds draws from several (one leg per slot), reads as one posting, and empties
// the account; then a debit of one more is refused, and a refused debit changes nothing.
func TestDebitDrawsFromSeveralSlots(t *testing.T) {
	f := newFixture(t, 8)
	ctx := context.Background()
	merchant, payer := f.slotted("merchant", 4), f.account("payer", 0)
	f.post("fund", usd(f.external, payer, 100_000))
	var total int64
	for i := range 40 {
		out := f.post(fmt.Sprint("pay-", i), usd(payer, merchant, 100))
		if out.Status != 201 {
			t.Fatalf("credit: %d %s", out.Status, out.Body)
		}
		total += 100
	}
	slots := f.slots(merchant)
	used, largest := 0, int64(0)
	for _, v := range slots {
		if v > 0 {
			used++
		}
		largest = max(largest, v)
	}
	if used < 2 {
		t.Fatalf("40 credits landed in %d of 4 slots: %v", used, slots)
	}
	if out := f.post("too-much", usd(merchant, payer, total+1)); out.Status != 422 {
		t.Fatalf("a debit above the balance: %d %s", out.Status, out.Body)
	}
	req := request(t, "sweep", usd(merchant, payer, total))
	out, err := f.store.PostTransaction(ctx, req)
	if err != nil || out.Status != 201 {
		t.Fatalf("a debit of the whole balance, more than the largest slot (%d): %v %d %s", largest, err, out.Status, out.Body)
	}
	if b := f.balance(merchant); b != 0 {
		t.Errorf("merchant holds %d after the sweep", b)
	}
	tx, err := f.store.Transaction(ctx, req.Transaction.ID)
	if err != nil || len(tx.Postings) != 1 || tx.Postings[0].Amount != total || tx.Postings[0].From != merchant || tx.Postings[0].To != payer {
		t.Errorf("the sweep reads back as %+v (%v), want one posting of %d", tx.Postings, err, total)
	}
	entries, err := f.store.Entries(ctx, merchant, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	legs := 0
	for _, e := range entries {
		if e.TransactionID == req.Transaction.ID {
			legs++
			if e.Slot < 1 || e.Slot > 4 || e.BalanceAfter != 0 {
				t.Errorf("sweep leg %+v: each slot drawn is emptied", e)
			}
		}
	}
	if legs != used {
		t.Errorf("the sweep has %d legs on the merchant, want one per slot holding money (%d)", legs, used)
	}
	if out := f.post("one-more", usd(merchant, payer, 1)); out.Status != 422 {
		t.Errorf("a debit from an empty slotted account: %d %s", out.Status, out.Body)
	}
	f.verify()
}

// TestSlottedAccountRules: a slotted account may not overdraw, it closes only when its
// slots sum to zero, and freezing it stops money in and out.
func TestSlottedAccountRules(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	id, _ := ledger.NewAccountID(0)
	if _, err := f.store.CreateAccount(ctx, ledger.Account{ID: id, Owner: "o", Asset: "USD", BalanceSlots: 4, BalanceFloor: -100}); err == nil {
		t.Error("a slotted account with an overdraft was opened")
	}
	merchant, payer := f.slotted("merchant", 3), f.account("payer", 0)
	f.post("fund", usd(f.external, payer, 1000))
	f.post("pay", usd(payer, merchant, 300))
	if _, err := f.store.SetStatus(ctx, merchant, ledger.StatusClosed); ledger.CodeOf(err) != ledger.CodeAccountNotEmpty {
		t.Errorf("closing a slotted account holding money: %v", err)
	}
	if _, err := f.store.SetStatus(ctx, merchant, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	if out := f.post("frozen-in", usd(payer, merchant, 1)); out.Status != 422 {
		t.Errorf("credit to a frozen slotted account: %d %s", out.Status, out.Body)
	}
	if out := f.post("frozen-out", usd(merchant, payer, 1)); out.Status != 422 {
		t.Errorf("debit from a frozen slotted account: %d %s", out.Status, out.Body)
	}
	if _, err := f.store.SetStatus(ctx, merchant, ledger.StatusActive); err != nil {
		t.Fatal(err)
	}
	f.post("back", usd(merchant, payer, 300))
	if a, err := f.store.SetStatus(ctx, merchant, ledger.StatusClosed); err != nil || a.Status != ledger.StatusClosed {
		t.Errorf("closing an emptied slotted account: %v %+v", err, a)
	}
	f.verify()
}
