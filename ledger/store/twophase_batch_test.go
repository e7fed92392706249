package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

// A batch of reservations, resolutions or inbound applications answers each request as
// if it had come alone, in order: refusals do not touch their neighbours, later requests
// see what earlier ones reserved, and the whole batch asked again replays every answer.
func TestStepBatchesAnswerEachRequest(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4)
	alice, bob, frozen, poor := f.account("alice", 0), f.account("bob", 0), f.account("frozen", 0), f.account("poor", 0)
	f.post("dep", usd(f.external, alice, 1000))
	if _, err := f.store.SetStatus(ctx, frozen, ledger.StatusFrozen); err != nil {
		t.Fatal(err)
	}
	earlier := f.reserve("r0", alice, bob, 50, time.Time{})

	now := time.Now()
	res := func(key string, from, to ledger.AccountID, amount int64, expires time.Time) store.ReserveRequest {
		return store.ReserveRequest{Step: step(t, key, now), Reservation: reservation(from, to, amount, expires)}
	}
	reserves := []store.ReserveRequest{
		res("r1", alice, bob, 300, time.Time{}),
		res("r2", alice, frozen, 10, time.Time{}),
		res("r3", alice, bob, 700, time.Time{}), // 650 left after r0 and r1
		res("r0", alice, bob, 50, time.Time{}),  // a replay
		res("r4", poor, bob, 5, time.Time{}),
		res("r5", alice, bob, 100, now.Add(time.Hour)),
	}
	outs, err := f.store.ReserveBatch(ctx, reserves)
	if err != nil {
		t.Fatal(err)
	}
	if outs[0].Status != 201 || outs[5].Status != 201 || outs[0].Replayed || outs[5].Replayed {
		t.Errorf("accepted reservations: %+v %+v", outs[0], outs[5])
	}
	wantCode(t, "to a frozen account", outs[1], ledger.CodeAccountFrozen)
	wantCode(t, "more than is left after the batch's first", outs[2], ledger.CodeInsufficientFunds)
	wantCode(t, "from an empty account", outs[4], ledger.CodeInsufficientFunds)
	if outs[3].Status != 201 || !outs[3].Replayed || outs[3].Transaction != earlier.Transaction {
		t.Errorf("replay in a batch: %+v, first %+v", outs[3], earlier)
	}
	if b := f.balances(alice); b.Available != 550 || b.Reserved != 450 {
		t.Errorf("alice after the batch: %+v", b)
	}
	if p := f.pending(outs[5].Transaction); p.ExpiresAt.IsZero() || p.Amount != 100 || p.To != bob {
		t.Errorf("reservation with a timeout: %+v", p)
	}
	again, err := f.store.ReserveBatch(ctx, reserves)
	if err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if again[i].Status != outs[i].Status || !again[i].Replayed || again[i].Transaction != outs[i].Transaction {
			t.Errorf("request %d asked again: %+v, first %+v", i, again[i], outs[i])
		}
	}

	missing, _ := ledger.NewTransactionID(0)
	resolveReq := func(key string, pending ledger.TransactionID, how ledger.Resolution, amount int64) store.ResolveRequest {
		return store.ResolveRequest{Step: step(t, key, now), Pending: pending, How: how, Amount: amount}
	}
	resolves := []store.ResolveRequest{
		resolveReq("p1", outs[0].Transaction, ledger.ResolvePost, 200),
		resolveReq("v5", outs[5].Transaction, ledger.ResolveVoid, 0),
		resolveReq("p0", earlier.Transaction, ledger.ResolvePost, 51),
		resolveReq("px", missing, ledger.ResolvePost, 0),
	}
	routs, err := f.store.ResolveBatch(ctx, resolves)
	if err != nil {
		t.Fatal(err)
	}
	if routs[0].Status != 201 || routs[1].Status != 201 {
		t.Errorf("post and void: %+v %+v", routs[0], routs[1])
	}
	wantCode(t, "post above the pending amount", routs[2], ledger.CodeAmountExceedsPending)
	wantCode(t, "an unknown transfer", routs[3], ledger.CodeTransferNotFound)
	if p := f.pending(outs[0].Transaction); p.State != ledger.StatePosted || p.PostedAmount != 200 || p.ResolvedBy != routs[0].Transaction {
		t.Errorf("posted in a batch: %+v", p)
	}
	if p := f.pending(outs[5].Transaction); p.State != ledger.StateVoided || p.ResolvedBy != routs[1].Transaction {
		t.Errorf("voided in a batch: %+v", p)
	}
	if b := f.balances(alice); b.Available != 750 || b.Reserved != 50 {
		t.Errorf("alice after resolving: %+v", b)
	}
	if b := f.balances(bob); b.Available != 200 || b.Incoming != 50 {
		t.Errorf("bob after resolving: %+v", b)
	}
	// One batch resolves a transfer at most once: the service never sends two, and the
	// database refuses such a batch whole.
	_, err = f.store.ResolveBatch(ctx, []store.ResolveRequest{
		resolveReq("d1", earlier.Transaction, ledger.ResolvePost, 0), resolveReq("d2", earlier.Transaction, ledger.ResolveVoid, 0)})
	if err == nil || !store.RequestFault(err) {
		t.Errorf("two resolutions of one transfer in a batch: %v", err)
	}

	// Transfers from shard 1 to accounts here: applied, refused for the account, and the
	// batch asked again answers the same.
	inbound := func(to ledger.AccountID, amount int64) store.InboundRequest {
		id, _ := ledger.NewTransactionID(1)
		tx, _ := ledger.NewTransactionID(0)
		clearing, _ := ledger.NewAccountID(0)
		return store.InboundRequest{Transfer: ledger.PendingTransfer{ID: id, Remote: to, Amount: amount, Asset: "USD"},
			Tx: tx, Created: now.UTC().Truncate(time.Microsecond), ClearingID: clearing}
	}
	nowhere, _ := ledger.NewAccountID(0)
	ins := []store.InboundRequest{inbound(bob, 40), inbound(frozen, 5), inbound(nowhere, 5), inbound(poor, 60)}
	applied, err := f.store.ApplyInboundBatch(ctx, ins)
	if err != nil {
		t.Fatal(err)
	}
	if !applied[0].Applied || !applied[3].Applied || applied[0].Transaction != ins[0].Tx {
		t.Errorf("applied: %+v %+v", applied[0], applied[3])
	}
	for i, want := range map[int]ledger.Code{1: ledger.CodeAccountFrozen, 2: ledger.CodeAccountNotFound} {
		if applied[i].Applied || problemCode(t, ledger.Outcome{Status: 422, Body: applied[i].Problem}) != want {
			t.Errorf("inbound %d: %+v, want %s", i, applied[i], want)
		}
	}
	replayed, err := f.store.ApplyInboundBatch(ctx, ins)
	if err != nil {
		t.Fatal(err)
	}
	for i := range replayed {
		if replayed[i].Applied != applied[i].Applied || replayed[i].Transaction != applied[i].Transaction || string(replayed[i].Problem) != string(applied[i].Problem) {
			t.Errorf("inbound %d asked again: %+v, first %+v", i, replayed[i], applied[i])
		}
	}
	if b := f.balances(bob); b.Available != 240 {
		t.Errorf("bob after the inbound batch: %+v", b)
	}
	f.verify()
}

