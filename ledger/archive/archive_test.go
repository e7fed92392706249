package archive_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/cli"
	"github.com/tallyhq/tally/internal/journaltest"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/archive"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// Partitions past the horizon are archived oldest first, each file checks out and,
// restored into another database, passes verify; the partitions are gone, reads before
// the horizon say so, and the ledger goes on, verified, over what remains.
func TestArchiveRoundTrip(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewDB(t)
	st := store.New(db.AppPool(t, 4))
	ownerPool, err := pgxpool.New(ctx, db.SuperDSN()) // archival drops partitions: the owner's login
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ownerPool.Close)
	owner := store.New(ownerPool)
	now := time.Now().UTC()
	t0 := now.Truncate(24 * time.Hour).Add(-4 * 24 * time.Hour)
	journaltest.DailyPartitionsSince(t, db.SuperConn(t), t0)

	extID, _ := ledger.NewAccountID(0)
	var external ledger.AccountID
	_, external, _, err = st.RegisterAsset(ctx, "USD", 2, extID)
	if err != nil {
		t.Fatal(err)
	}
	open := func(owner string) ledger.AccountID {
		id, _ := ledger.NewAccountID(0)
		if _, err := st.CreateAccount(ctx, ledger.Account{ID: id, Owner: owner, Asset: "USD"}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	a, b, c := open("a"), open("b"), open("c")
	n := 0
	post := func(at time.Time, from, to ledger.AccountID, amount int64) ledger.TransactionID {
		t.Helper()
		n++
		id := journaltest.TransactionMadeAt(t, 0, at)
		out, err := st.PostTransaction(ctx, store.Request{Caller: "test", Key: fmt.Sprint("k", n), Hash: sha256.Sum256([]byte(fmt.Sprint(n))),
			Transaction: ledger.Transaction{ID: id, CreatedAt: at.Truncate(time.Microsecond),
				Postings: []ledger.Posting{{From: from, To: to, Amount: amount, Asset: "USD"}}}, Body: []byte(`{}`)})
		if err != nil || out.Status != 201 {
			t.Fatalf("post at %s: %v %+v", at, err, out)
		}
		return id
	}
	old := post(t0.Add(-2*time.Hour), external, c, 500) // c never moves again until after archival
	post(t0.Add(-time.Hour), external, a, 1000)
	for d := range 4 {
		day := t0.Add(time.Duration(d)*24*time.Hour + time.Hour)
		post(day, external, b, int64(100+d))
		post(day.Add(time.Minute), a, b, int64(10+d))
		post(day.Add(2*time.Minute), b, a, 1)
	}
	if _, err := st.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	before := t0.Add(48 * time.Hour)
	// A run that stopped while writing left its temporary file behind.
	identity, err := st.Identity(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, identity+"-history.tar.gz.tmp"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	done, err := archive.Run(ctx, owner, dir, before, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("archive: %v", err)
	}
	if len(done) != 3 || done[0].Partition != "history" || done[2].Ends != before {
		t.Fatalf("archived %+v, want history and the first two days", done)
	}
	if again, err := archive.Run(ctx, owner, dir, before, slog.New(slog.DiscardHandler)); err != nil || len(again) != 0 {
		t.Errorf("archiving again: %+v %v", again, err)
	}

	// The partitions are gone, and reads before the horizon say the history is archived.
	if h, ok, err := st.Horizon(ctx); err != nil || !ok || !h.Equal(before) {
		t.Errorf("horizon %s %v %v, want %s", h, ok, err, before)
	}
	if _, err := st.Transaction(ctx, old); codeOf(err) != ledger.CodeHistoryArchived {
		t.Errorf("reading an archived transaction: %v", err)
	}
	if _, err := st.BalanceAt(ctx, a, t0.Add(time.Hour)); codeOf(err) != ledger.CodeHistoryArchived {
		t.Errorf("a balance before the horizon: %v", err)
	}
	var left int
	if err := db.SuperConn(t).QueryRow(ctx, `SELECT count(*) FROM pg_class WHERE relname IN ('transactions_history', 'entries_history')`).Scan(&left); err != nil || left != 0 {
		t.Errorf("history tables left: %d %v", left, err)
	}

	// The ledger goes on over what remains, verified in full and since the last checkpoint.
	post(now.Add(-time.Second), c, a, 5)
	post(now.Add(-time.Second), a, b, 7)
	for name, verify := range map[string]func(context.Context) ([]store.Violation, error){"full": st.Verify, "incremental": st.VerifyIncremental} {
		if vs, err := verify(ctx); err != nil || len(vs) > 0 {
			t.Errorf("%s verify after archival: %v %v", name, vs, err)
		}
	}

	// Each archive, restored into a database of its own, passes verify.
	elsewhere := pgtest.NewEmptyDB(t).SuperConn(t)
	for _, m := range done {
		schema := "restored_" + m.Partition
		got, err := archive.Restore(ctx, elsewhere, m.File, schema)
		if err != nil || got.Rows["entries"] != m.Rows["entries"] {
			t.Fatalf("restore %s: %v %+v", m.File, err, got)
		}
		if vs, err := archive.VerifyRestored(ctx, elsewhere, schema); err != nil || len(vs) > 0 {
			t.Errorf("restored %s: %v %v", m.Partition, vs, err)
		}
	}
	var entries int64
	for _, m := range done {
		entries += m.Rows["entries"]
	}
	if entries != 2*(2+3*2) {
		t.Errorf("%d entries archived, want %d", entries, 2*(2+3*2))
	}
	// The commands: archive run finds nothing more; archive restore verifies a file.
	var out strings.Builder
	if code := cli.Run(ctx, []string{"archive", "run", "--database-url", db.SuperDSN(), "--dir", dir, "--keep-months", "1"}, &out, &out); code != 0 ||
		!strings.Contains(out.String(), "nothing to archive") {
		t.Errorf("tally archive run: %d %s", code, out.String())
	}
	out.Reset()
	if code := cli.Run(ctx, []string{"archive", "restore", "--file", done[2].File, "--database-url", pgtest.NewEmptyDB(t).SuperDSN()}, &out, &out); code != 0 ||
		!strings.Contains(out.String(), "ok: partition "+done[2].Partition) {
		t.Errorf("tally archive restore: %d %s", code, out.String())
	}
	// Verify has teeth: an amount changed in a restored archive is found.
	if _, err := elsewhere.Exec(ctx, `UPDATE restored_history.entries SET amount = amount + 1, balance_after = balance_after + 1
		WHERE id = (SELECT max(id) FROM restored_history.entries)`); err != nil {
		t.Fatal(err)
	}
	if vs, _ := archive.VerifyRestored(ctx, elsewhere, "restored_history"); len(vs) == 0 {
		t.Error("a restored archive with a changed amount passed verify")
	}
	// And the file check has teeth: one byte changed in a file fails it.
	bad := filepath.Join(t.TempDir(), "bad.tar.gz")
	raw, err := os.ReadFile(done[1].File)
	if err != nil {
		t.Fatal(err)
	}
	raw[len(raw)/2] ^= 0xff
	if err := os.WriteFile(bad, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := archive.Check(bad, done[1]); err == nil {
		t.Error("a damaged archive checked out")
	}
	// Only the oldest attached partition may go, and only once checkpointed.
	var newest string
	if err := db.SuperConn(t).QueryRow(ctx, `SELECT suffix FROM tally.journal_partitions WHERE state = 'attached' ORDER BY starts DESC LIMIT 1`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	if err := owner.DropArchivedPartition(ctx, newest, []byte(`{}`)); err == nil {
		t.Error("the newest partition was dropped before older ones")
	}
}

func codeOf(err error) ledger.Code {
	var le *ledger.Error
	if errors.As(err, &le) {
		return le.Code
	}
	return ""
}
