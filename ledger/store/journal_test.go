package store_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/internal/journaltest"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

// A transfer lands in its month's partition, partitions are made three months ahead,
// and making them again makes none.
func TestJournalIsPartitionedByMonth(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	a, b := f.account("a", 0), f.account("b", 0)
	f.post("fund", usd(f.external, a, 100))
	pay := request(t, "pay", usd(a, b, 40))
	f.post2(pay)
	super := f.db.SuperConn(t)
	var transactions, entries string
	if err := super.QueryRow(ctx, `SELECT (SELECT tableoid::regclass::text FROM tally.transactions WHERE id = $1),
	                                      (SELECT DISTINCT tableoid::regclass::text FROM tally.entries WHERE transaction_id = $1)`,
		[16]byte(pay.Transaction.ID)).Scan(&transactions, &entries); err != nil {
		t.Fatal(err)
	}
	// A database made this month keeps this month and the next in "history" (the bound
	// is the month after next), so the transfer is there.
	if transactions != "tally.transactions_history" || entries != "tally.entries_history" {
		t.Errorf("transfer in %s and %s, want the history partitions", transactions, entries)
	}
	var last time.Time
	var n int
	if err := super.QueryRow(ctx, "SELECT max(ends), count(*) FROM tally.journal_partitions").Scan(&last, &n); err != nil {
		t.Fatal(err)
	}
	if last.Before(time.Now().Add(store.PartitionsAhead)) || n < 2 {
		t.Errorf("%d partitions up to %s, want at least %s ahead", n, last, store.PartitionsAhead)
	}
	if made, err := f.store.EnsurePartitions(ctx, store.PartitionsAhead); err != nil || made != 0 {
		t.Errorf("ensure again: made %d, %v", made, err)
	}
	if made, err := f.store.EnsurePartitions(ctx, 200*24*time.Hour); err != nil || made < 2 {
		t.Errorf("ensure 200 days ahead: made %d, %v", made, err)
	}
	// Each partition is a month.
	var first time.Time
	if err := super.QueryRow(ctx, "SELECT starts FROM tally.journal_partitions WHERE starts > '-infinity' ORDER BY starts LIMIT 1").Scan(&first); err != nil {
		t.Fatal(err)
	}
	if first.UTC().Day() != 1 || first.UTC().Hour() != 0 {
		t.Errorf("first monthly partition starts %s", first)
	}
	f.verify()

	// On a journal partitioned monthly since two months ago, a transaction made last
	// month lands in last month's partition.
	g := newFixture(t, 4)
	now := time.Now().UTC()
	lastMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -1, 0)
	if err := journaltest.Repartition(ctx, g.db.SuperConn(t), lastMonth.AddDate(0, -1, 0), "1 month"); err != nil {
		t.Fatal(err)
	}
	c, d := g.account("c", 0), g.account("d", 0)
	g.post("fund", usd(g.external, c, 100))
	made := lastMonth.Add(36 * time.Hour)
	later := journaltest.TransactionMadeAt(t, 0, made)
	var bounds bool
	if err := super.QueryRow(ctx, "SELECT tally.uuid_at($1) <= $2 AND tally.uuid_time($2) = $3",
		made, [16]byte(later), made.Truncate(time.Millisecond)).Scan(&bounds); err != nil || !bounds {
		t.Errorf("uuid_at and uuid_time of %s: %v %v", made, bounds, err)
	}
	req := request(t, "last-month", usd(c, d, 1))
	req.Transaction.ID = later
	if out := g.post2(req); out.Status != 201 {
		t.Fatalf("transfer made last month: %d %s", out.Status, out.Body)
	}
	if err := g.db.SuperConn(t).QueryRow(ctx, "SELECT tableoid::regclass::text FROM tally.entries WHERE transaction_id = $1 LIMIT 1", [16]byte(later)).Scan(&entries); err != nil {
		t.Fatal(err)
	}
	if want := "tally.entries_p" + lastMonth.Format("20060102"); entries != want {
		t.Errorf("last month's transfer's entries in %s, want %s", entries, want)
	}
	g.verify()
}