// The previous release's service calls the single-request functions: they answer as the
// batch functions do.
func TestSingleStepFunctionsServeThePreviousRelease(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 100))
	conn := f.db.SuperConn(t)
	st := step(t, "old-reserve", time.Now())
	r := reservation(alice, bob, 60, time.Time{})
	var status int
	var txID *[16]byte
	if err := conn.QueryRow(ctx, `SELECT status, transaction_id FROM tally.reserve($1, $2, $3, $4, $5, '{}', $6, $7, $8, 'USD', NULL, $9, NULL, $10)`,
		st.Caller, st.Key, st.Hash[:], [16]byte(st.ID), st.CreatedAt, [16]byte(alice), [16]byte(bob), int64(60), [16]byte(r.HoldingID), [16]byte(r.ClearingID)).
		Scan(&status, &txID); err != nil || status != 201 || txID == nil || *txID != [16]byte(st.ID) {
		t.Fatalf("reserve through the single function: %v %d", err, status)
	}
	post := step(t, "old-post", time.Now())
	if err := conn.QueryRow(ctx, `SELECT status FROM tally.resolve($1, $2, $3, $4, $5, '{}', $6, 'post', NULL)`,
		post.Caller, post.Key, post.Hash[:], [16]byte(post.ID), post.CreatedAt, *txID).Scan(&status); err != nil || status != 201 {
		t.Fatalf("post through the single function: %v %d", err, status)
	}
	src, _ := ledger.NewTransactionID(1)
	tx, _ := ledger.NewTransactionID(0)
	clearing, _ := ledger.NewAccountID(0)
	var state string
	if err := conn.QueryRow(ctx, `SELECT state FROM tally.apply_inbound($1, $2, 7, 'USD', $3, now(), '{}', $4)`,
		[16]byte(src), [16]byte(bob), [16]byte(tx), [16]byte(clearing)).Scan(&state); err != nil || state != "applied" {
		t.Fatalf("apply through the single function: %v %s", err, state)
	}
	if b := f.balances(bob); b.Available != 67 {
		t.Errorf("bob: %+v", b)
	}
	f.verify()
}
