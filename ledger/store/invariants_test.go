package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

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
		// The applied copy answers the response it brought; a replay answers the
		// transaction first posted, whose response is rendered from the journal.
		if o := outs[i]; o.Status != 201 || (o.Replayed && (o.Body != nil || o.ReplayOf != req.Transaction.ID)) ||
			(!o.Replayed && string(o.Body) != string(req.Body)) {
			t.Errorf("copy %d answered %d %s (replayed %v, of %s), want the same 201 as the others", i, o.Status, o.Body, o.Replayed, o.ReplayOf)
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
// the owner: the constraints, not the Go code, must stop every illegal state, each case
// with the rule it breaks.
func TestDatabaseRejectsUnbalancedWrites(t *testing.T) {
	f := newFixture(t, 4)
	alice, bob := f.account("alice", 0), f.account("bob", 0)
	f.post("dep", usd(f.external, alice, 100))
	ctx := context.Background()
	owner := f.db.SuperConn(t)
	txID, _ := ledger.NewTransactionID(0)
	otherShard, _ := ledger.NewAccountID(3)
	// write is one hand-written statement: it writes the transaction tx (unless empty),
	// moves the balances as moves says (unless empty) and inserts the entries.
	write := func(tx, moves, entries string) string {
		var with []string
		if tx != "" {
			with = append(with, fmt.Sprintf("journal AS (INSERT INTO tally.transactions (id, created_at) VALUES ('%s', now()))", tx))
		}
		if moves != "" {
			with = append(with, "moved AS ("+moves+")")
		}
		sql := "INSERT INTO tally.entries (transaction_id, posting, account_id, asset, amount, balance_after) VALUES " + entries
		if len(with) > 0 {
			sql = "WITH " + strings.Join(with, ", ") + " " + sql
		}
		return sql
	}
	// move takes amount from one account's balance to another's.
	move := func(from, to ledger.AccountID, amount int64) string {
		return fmt.Sprintf(`UPDATE tally.balances SET posted = posted + CASE WHEN account_id = '%[1]s' THEN %[3]d ELSE -%[3]d END, version = version + 1
			WHERE account_id IN ('%[1]s', '%[2]s')`, to, from, amount)
	}
	// legs is a posting's two entries, debit and credit, with their running balances.
	legs := func(tx string, posting int, from ledger.AccountID, fromAfter int64, to ledger.AccountID, toAfter int64, asset string, amount int64) string {
		return fmt.Sprintf("('%[1]s', %[2]d, '%[3]s', '%[7]s', %[8]d, %[4]d), ('%[1]s', %[2]d, '%[5]s', '%[7]s', %[9]d, %[6]d)",
			tx, posting, from, fromAfter, to, toAfter, asset, -amount, amount)
	}
	tx := txID.String()
	type rejection struct{ sql, rule string }
	cases := map[string]rejection{
		"unbalanced": {write(tx, "", fmt.Sprintf("('%s', 0, '%s', 'USD', -10, 90), ('%s', 0, '%s', 'USD', 9, 9)", tx, alice, tx, bob)),
			"unbalanced|sums to"},
		"one leg":            {write(tx, "", fmt.Sprintf("('%s', 0, '%s', 'USD', -10, 90)", tx, alice)), "unbalanced|sums to"},
		"no entries":         {fmt.Sprintf("INSERT INTO tally.transactions (id, created_at) VALUES ('%s', now())", tx), "has no entries"},
		"zero amount":        {write(tx, "", fmt.Sprintf("('%s', 0, '%s', 'USD', 0, 100)", tx, alice)), "entries_amount_check"},
		"below floor":        {fmt.Sprintf("UPDATE tally.balances SET posted = -1 WHERE account_id = '%s'", bob), "balance_above_floor"},
		"other shard":        {fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 2)", otherShard), "belongs to shard"},
		"account no balance": {fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 2)", mustAccountID(t)), "has no balance row"},
		"scale mismatch":     {fmt.Sprintf("INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('%s', 'x', 'USD', 3)", mustAccountID(t)), "violates foreign key"},
		"asset change":       {"UPDATE tally.assets SET scale = 3", "immutable"},
	}
	if _, err := f.store.SetStatus(ctx, bob, ledger.StatusClosed); err != nil {
		t.Fatal(err)
	}
	cases["reopen closed"] = rejection{fmt.Sprintf("UPDATE tally.accounts SET status = 'active' WHERE id = '%s'", bob), "is closed"}
	carol := f.account("carol", 0)
	// A complete hand-written write: the transaction, its balanced entries, and the
	// balances they move, in one statement. The database accepts it; each case below
	// breaks exactly one thing of it.
	complete := write(tx, move(alice, carol, 10), legs(tx, 0, alice, 90, carol, 10, "USD", 10))
	ctrl, err := owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctrl.Exec(ctx, complete); err != nil {
		t.Fatalf("a complete hand-written write was refused: %v", err)
	}
	_ = ctrl.Rollback(ctx) // every check it meets runs at the end of its statement
	otherTx, _ := ledger.NewTransactionID(0)
	eur := "INSERT INTO tally.assets (code, scale) VALUES ('EUR', 2);"
	cases["entries of a transaction that does not exist"] = rejection{write("", move(alice, carol, 10), legs(otherTx.String(), 0, alice, 90, carol, 10, "USD", 10)), "name transaction .* does not exist"}
	cases["balance moved without entries"] = rejection{fmt.Sprintf("UPDATE tally.balances SET posted = 50, version = version + 1 WHERE account_id = '%s'", carol), "the journal says"}
	nobody := mustAccountID(t)
	cases["entries on an account that does not exist"] = rejection{write(tx, move(alice, nobody, 10), legs(tx, 0, alice, 90, nobody, 10, "USD", 10)), "name account .* does not exist"}
	cases["broken running balance"] = rejection{write(tx, move(alice, carol, 10), legs(tx, 0, alice, 50, carol, 10, "USD", 10)), "has balance_after"}
	cases["running balance that skips"] = rejection{write(tx, move(alice, carol, 10), legs(tx, 0, alice, 90, carol, 11, "USD", 10)), "has balance_after"}
	cases["wrong asset"] = rejection{eur + write(tx, move(alice, carol, 10), legs(tx, 0, alice, 90, carol, 10, "EUR", 10)), "not the account's asset"}
	cases["an account's second entry in another asset"] = rejection{eur + write(tx, move(alice, carol, 11),
		legs(tx, 0, alice, 90, carol, 10, "USD", 10)+", "+legs(tx, 1, alice, 89, carol, 11, "EUR", 1)), "not the account's asset"}
	// Entries that would join a transaction after its statement: one committed earlier,
	// and one written by the statement before, in the same database transaction. Both
	// postings are balanced and move their balances, so only that rule refuses them.
	var committed ledger.TransactionID
	if err := owner.QueryRow(ctx, "SELECT id FROM tally.transactions LIMIT 1").Scan((*[16]byte)(&committed)); err != nil {
		t.Fatal(err)
	}
	cases["entries added to a committed transaction"] = rejection{write("", move(alice, carol, 1), legs(committed.String(), 7, alice, 99, carol, 1, "USD", 1)),
		"written by an earlier statement"}
	cases["entries added by a later statement"] = rejection{complete + ";" + write("", move(alice, carol, 1), legs(tx, 1, alice, 89, carol, 11, "USD", 1)),
		"written by an earlier statement"}
	// The transactions' check stands on its own: with the entries' check switched off
	// (as the owner can), an unbalanced transaction is still refused.
	cases["unbalanced, past the entries' check"] = rejection{"ALTER TABLE tally.entries DISABLE TRIGGER entries_checked;" +
		write(tx, "", fmt.Sprintf("('%s', 0, '%s', 'USD', -10, 90), ('%s', 0, '%s', 'USD', 9, 9)", tx, alice, tx, carol)), "sums to"}
	for name, c := range cases {
		tx, err := owner.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tx.Exec(ctx, c.sql)
		if err == nil {
			err = tx.Commit(ctx) // deferred constraint triggers fire here
		} else {
			_ = tx.Rollback(ctx)
		}
		if err == nil {
			t.Errorf("%s: the database accepted it", name)
		} else if !regexp.MustCompile(c.rule).MatchString(err.Error()) {
			t.Errorf("%s: refused for another reason than %q: %v", name, c.rule, err)
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

// TestServiceRewritesNoTable: on every table of the schema, found in the catalog so a
// new table is covered the day it is added, the service's login may not delete,
// truncate or update, but for the columns that record an account's status, a balance,
// a pending transfer's resolution, and idempotency records (which retention removes).
func TestServiceRewritesNoTable(t *testing.T) {
	f := newFixture(t, 1)
	ctx := context.Background()
	app, err := pgx.Connect(ctx, f.db.AppDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	mayUpdate := map[string]string{
		"accounts": "status", "balances": "posted,version", "pending_transfers": "posted_amount,resolved_at,resolved_by,state",
		"idempotency_keys": "*",
	}
	rows, err := app.Query(ctx, `SELECT c.relname,
	       has_table_privilege(c.oid, 'UPDATE'),
	       coalesce((SELECT string_agg(a.attname, ',' ORDER BY a.attname) FROM pg_attribute a
	                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND has_column_privilege(c.oid, a.attnum, 'UPDATE')), '')
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE n.nspname = 'tally' AND c.relkind IN ('r', 'p') ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	type table struct {
		name, columns string
		update        bool
	}
	tables, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (table, error) {
		var tb table
		return tb, r.Scan(&tb.name, &tb.update, &tb.columns)
	})
	if err != nil || len(tables) < 9 {
		t.Fatalf("tables %v: %v", tables, err)
	}
	for _, tb := range tables {
		updates := tb.columns
		if tb.update {
			updates = "*"
		}
		if updates != mayUpdate[tb.name] {
			t.Errorf("the service may update %s columns %q, want %q", tb.name, updates, mayUpdate[tb.name])
		}
		for _, stmt := range []string{"DELETE FROM tally." + tb.name, "TRUNCATE tally." + tb.name + " CASCADE"} {
			if tb.name == "idempotency_keys" && strings.HasPrefix(stmt, "DELETE") {
				continue
			}
			tx, err := app.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_, err = tx.Exec(ctx, stmt)
			_ = tx.Rollback(ctx)
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
				t.Errorf("%s as the service: %v, want permission denied", stmt, err)
			}
		}
	}
}
