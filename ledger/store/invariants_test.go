package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

// TestConcurrentTransfersKeepInvariants runs 32 workers doing random transfers among 100
// accounts, many of which overdraw, and then checks every invariant from the journal.
func TestConcurrentTransfersKeepInvariants(t *testing.T) {
	for _, mode := range posterModes {
		t.Run(mode, func(t *testing.T) { testConcurrentTransfers(t, mode) })
	}
}

func testConcurrentTransfers(t *testing.T, mode string) {
	const (
		workers  = 32
		accounts = 100
		duration = 3 * time.Second
	)
	f := newFixture(t, workers+4)
	poster := f.poster(mode)
	ids := make([]ledger.AccountID, accounts)
	for i := range ids {
		floor := int64(0)
		if i%10 == 0 {
			floor = -2000 // some accounts may overdraw a little
		}
		ids[i] = f.account(fmt.Sprintf("owner-%d", i), floor)
		if out := f.post(fmt.Sprintf("seed-%d", i), usd(f.external, ids[i], 5000)); out.Status != 201 {
			t.Fatalf("seed: %s", out.Body)
		}
	}
	var applied, rejected atomic.Int64
	var failures sync.Map
	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 42))
			for n := 0; ctx.Err() == nil; n++ {
				a, b := rng.IntN(accounts), rng.IntN(accounts-1)
				if b >= a {
					b++
				}
				// amounts up to 4000 against balances around 5000: many overdraw
				postings := []ledger.Posting{usd(ids[a], ids[b], 1+rng.Int64N(4000))}
				if rng.IntN(4) == 0 { // a multi-posting transaction touching three accounts
					c := rng.IntN(accounts)
					if c != b {
						postings = append(postings, usd(ids[b], ids[c], 1+rng.Int64N(1000)))
					}
				}
				out, err := poster.PostTransaction(context.Background(), request(t, fmt.Sprintf("w%d-%d", w, n), postings...))
				switch {
				case err != nil:
					failures.Store(err.Error(), true)
				case out.Status == 201:
					applied.Add(1)
				case out.Status == 422:
					rejected.Add(1)
				default:
					failures.Store(string(out.Body), true)
				}
			}
		}(w)
	}
	wg.Wait()
	failures.Range(func(k, _ any) bool {
		t.Errorf("a caller saw an error (deadlock or serialization failures must never reach callers): %v", k)
		return true
	})
	t.Logf("applied %d, rejected %d", applied.Load(), rejected.Load())
	if applied.Load() == 0 || rejected.Load() == 0 {
		t.Fatalf("the test must exercise both outcomes: applied %d, rejected %d", applied.Load(), rejected.Load())
	}
	f.verify()
	// Conservation in plain terms: the customers hold exactly what came in.
	var total int64
	for _, id := range ids {
		b := f.balance(id)
		total += b
	}
	if total != 5000*accounts || f.balance(f.external) != -5000*accounts {
		t.Errorf("money not conserved: customers hold %d, external %d", total, f.balance(f.external))
	}
}

// TestConcurrentIdempotentRequestsApplyOnce sends one request 50 times at once.
func TestConcurrentIdempotentRequestsApplyOnce(t *testing.T) {
	for _, mode := range posterModes {
		t.Run(mode, func(t *testing.T) { testConcurrentIdempotency(t, mode) })
	}
}

