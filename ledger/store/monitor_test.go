package store_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/migrations"
)

// The operator's login (tally migrate --monitor-login) counts customer accounts and can
// do nothing else: no table read, no write, no other function. It used to log in as the
// superuser just to count.
func TestMonitorLoginOnlyCounts(t *testing.T) {
	f := newFixture(t, 2)
	f.account("a", 0)
	f.account("b", 0)
	ctx := context.Background()
	super := f.db.SuperConn(t)
	if err := migrations.GrantMonitor(ctx, super, "monitor_test", "pw-not-used-under-trust"); err != nil {
		t.Fatal(err)
	}
	if err := migrations.GrantMonitor(ctx, super, "monitor_test", "again"); err != nil {
		t.Fatalf("granting twice: %v", err)
	}
	conn, err := pgx.Connect(ctx, strings.Replace(f.db.SuperDSN(), postgres.Superuser+"@", "monitor_test@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, "SELECT tally.count_accounts()").Scan(&n); err != nil || n != 2 {
		t.Fatalf("count: %d %v", n, err)
	}
	for _, stmt := range []string{
		"SELECT count(*) FROM tally.accounts",
		"SELECT count(*) FROM tally.balances",
		"SELECT count(*) FROM tally.idempotency_keys",
		"INSERT INTO tally.assets (code, scale) VALUES ('EUR', 2)",
		"SELECT tally.set_account_status(gen_random_uuid(), 'frozen')",
	} {
		if _, err := conn.Exec(ctx, stmt); err == nil || !strings.Contains(err.Error(), "permission denied") {
			t.Errorf("%s: %v, want permission denied", stmt, err)
		}
	}
}