func (f *fixture) post2(r store.Request) ledger.Outcome {
	f.t.Helper()
	out, err := f.store.PostTransaction(context.Background(), r)
	if err != nil {
		f.t.Fatalf("post %s: %v", r.Key, err)
	}
	return out
}

// The migration to a partitioned journal on a populated database: every row is still
// there and in the history partition, every invariant holds, references into the
// journal are still checked, and the ledger goes on.
func TestPartitioningAPopulatedDatabase(t *testing.T) {
	pgtest.NewDB(t) // the service's login role exists once a template was made
	db := pgtest.NewEmptyDB(t)
	ctx := context.Background()
	super := db.SuperConn(t)
	const before = 13 // the last schema with one table per journal kind
	if _, err := migrations.ApplyTo(ctx, super, before); err != nil {
		t.Fatal(err)
	}
	if err := migrations.SetShard(ctx, super, 0); err != nil {
		t.Fatal(err)
	}
	if err := migrations.GrantLogin(ctx, super, pgtest.AppRole); err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, db: db, store: store.New(db.AppPool(t, 4))}
	extID, _ := ledger.NewAccountID(0)
	var err error
	if _, f.external, _, err = f.store.RegisterAsset(ctx, "USD", 2, extID); err != nil {
		t.Fatal(err)
	}
	accounts := make([]ledger.AccountID, 50)
	for i := range accounts {
		accounts[i] = f.account(fmt.Sprint("o", i), 0)
		f.post(fmt.Sprint("fund", i), usd(f.external, accounts[i], 100000))
	}
	const batches, perBatch = 40, 50
	for n := range batches {
		reqs := make([]store.Request, perBatch)
		for i := range reqs {
			from, to := accounts[(n+i)%len(accounts)], accounts[(n+2*i+1)%len(accounts)]
			if from == to {
				to = accounts[(n+2*i+2)%len(accounts)]
			}
			reqs[i] = request(t, fmt.Sprint("b", n, "-", i), usd(from, to, int64(1+i)))
		}
		if _, err := f.store.PostBatch(ctx, reqs); err != nil {
			t.Fatal(err)
		}
	}
	toReverse := request(t, "to-reverse", usd(accounts[0], accounts[1], 7))
	f.post2(toReverse)
	reversed := toReverse.Transaction.ID
	rid, _ := ledger.NewTransactionID(0)
	if out, err := f.store.Reverse(ctx, store.Step{Caller: "test", Key: "reverse", ID: rid, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}, reversed); err != nil || out.Status != 201 {
		t.Fatalf("reverse: %v %+v", err, out)
	}
	count := func() (tx, en int64) {
		t.Helper()
		if err := super.QueryRow(ctx, "SELECT (SELECT count(*) FROM tally.transactions), (SELECT count(*) FROM tally.entries)").Scan(&tx, &en); err != nil {
			t.Fatal(err)
		}
		return tx, en
	}
	tx0, en0 := count()
	balance0 := f.balance(accounts[3])

	start := time.Now()
	if _, err := migrations.Apply(ctx, super); err != nil {
		t.Fatalf("partition: %v", err)
	}
	t.Logf("migrated %d transactions and %d entries in %s", tx0, en0, time.Since(start))
	if tx, en := count(); tx != tx0 || en != en0 {
		t.Errorf("after partitioning %d transactions and %d entries, before %d and %d", tx, en, tx0, en0)
	}
	var outside int64
	if err := super.QueryRow(ctx, `SELECT (SELECT count(*) FROM ONLY tally.transactions_history) - $1
	                                    + (SELECT count(*) FROM ONLY tally.entries_history) - $2`, tx0, en0).Scan(&outside); err != nil || outside != 0 {
		t.Errorf("rows outside the history partition: %d %v", outside, err)
	}
	if got := f.balance(accounts[3]); got != balance0 {
		t.Errorf("balance %d, before %d", got, balance0)
	}
	f.verify()
	// The service goes on: money moves, a reversal still names its transaction.
	f.post("after", usd(accounts[3], accounts[4], 5))
	if got := f.balance(accounts[3]); got != balance0-5 {
		t.Errorf("balance %d after paying 5 from %d", got, balance0)
	}
	again, _ := ledger.NewTransactionID(0)
	if out, err := f.store.Reverse(ctx, store.Step{Caller: "test", Key: "reverse-again", ID: again, CreatedAt: time.Now().UTC().Truncate(time.Microsecond)}, reversed); err != nil || out.Status == 201 {
		t.Errorf("a second reversal: %v %+v", err, out)
	}
	// The foreign keys' promise, kept by the triggers that replace them.
	missing, _ := ledger.NewTransactionID(0)
	_, err = super.Exec(ctx, "INSERT INTO tally.reversals (transaction_id, reversal_id) VALUES ($1, $2)", [16]byte(missing), [16]byte(reversed))
	if code := pgCode(err); code != "23503" {
		t.Errorf("a reversal naming a missing transaction: %v", err)
	}
	f.verify()
}