func testConcurrentIdempotency(t *testing.T, mode string) {
	const copies = 50
	f := newFixture(t, copies)
	poster := f.poster(mode)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 1000))
	req := request(t, "same-key", usd(alice, bob, 300))
	outs := make([]ledger.Outcome, copies)
	errs := make([]error, copies)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			outs[i], errs[i] = poster.PostTransaction(context.Background(), req)
		}()
	}
	close(start)
	wg.Wait()
	fresh := 0
	for i := range copies {
		if errs[i] != nil {
			t.Fatalf("copy %d: %v", i, errs[i])
		}
		if outs[i].Status != 201 || string(outs[i].Body) != string(outs[0].Body) {
			t.Errorf("copy %d answered %d %s, want the same 201 as the others", i, outs[i].Status, outs[i].Body)
		}
		if !outs[i].Replayed {
			fresh++
		}
	}
	if fresh != 1 {
		t.Errorf("%d copies were applied, want exactly 1", fresh)
	}
	if got := f.balance(bob); got != 300 {
		t.Errorf("bob = %d, want 300 (applied once)", got)
	}
	changed := req
	changed.Hash[0] ^= 1
	out, err := poster.PostTransaction(context.Background(), changed)
	if err != nil || out.Status != 409 || problemCode(t, out) != ledger.CodeIdempotencyKeyReused {
		t.Errorf("same key, different request: %v %d %s", err, out.Status, out.Body)
	}
	f.verify()
}

