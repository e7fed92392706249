package migrations_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/migrations"
)

// TestCDCStreamsTheJournal runs PostgreSQL with logical decoding, enables change data
// capture (twice: it tolerates a rerun) and decodes, through the publication, what a
// transfer writes: the journal's tables, and not the service's bookkeeping. The CDC
// login may read the journal and write nothing.
func TestCDCStreamsTheJournal(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "tally-cdc-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // postgres may run as another user
		t.Fatal(err)
	}
	pg, err := postgres.Start(ctx, postgres.Config{DataDir: filepath.Join(dir, "data"), Params: map[string]string{"wal_level": "logical"}})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop() //nolint:errcheck // best effort
	conn, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := migrations.Setup(ctx, conn, 0, ""); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := migrations.EnableCDC(ctx, conn, "tally_cdc", "cdc-password"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, "SELECT pg_create_logical_replication_slot('debezium', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	// a transfer, as the service writes it
	_, err = conn.Exec(ctx, `
		SELECT tally.register_asset('USD', 2::smallint, '01a20ccb-8be0-72d1-ad00-00342cb369a0');
		INSERT INTO tally.accounts (id, owner, asset, scale) VALUES ('01a20ccb-8be0-72d1-ad00-00342cb369ae', 'x', 'USD', 2);
		INSERT INTO tally.balances (account_id, floor) VALUES ('01a20ccb-8be0-72d1-ad00-00342cb369ae', 0);
		SELECT * FROM tally.post_batch(ARRAY['c'], ARRAY['k'], ARRAY[sha256('k')], ARRAY['01a20ccb-8be0-72d1-ad00-00342cb369af'::uuid],
			ARRAY[now()], ARRAY['{}'::jsonb], ARRAY[1], ARRAY['01a20ccb-8be0-72d1-ad00-00342cb369a0'::uuid],
			ARRAY['01a20ccb-8be0-72d1-ad00-00342cb369ae'::uuid], ARRAY[500::bigint], ARRAY['USD'])`)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `SELECT data FROM pg_logical_slot_peek_binary_changes('debezium', NULL, NULL,
		'proto_version', '1', 'publication_names', $1)`, migrations.CDCPublication)
	if err != nil {
		t.Fatal(err)
	}
	var stream []byte
	for rows.Next() {
		var b []byte
		if err := rows.Scan(&b); err != nil {
			t.Fatal(err)
		}
		stream = append(stream, b...)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"transactions", "entries", "accounts"} {
		if !bytes.Contains(stream, []byte(table)) {
			t.Errorf("the publication's stream names no %s", table)
		}
	}
	for _, table := range []string{"idempotency_keys", "outbox", "balances"} {
		if bytes.Contains(stream, []byte(table+"\x00")) {
			t.Errorf("the publication's stream carries %s", table)
		}
	}

	cdc, err := pgx.Connect(ctx, strings.Replace(pg.DSN("postgres"), postgres.Superuser+"@", "tally_cdc:cdc-password@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer cdc.Close(ctx)
	var replicates bool
	if err := cdc.QueryRow(ctx, "SELECT rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&replicates); err != nil || !replicates {
		t.Errorf("the CDC login may not replicate: %v", err)
	}
	if _, err := cdc.Exec(ctx, "SELECT count(*) FROM tally.entries"); err != nil {
		t.Errorf("the CDC login cannot read the journal: %v", err)
	}
	for _, stmt := range []string{"SELECT count(*) FROM tally.idempotency_keys", "DELETE FROM tally.reversals", "SELECT count(*) FROM tally.outbox"} {
		if _, err := cdc.Exec(ctx, stmt); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s as the CDC login: %v", stmt, err)
		}
	}
}