// pgCode is the SQLSTATE of a PostgreSQL error, or "".
func pgCode(err error) string {
	var pgErr *pgconn.PgError
	if errorsAs(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// Checkpoints at each boundary past its grace hold each slot's sum before it; a
// balance at any moment is the checkpoint plus the entries after it; the journal before
// the latest checkpoint is sealed; and before the horizon the answer is "archived".
func TestCheckpointsAndBalancesAtAMoment(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	now := time.Now().UTC()
	t0 := now.Truncate(24 * time.Hour).Add(-4 * 24 * time.Hour)
	journaltest.DailyPartitionsSince(t, f.db.SuperConn(t), t0)
	a, b, c := f.account("a", 0), f.account("b", 0), f.account("c", 0)
	f.post("fund", usd(f.external, a, 1000)) // made now
	fundC := request(t, "fund-c", usd(f.external, c, 500))
	fundC.Transaction.ID = journaltest.TransactionMadeAt(t, 0, t0.Add(-2*time.Hour))
	f.post2(fundC)
	type move struct {
		at     time.Time
		amount int64 // into a, from b (b is funded first)
	}
	moves := []move{{t0.Add(-time.Hour), 10}, {t0.Add(time.Hour), 20}, {t0.Add(25 * time.Hour), 40}, {t0.Add(49 * time.Hour), 80}, {t0.Add(73 * time.Hour), 160}}
	f.post("fund-b", usd(f.external, b, 1000))
	for i, m := range moves {
		r := request(t, fmt.Sprint("m", i), usd(b, a, m.amount))
		r.Transaction.ID = journaltest.TransactionMadeAt(t, 0, m.at)
		if out := f.post2(r); out.Status != 201 {
			t.Fatalf("move %d: %d %s", i, out.Status, out.Body)
		}
	}
	// Boundaries t0 .. t0+4d; those an hour past are checkpointed.
	want := 0
	for d := 0; d <= 4; d++ {
		if !t0.Add(time.Duration(d) * 24 * time.Hour).After(now.Add(-store.CheckpointGrace)) {
			want++
		}
	}
	if made, err := f.store.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil || made != want {
		t.Fatalf("checkpoints made %d, want %d: %v", made, want, err)
	}
	if made, err := f.store.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil || made != 0 {
		t.Errorf("checkpoints made again: %d %v", made, err)
	}
	// a's balance at a moment: the moves made by then (the funding is made now).
	sumBy := func(at time.Time) int64 {
		var s int64
		for _, m := range moves {
			if !m.at.After(at) {
				s += m.amount
			}
		}
		return s
	}
	for _, at := range []time.Time{t0.Add(-2 * time.Hour), t0.Add(-time.Hour), t0, t0.Add(time.Hour).Add(-time.Millisecond),
		t0.Add(30 * time.Hour), t0.Add(49 * time.Hour), t0.Add(80 * time.Hour), now.Add(-time.Minute)} {
		got, err := f.store.BalanceAt(ctx, a, at)
		if err != nil || got != sumBy(at) {
			t.Errorf("balance at %s: %d %v, want %d", at, got, err, sumBy(at))
		}
	}
	if got, err := f.store.BalanceAt(ctx, a, now.Add(time.Minute)); err != nil || got != f.balance(a) {
		t.Errorf("balance a minute from now: %d %v, want today's %d", got, err, f.balance(a))
	}
	// The checkpoint rows themselves.
	var posted, txs int64
	if err := f.db.SuperConn(t).QueryRow(ctx, `SELECT posted, transactions FROM tally.balance_checkpoints
		WHERE account_id = $1 AND at = $2`, [16]byte(a), t0.Add(48*time.Hour)).Scan(&posted, &txs); err != nil || posted != 70 || txs != 3 {
		t.Errorf("a's checkpoint at t0+2d: %d over %d transactions, %v; want 70 over 3", posted, txs, err)
	}
	// Sealed: nothing made before the latest checkpoint joins the journal.
	late := request(t, "late", usd(b, a, 1))
	late.Transaction.ID = journaltest.TransactionMadeAt(t, 0, t0.Add(2*time.Hour))
	if out, err := f.store.PostTransaction(ctx, late); err == nil && out.Status == 201 {
		t.Errorf("a transaction made before the latest checkpoint was written")
	}
	// Archive the history partition as retention will (detached and dropped here), and
	// the ledger goes on: an account whose every entry is gone pays from its checkpoint,
	// and both verifies stand on the checkpoints.
	super := f.db.SuperConn(t)
	if _, err := super.Exec(ctx, `
		ALTER TABLE tally.transactions DETACH PARTITION tally.transactions_history;
		ALTER TABLE tally.entries DETACH PARTITION tally.entries_history;
		DROP TABLE tally.transactions_history, tally.entries_history;
		UPDATE tally.journal_partitions SET state = 'archived', archive = '{}' WHERE suffix = 'history'`); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.BalanceAt(ctx, a, t0.Add(-time.Minute)); codeOrEmpty(err) != ledger.CodeHistoryArchived {
		t.Errorf("balance before the horizon: %v", err)
	}
	if got, err := f.store.BalanceAt(ctx, a, t0.Add(time.Hour)); err != nil || got != 30 {
		t.Errorf("balance after the horizon: %d %v", got, err)
	}
	if out := f.post("c-pays", usd(c, b, 5)); out.Status != 201 {
		t.Fatalf("an account whose entries are archived pays: %d %s", out.Status, out.Body)
	}
	if got := f.balance(c); got != 495 {
		t.Errorf("c holds %d, want 495", got)
	}
	f.verify()
	if vs, err := f.store.VerifyIncremental(ctx); err != nil || len(vs) > 0 {
		t.Errorf("incremental verify: %v %v", vs, err)
	}
	// Both verifies have teeth: a checkpoint after the horizon made wrong is found by the
	// full one, and the one everything stands on by both.
	tamper(t, super, `UPDATE tally.balance_checkpoints SET posted = posted + 1 WHERE account_id = $1 AND at = $2`, [16]byte(a), t0.Add(48*time.Hour))
	if vs, _ := f.store.Verify(ctx); !reports(vs, "checkpoints agree with the journal") {
		t.Errorf("full verify missed a wrong checkpoint: %v", vs)
	}
	tamper(t, super, `UPDATE tally.balance_checkpoints SET posted = posted + 1 WHERE account_id = $1`, [16]byte(c))
	for name, verify := range map[string]func(context.Context) ([]store.Violation, error){"full": f.store.Verify, "incremental": f.store.VerifyIncremental} {
		if vs, _ := verify(ctx); !reports(vs, "balance equals sum of entries") {
			t.Errorf("%s verify missed a wrong base checkpoint: %v", name, vs)
		}
	}
}

// tamper runs sql with the schema's triggers off, as someone with the server's files could.
func tamper(t *testing.T, super *pgx.Conn, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	if _, err := super.Exec(ctx, "SET session_replication_role = replica"); err != nil {
		t.Fatal(err)
	}
	defer super.Exec(ctx, "RESET session_replication_role") //nolint:errcheck // the next statement fails if it did
	if _, err := super.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
}

// Each balance row carries its slot's latest checkpoint, a batch of rows per carry, and
// that (not the checkpoint history) is what a transfer's running-balance check stands
// on, except while a carry is under way. Only the carry writes it.
func TestTransfersStandOnTheCheckpointTheirBalanceCarries(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	super := f.db.SuperConn(t)
	t0 := time.Now().UTC().Truncate(24 * time.Hour).Add(-3 * 24 * time.Hour)
	journaltest.DailyPartitionsSince(t, super, t0)
	to := f.account("to", 0)
	quiet := make([]ledger.AccountID, 4) // funded before t0, untouched since
	for i := range quiet {
		quiet[i] = f.account(fmt.Sprint("quiet-", i), 0)
		r := request(t, fmt.Sprint("fund-", i), usd(f.external, quiet[i], 100))
		r.Transaction.ID = journaltest.TransactionMadeAt(t, 0, t0.Add(-2*time.Hour))
		f.post2(r)
	}
	r := request(t, "moved", usd(quiet[3], to, 1))
	r.Transaction.ID = journaltest.TransactionMadeAt(t, 0, t0.Add(25*time.Hour))
	f.post2(r)
	if made, err := f.store.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil || made == 0 {
		t.Fatalf("checkpoints made %d: %v", made, err)
	}
	// Every row carries its slot's latest checkpoint, and the carry is done.
	carried := func() (wrong, some int) {
		t.Helper()
		if err := super.QueryRow(ctx, `
			SELECT count(*) FILTER (WHERE (b.checkpoint_at, b.checkpoint_entry, b.checkpoint_balance)
			                        IS DISTINCT FROM (k.at, k.last_entry, k.last_balance_after)),
			       count(b.checkpoint_at)
			FROM tally.balances b LEFT JOIN LATERAL (
			  SELECT k.at, k.last_entry, k.last_balance_after FROM tally.balance_checkpoints k
			  WHERE k.account_id = b.account_id AND k.slot = b.slot ORDER BY k.at DESC LIMIT 1) k ON true`).Scan(&wrong, &some); err != nil {
			t.Fatal(err)
		}
		return wrong, some
	}
	through := func() (done bool) {
		t.Helper()
		if err := super.QueryRow(ctx, `SELECT through IS NOT DISTINCT FROM (SELECT max(at) FROM tally.checkpoints)
			FROM tally.checkpoint_carry`).Scan(&done); err != nil {
			t.Fatal(err)
		}
		return done
	}
	if wrong, some := carried(); wrong != 0 || some < 6 || !through() {
		t.Fatalf("after checkpointing, %d rows carry a checkpoint not their latest, %d carry one, carried through: %v", wrong, some, through())
	}
	pays := func(key string, from ledger.AccountID) bool {
		t.Helper()
		out, err := f.store.PostTransaction(ctx, request(t, key, usd(from, to, 5)))
		return err == nil && out.Status == 201
	}
	// The checkpoint history made wrong (and later than the carried one) does not stop a
	// transfer; the carried checkpoint made wrong does.
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_entry = last_entry + 1, last_balance_after = last_balance_after + 7
		WHERE account_id = $1`, [16]byte(quiet[0]))
	if !pays("q0", quiet[0]) {
		t.Error("a transfer read the checkpoint history, not the checkpoint its balance carries")
	}
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_entry = last_entry - 1, last_balance_after = last_balance_after - 7
		WHERE account_id = $1`, [16]byte(quiet[0]))
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_entry = last_entry + 1, last_balance_after = last_balance_after + 7
		WHERE account_id = $1`, [16]byte(quiet[3]))
	if _, err := super.Exec(ctx, "UPDATE tally.balances SET posted = posted WHERE account_id = $1", [16]byte(quiet[3])); err != nil {
		t.Errorf("a balance row was checked against the checkpoint history, not the checkpoint it carries: %v", err)
	}
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_entry = last_entry - 1, last_balance_after = last_balance_after - 7
		WHERE account_id = $1`, [16]byte(quiet[3]))
	tamper(t, super, `UPDATE tally.balances SET checkpoint_balance = checkpoint_balance + 7 WHERE account_id = $1`, [16]byte(quiet[1]))
	if pays("q1", quiet[1]) {
		t.Error("a transfer was checked against a wrong carried checkpoint and passed")
	}
	for name, verify := range map[string]func(context.Context) ([]store.Violation, error){"full": f.store.Verify, "incremental": f.store.VerifyIncremental} {
		if vs, _ := verify(ctx); !reports(vs, "balances carry their latest checkpoint") {
			t.Errorf("%s verify missed a wrong carried checkpoint: %v", name, vs)
		}
	}
	tamper(t, super, `UPDATE tally.balances SET checkpoint_balance = checkpoint_balance - 7 WHERE account_id = $1`, [16]byte(quiet[1]))
	// While a carry is under way (here: as just after the upgrade), the history is read.
	tamper(t, super, `UPDATE tally.checkpoint_carry SET through = NULL`)
	tamper(t, super, `UPDATE tally.balances SET checkpoint_at = NULL, checkpoint_entry = NULL, checkpoint_balance = NULL`)
	f.verify() // nothing carried, and the carry not through: nothing wrong
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_balance_after = last_balance_after + 7 WHERE account_id = $1`, [16]byte(quiet[2]))
	if pays("q2", quiet[2]) {
		t.Error("with no checkpoint carried, a transfer did not read the checkpoint history")
	}
	tamper(t, super, `UPDATE tally.balance_checkpoints SET last_balance_after = last_balance_after - 7 WHERE account_id = $1`, [16]byte(quiet[2]))
	if !pays("q2-again", quiet[2]) {
		t.Error("with no checkpoint carried, a transfer failed")
	}
	// The carry, a row at a time: one call per balance row and one to finish. A new
	// checkpoint made midway (here: the carry's target made older) starts it again.
	var rows int
	if err := super.QueryRow(ctx, "SELECT count(*) FROM tally.balances").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	app, err := pgx.Connect(ctx, f.db.AppDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	carry := func(most int) (calls int, done bool) {
		t.Helper()
		for ; !done && calls < most; calls++ {
			if err := app.QueryRow(ctx, "SELECT tally.carry_checkpoints(1)").Scan(&done); err != nil {
				t.Fatal(err)
			}
		}
		return calls, done
	}
	if _, done := carry(rows / 2); done {
		t.Fatalf("the carry of %d rows ended after %d", rows, rows/2)
	}
	tamper(t, super, `UPDATE tally.checkpoint_carry SET target = (SELECT min(at) FROM tally.checkpoints)`)
	if calls, done := carry(2 * rows); !done || calls != rows+1 {
		t.Errorf("carried again in %d calls (done: %v), want %d: all %d rows and one to finish", calls, done, rows+1, rows)
	}
	if wrong, some := carried(); wrong != 0 || some < 6 || !through() {
		t.Errorf("after the carry, %d rows carry a checkpoint not their latest, %d carry one, carried through: %v", wrong, some, through())
	}
	if calls, done := carry(2); calls != 1 || !done {
		t.Errorf("a done carry took %d calls", calls)
	}
	if !pays("q2-carried", quiet[2]) || !pays("q1-again", quiet[1]) {
		t.Error("an account stopped paying once carried")
	}
	// Only the carry writes a carried checkpoint, and it names a checkpoint row.
	if _, err := app.Exec(ctx, "UPDATE tally.balances SET checkpoint_balance = 0 WHERE account_id = $1", [16]byte(quiet[3])); err == nil {
		t.Error("the service wrote a carried checkpoint")
	}
	if _, err := app.Exec(ctx, "INSERT INTO tally.balances (account_id, floor, checkpoint_at, checkpoint_entry, checkpoint_balance) VALUES ($1, 0, now(), 1, 1)", [16]byte(quiet[3])); err == nil ||
		!strings.Contains(err.Error(), "permission denied") {
		t.Errorf("the service inserted a carried checkpoint: %v", err)
	}
	if _, err := super.Exec(ctx, "UPDATE tally.balances SET checkpoint_at = checkpoint_at - interval '1 day' WHERE account_id = $1", [16]byte(quiet[3])); err == nil {
		t.Error("a balance carried a checkpoint that does not exist")
	}
	f.verify()
}

func reports(vs []store.Violation, check string) bool {
	for _, v := range vs {
		if v.Check == check {
			return true
		}
	}
	return false
}

// An account's history pages come newest first and whole whatever the partitions, even
// where a transaction made just before a boundary committed after ones made just after
// it; and a page that the newest partitions fill reads no older partition.
func TestHistoryPagesReadRecentPartitionsFirst(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	t0 := time.Now().UTC().Truncate(24 * time.Hour).Add(-4 * 24 * time.Hour)
	super := f.db.SuperConn(t)
	journaltest.DailyPartitionsSince(t, super, t0)
	a, b, c := f.account("a", 0), f.account("b", 0), f.account("c", 0)
	madeAt := func(key string, at time.Time, p ledger.Posting) {
		t.Helper()
		r := request(t, key, p)
		r.Transaction.ID = journaltest.TransactionMadeAt(t, 0, at)
		if out := f.post2(r); out.Status != 201 {
			t.Fatalf("%s: %d %s", key, out.Status, out.Body)
		}
	}
	madeAt("fund-b", t0.Add(-2*time.Hour), usd(f.external, b, 10_000))
	for d := range 3 {
		for i := range 3 {
			at := t0.Add(time.Duration(d)*24*time.Hour + time.Duration(i+1)*time.Hour)
			madeAt(fmt.Sprintf("a-%d-%d", d, i), at, usd(b, a, int64(10*d+i+1)))
			madeAt(fmt.Sprintf("c-%d-%d", d, i), at, usd(b, c, int64(10*d+i+1)))
		}
	}
	// d's newest entries are yesterday's, which a page reads first (the checkpoint
	// before the latest is yesterday's start, but in the hour after midnight), and the
	// newest of all was made a millisecond before yesterday began but committed after.
	d := f.account("d", 0)
	for i := range 3 {
		madeAt(fmt.Sprint("d-", i), t0.Add(3*24*time.Hour+time.Duration(i+1)*time.Hour), usd(b, d, 1))
	}
	madeAt("d-crossing", t0.Add(3*24*time.Hour-time.Millisecond), usd(b, d, 100))
	// c's newest entries are made now, in the partitions a page reads first.
	for i := range 3 {
		f.post(fmt.Sprint("c-now-", i), usd(b, c, 1))
	}
	// Made a millisecond before day 2 began, committed after day 2's: the highest entry
	// id of a's history lies in day 1's partition.
	madeAt("a-crossing", t0.Add(48*time.Hour-time.Millisecond), usd(b, a, 100))
	if _, err := f.store.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil {
		t.Fatal(err)
	}

	for _, acc := range []ledger.AccountID{a, b, c, d} {
		rows, err := super.Query(ctx, "SELECT id FROM tally.entries WHERE account_id = $1 ORDER BY id DESC", [16]byte(acc))
		if err != nil {
			t.Fatal(err)
		}
		want, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			t.Fatal(err)
		}
		for _, limit := range []int{1, 2, 3, 4, 50} {
			var got []int64
			for before := int64(0); ; {
				page, err := f.store.Entries(ctx, acc, before, limit)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page {
					got = append(got, e.ID)
				}
				if len(page) < limit {
					break
				}
				before = page[len(page)-1].ID
			}
			if !slices.Equal(got, want) {
				t.Errorf("account %s in pages of %d: %v, want %v", acc, limit, got, want)
			}
		}
	}

	// c's newest three entries are today's: a page of two reads no partition from before
	// the checkpoint before the latest (yesterday's or, in the hour after midnight, the
	// day before's).
	// pg_stat_get_xact_numscans counts this backend's index and table scans not yet
	// reported (this transaction's, and maybe earlier ones'), so what a read adds to it
	// is what the read scanned.
	scansBefore := func(q string, args ...any) int64 {
		t.Helper()
		tx, err := super.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx) //nolint:errcheck // read only
		count := func() int64 {
			var scans int64
			if err := tx.QueryRow(ctx, `SELECT coalesce(sum(pg_stat_get_xact_numscans(i.indexrelid) + pg_stat_get_xact_numscans(i.indrelid)), -1)
				FROM tally.journal_partitions p JOIN pg_index i ON i.indrelid = ('tally.entries_' || p.suffix)::regclass
				WHERE p.starts < $1`, t0.Add(48*time.Hour)).Scan(&scans); err != nil || scans < 0 {
				t.Fatalf("count scans: %d %v", scans, err)
			}
			return scans
		}
		start := count()
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			t.Fatal(err)
		}
		return count() - start
	}
	if n := scansBefore("SELECT * FROM tally.entries_page($1, 9223372036854775807, 2)", [16]byte(c)); n != 0 {
		t.Errorf("a page of two of c's entries scanned older partitions %d times", n)
	}
	// The same page read as one query over the journal reads every partition: the
	// counter above sees what it should.
	if n := scansBefore("SELECT * FROM tally.entries WHERE account_id = $1 ORDER BY account_id DESC, id DESC LIMIT 2", [16]byte(c)); n < 1 {
		t.Errorf("one query over the journal scanned the older partitions %d times", n)
	}
	// The crossing entries come first on their accounts' newest pages.
	for _, acc := range []ledger.AccountID{a, d} {
		if page, err := f.store.Entries(ctx, acc, 0, 2); err != nil || len(page) != 2 || page[0].Amount != 100 {
			t.Errorf("%s's newest page: %+v %v, want the crossing entry first", acc, page, err)
		}
	}
}

// The carry locks balance rows in the one order every writer uses (slot-0 rows by account,
// then slot rows by account and slot), so a writer holding an account of one slot and
// reaching for a slotted account with a lower id waits for no one, and the carry goes on.
func TestCarryLocksInTheWritersOrder(t *testing.T) {
	f := newFixture(t, 4)
	ctx := context.Background()
	super := f.db.SuperConn(t)
	t0 := time.Now().UTC().Truncate(24 * time.Hour).Add(-3 * 24 * time.Hour)
	journaltest.DailyPartitionsSince(t, super, t0)
	slotted := f.slotted("slotted", 2)
	single := f.account("single", 0)
	for string(single[:]) < string(slotted[:]) {
		single = f.account("single", 0)
	}
	r := request(t, "fund", usd(f.external, single, 100))
	r.Transaction.ID = journaltest.TransactionMadeAt(t, 0, t0.Add(-2*time.Hour))
	f.post2(r)
	if made, err := f.store.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil || made == 0 {
		t.Fatalf("checkpoints made %d: %v", made, err)
	}
	tamper(t, super, `UPDATE tally.checkpoint_carry SET through = NULL, target = NULL, after_account = NULL, after_slot = NULL`)

	// a writer, in its order: the account of one slot, then the slotted one's slot
	writer, err := pgx.Connect(ctx, f.db.AppDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(ctx)
	wtx, err := writer.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer wtx.Rollback(ctx) //nolint:errcheck // committed below unless the test failed
	lock := func(id ledger.AccountID, slot int) error {
		_, err := wtx.Exec(ctx, "SELECT 1 FROM tally.balances WHERE account_id = $1 AND slot = $2 FOR UPDATE", [16]byte(id), slot)
		return err
	}
	if err := lock(single, 0); err != nil {
		t.Fatal(err)
	}
	carried := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, f.db.AppDSN())
		if err == nil {
			defer conn.Close(ctx)
			_, err = conn.Exec(ctx, "SELECT tally.carry_checkpoints(1000)")
		}
		carried <- err
	}()
	for waiting := 0; waiting == 0; {
		select {
		case err := <-carried:
			t.Fatalf("the carry did not wait for the writer's lock: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if err := super.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND query LIKE '%carry_checkpoints%'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
	}
	if err := lock(slotted, 1); err != nil {
		t.Fatalf("the writer's second lock: %v", err)
	}
	if err := wtx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-carried; err != nil {
		t.Errorf("the carry, once the writer committed: %v", err)
	}
}