// TestJournalIsAppendOnly checks that neither the service role (by privilege) nor the
// owner (by trigger) can rewrite history.
func TestJournalIsAppendOnly(t *testing.T) {
	f := newFixture(t, 4)
	alice := f.account("alice", 0)
	f.post("dep", usd(f.external, alice, 100))
	ctx := context.Background()
	owner := f.db.SuperConn(t)
	app, err := pgx.Connect(ctx, f.db.AppDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	statements := []string{
		"UPDATE tally.entries SET amount = amount * 2",
		"DELETE FROM tally.entries",
		"UPDATE tally.transactions SET metadata = '{\"x\":1}'",
		"DELETE FROM tally.transactions",
		"TRUNCATE tally.entries CASCADE",
		"TRUNCATE tally.transactions CASCADE",
		"DELETE FROM tally.balances",
		"DELETE FROM tally.accounts",
		"UPDATE tally.balances SET posted = posted + 1 WHERE account_id = (SELECT account_id FROM tally.balances LIMIT 1)",
	}
	for who, conn := range map[string]*pgx.Conn{"owner": owner, "service": app} {
		for _, stmt := range statements {
			_, err := conn.Exec(ctx, stmt)
			if err == nil {
				t.Errorf("%s ran %q; the journal must reject it", who, stmt)
				continue
			}
			if who == "service" && !strings.Contains(err.Error(), "permission denied") && !strings.HasPrefix(stmt, "UPDATE tally.balances") {
				t.Errorf("%s %q: want a privilege error, got %v", who, stmt, err)
			}
		}
	}
	f.verify()
}

// TestDatabaseRejectsUnbalancedWrites bypasses the function and writes rows directly as
// the owner: the constraints, not the Go code, must stop every illegal state.
func TestDatabaseRejectsUnbalancedWrites(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 100))
	ctx := context.Background()
	owner := f.db.SuperConn(t)
	txID, _ := ledger.NewTransactionID(0)
	otherShard, _ := ledger.NewAccountID(3)
	tx := fmt.Sprintf("INSERT INTO tally.transactions (id, created_at) VALUES ('%s', now());", txID)
	cases := map[string]string{
		"unbalanced": tx + fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
			VALUES ('%s', 0, '%s', 'USD', -10, 90), ('%s', 0, '%s', 'USD', 9, 9)`, txID, alice, txID, bob),
		"one leg": tx + fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
			VALUES ('%s', 0, '%s', 'USD', -10, 90)`, txID, alice),
		"no entries": tx,
		"broken running balance": tx + fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
			VALUES ('%s', 0, '%s', 'USD', -10, 50), ('%s', 0, '%s', 'USD', 10, 10)`, txID, alice, txID, bob),
		"zero amount": tx + fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after) VALUES ('%s', 0, '%s', 'USD', 0, 0)`, txID, alice),
		"wrong asset": tx + fmt.Sprintf(`INSERT INTO tally.assets (code, scale) VALUES ('EUR', 2);
			INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
			VALUES ('%s', 0, '%s', 'EUR', -10, -10), ('%s', 0, '%s', 'EUR', 10, 10)`, txID, alice, txID, bob),
		"below floor":        fmt.Sprintf("UPDATE tally.balances SET posted = -1 WHERE account_id = '%s'", bob),
		"other shard":        fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 2)", otherShard),
		"account no balance": fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 2)", mustAccountID(t)),
		"scale mismatch":     fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 3)", mustAccountID(t)),
		"asset change":       "UPDATE tally.assets SET scale = 3",
		"reopen closed":      "",
	}
	if _, err := f.store.SetStatus(ctx, bob, ledger.StatusClosed); err != nil {
		t.Fatal(err)
	}
	cases["reopen closed"] = fmt.Sprintf("UPDATE tally.accounts SET status = 'active' WHERE id = '%s'", bob)
	// A balanced pair whose running balances are right, added to a transaction that was
	// committed (and checked) before: refused, or it would escape the double-entry check.
	var committed ledger.TransactionID
	if err := owner.QueryRow(ctx, "SELECT id FROM tally.transactions LIMIT 1").Scan((*[16]byte)(&committed)); err != nil {
		t.Fatal(err)
	}
	carol := f.account("carol", 0)
	cases["entries added to a committed transaction"] = fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
		VALUES ('%s', 7, '%s', 'USD', -1, 99), ('%s', 7, '%s', 'USD', 1, 1)`, committed, alice, committed, carol)
	// A hand-written write that is complete: the transaction, its balanced entries, and the
	// balances they move, in one statement. The database accepts it; each case below
	// breaks exactly one thing of it.
	handWritten := func(tx string, to ledger.AccountID, asset string, toAfter int64) string {
		return fmt.Sprintf(`WITH moved AS (
			  UPDATE tally.balances SET posted = posted + CASE WHEN account_id = '%[2]s' THEN -10 ELSE 10 END, version = version + 1
			  WHERE account_id IN ('%[2]s', '%[3]s'))
			INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
			VALUES ('%[1]s', 0, '%[2]s', '%[4]s', -10, 90), ('%[1]s', 0, '%[3]s', '%[4]s', 10, %[5]d)`, tx, alice, to, asset, toAfter)
	}
	complete := tx + handWritten(txID.String(), carol, "USD", 10)
	ctrl, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Exec(ctx, complete); err != nil {
		t.Fatalf("a complete hand-written write was refused: %v", err)
	}
	if _, err := ctrl.Exec(ctx, "SET CONSTRAINTS ALL IMMEDIATE"); err != nil {
		t.Fatalf("a complete hand-written write failed its deferred checks: %v", err)
	}
	_ = ctrl.Rollback(ctx)
	otherTx, _ := ledger.NewTransactionID(0)
	cases["entries of a transaction that does not exist"] = handWritten(otherTx.String(), carol, "USD", 10)
	cases["balance moved without entries"] = fmt.Sprintf("UPDATE tally.balances SET posted = 50, version = version + 1 WHERE account_id = '%s'", carol)
	cases["entries on an account that does not exist"] = tx + handWritten(txID.String(), mustAccountID(t), "USD", 10)
	cases["running balance that skips"] = tx + handWritten(txID.String(), carol, "USD", 11)
	cases["an account's second entry in another asset"] = tx + fmt.Sprintf(`INSERT INTO tally.assets (code, scale) VALUES ('EUR', 2);
		WITH moved AS (
		  UPDATE tally.balances SET posted = posted + CASE WHEN account_id = '%[2]s' THEN -11 ELSE 11 END, version = version + 1
		  WHERE account_id IN ('%[2]s', '%[3]s'))
		INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
		VALUES ('%[1]s', 0, '%[2]s', 'USD', -10, 90), ('%[1]s', 0, '%[3]s', 'USD', 10, 10),
		       ('%[1]s', 1, '%[2]s', 'EUR', -1, 89), ('%[1]s', 1, '%[3]s', 'EUR', 1, 11)`, txID, alice, carol)
	// The deferred check at commit stands on its own: with the statement check switched
	// off (as the owner can), an unbalanced transaction still cannot commit.
	cases["unbalanced, past the statement check"] = "ALTER TABLE tally.entries DISABLE TRIGGER entries_checked;" + tx + fmt.Sprintf(`
		INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
		VALUES ('%s', 0, '%s', 'USD', -10, 90), ('%s', 0, '%s', 'USD', 9, 9)`, txID, alice, txID, carol)
	for name, sql := range cases {
		tx, err := owner.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, sql)
		if err == nil {
			err = tx.Commit(ctx) // deferred constraint triggers fire here
		} else {
			_ = tx.Rollback(ctx)
		}
		if err == nil {
			t.Errorf("%s: the database accepted it", name)
		}
	}
	f.verify()
}

func mustAccountID(t *testing.T) ledger.AccountID {
	id, err := ledger.NewAccountID(0)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestVerifyReportsTampering disables the guards as the owner would have to, corrupts a
// balance, and expects Verify to name it.
func TestVerifyReportsTampering(t *testing.T) {
	f := newFixture(t, 4)
	alice := f.account("alice", 0)
	f.post("dep", usd(f.external, alice, 100))
	ctx := context.Background()
	owner := f.db.SuperConn(t)
	// session_replication_role=replica switches off triggers: only a superuser can.
	if _, err := owner.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		t.Fatal(err)
	}
	if _, err := owner.Exec(ctx, fmt.Sprintf("UPDATE tally.balances SET posted = 70 WHERE account_id = '%s'", alice)); err != nil {
		t.Fatal(err)
	}
	// A balanced pair of entries naming a transaction that was never written.
	ghost, _ := ledger.NewTransactionID(0)
	if _, err := owner.Exec(ctx, fmt.Sprintf(`INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after)
		VALUES ('%[1]s', 0, '%[2]s', 'USD', -1, 69), ('%[1]s', 0, '%[3]s', 'USD', 1, 1)`, ghost, alice, f.external)); err != nil {
		t.Fatal(err)
	}
	violations, err := store.New(f.store.Pool()).Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var checks []string
	for _, v := range violations {
		checks = append(checks, v.Check)
	}
	joined := strings.Join(checks, "; ")
	for _, want := range []string{"balance equals sum of entries", "money is conserved per asset", "entry names its transaction and account"} {
		if !strings.Contains(joined, want) {
			t.Errorf("Verify missed %q; reported: %v", want, violations)
		}
	}
}

// TestMigrationsAreConcurrentAndRepeatable runs the migrations from several connections
// at once, then again.
func TestMigrationsAreConcurrentAndRepeatable(t *testing.T) {
	db := pgtest.NewEmptyDB(t)
	ctx := context.Background()
	const runners = 4
	versions := make([]int32, runners)
	errs := make([]error, runners)
	var wg sync.WaitGroup
	for i := range runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, db.SuperDSN())
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close(ctx)
			versions[i], errs[i] = migrations.Apply(ctx, conn)
		}()
	}
	wg.Wait()
	conn := db.SuperConn(t)
	latest, err := migrations.Latest(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	for i := range runners {
		if errs[i] != nil || versions[i] != latest {
			t.Errorf("runner %d: version %d, err %v; want %d", i, versions[i], errs[i], latest)
		}
	}
	if v, err := migrations.Apply(ctx, conn); err != nil || v != latest {
		t.Errorf("second run: %d %v", v, err)
	}
	if v, err := migrations.CurrentVersion(ctx, conn); err != nil || v != latest {
		t.Errorf("current version: %d %v", v, err)
	}
	if err := migrations.SetShard(ctx, conn, 2); err != nil {
		t.Fatal(err)
	}
	if err := migrations.SetShard(ctx, conn, 2); err != nil {
		t.Errorf("setting the same shard again: %v", err)
	}
	if err := migrations.SetShard(ctx, conn, 1); err == nil {
		t.Error("a database must not change shard")
	}
}
