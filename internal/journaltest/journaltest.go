// Package journaltest sets a journal in the past: partitions that have already ended, and
// transaction ids made at chosen moments, so checkpoints and archival have boundaries to
// work on (tests, and the history bench-scale generates).
package journaltest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/ledger"
)

// DailyPartitionsSince re-partitions an empty journal, through the superuser conn, into
// "history" before t0 and partitions a day wide from t0 until a day from now.
func DailyPartitionsSince(t testing.TB, super *pgx.Conn, t0 time.Time) {
	t.Helper()
	if err := Repartition(context.Background(), super, t0, "1 day"); err != nil {
		t.Fatal(err)
	}
}

// Repartition re-partitions an empty journal, through a superuser conn, into "history"
// before t0 and partitions of the given width (a PostgreSQL interval) from t0 until
// one width from now: a journal whose partitions lie in the past, for tests and for
// bench-scale's generated history.
func Repartition(ctx context.Context, super *pgx.Conn, t0 time.Time, width string) error {
	bound := "'" + t0.UTC().Format(time.RFC3339) + "'::timestamptz"
	if _, err := super.Exec(ctx, fmt.Sprintf(`DO $$ DECLARE r record; BEGIN
		FOR r IN SELECT suffix FROM tally.journal_partitions LOOP
		  EXECUTE format('DROP TABLE tally.%%I, tally.%%I', 'transactions_' || r.suffix, 'entries_' || r.suffix);
		END LOOP;
		DELETE FROM tally.journal_partitions;
		UPDATE tally.journal_settings SET partition_width = %[2]s;
		EXECUTE format('CREATE TABLE tally.transactions_history PARTITION OF tally.transactions FOR VALUES FROM (MINVALUE) TO (%%L)', tally.uuid_at(%[1]s));
		EXECUTE format('CREATE TABLE tally.entries_history PARTITION OF tally.entries FOR VALUES FROM (MINVALUE) TO (%%L)', tally.uuid_at(%[1]s));
		ALTER TABLE tally.entries_history ADD PRIMARY KEY (id);
		INSERT INTO tally.journal_partitions (starts, ends, suffix) VALUES ('-infinity', %[1]s, 'history');
		END $$`, bound, "'"+width+"'::interval")); err != nil {
		return fmt.Errorf("journaltest: repartition: %w", err)
	}
	var made int
	if err := super.QueryRow(ctx, "SELECT tally.ensure_partitions($1::interval)", width).Scan(&made); err != nil || made < 1 {
		return fmt.Errorf("journaltest: partitions of %s: made %d: %w", width, made, err)
	}
	return nil
}

// TransactionMadeAt is a transaction id for the shard as if made at the given moment.
func TransactionMadeAt(t testing.TB, shard int, at time.Time) ledger.TransactionID {
	t.Helper()
	id, err := ledger.NewTransactionID(shard)
	if err != nil {
		t.Fatal(err)
	}
	ms := at.UnixMilli()
	for i := range 6 {
		id[i] = byte(ms >> (8 * (5 - i)))
	}
	return id
}
