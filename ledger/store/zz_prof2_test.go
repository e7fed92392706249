package store_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/store"
)

func TestZZMarks(t *testing.T) {
	if os.Getenv("TALLY_PROF2") == "" {
		t.Skip()
	}
	size, _ := strconv.Atoi(os.Getenv("TALLY_PROF2"))
	labels := strings.Fields(os.Getenv("LABELS"))
	const accounts = 10000
	f := newFixture(t, 4)
	ctx := context.Background()
	ids := make([]ledger.AccountID, accounts)
	raw := make([][16]byte, accounts)
	for i := range ids {
		ids[i], _ = ledger.NewAccountID(0)
		raw[i] = [16]byte(ids[i])
	}
	if _, err := f.store.Pool().Exec(ctx, `WITH a AS (INSERT INTO tally.accounts (id, owner, asset, scale)
		SELECT id, 'b' || ord, 'USD', 2 FROM unnest($1::uuid[]) WITH ORDINALITY u(id, ord) RETURNING id, balance_floor)
		INSERT INTO tally.balances (account_id, floor) SELECT id, balance_floor FROM a`, raw); err != nil {
		t.Fatal(err)
	}
	var reqs []store.Request
	for i := 0; i < accounts; i += 64 {
		var ps []ledger.Posting
		for _, id := range ids[i:min(i+64, accounts)] {
			ps = append(ps, usd(f.external, id, 1<<40))
		}
		reqs = append(reqs, request(t, fmt.Sprint("seed", i), ps...))
	}
	if _, err := f.store.PostBatch(ctx, reqs); err != nil {
		t.Fatal(err)
	}
	cfg, _ := pgxpool.ParseConfig(f.db.SuperDSN())
	cfg.MaxConns = 1
	var notices []string
	cfg.ConnConfig.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	pool, _ := pgxpool.NewWithConfig(ctx, cfg)
	st := store.New(pool)
	rng := rand.New(rand.NewPCG(1, 2))
	sums := make([]time.Duration, len(labels))
	var total, endToCommit time.Duration
	const batches = 300
	for b := 0; b < batches+20; b++ {
		reqs := make([]store.Request, size)
		for i := range reqs {
			reqs[i] = request(t, fmt.Sprintf("p%d-%d", b, i), usd(ids[0], ids[1+rng.IntN(accounts-1)], 1))
		}
		start := time.Now()
		if _, err := st.PostBatch(ctx, reqs); err != nil {
			t.Fatal(err)
		}
		el := time.Since(start)
		var ts []time.Time
		for _, l := range labels {
			var v string
			pool.QueryRow(ctx, "SELECT current_setting('tally.m"+l+"')").Scan(&v)
			at, err := time.Parse("2006-01-02 15:04:05.999999-07", v)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, at)
		}
		var now time.Time
		pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&now)
		if b == -110 {
			for _, q := range []string{"LOAD 'auto_explain'", "SET auto_explain.log_min_duration = 0", "SET auto_explain.log_nested_statements = on", "SET auto_explain.log_analyze = on", "SET auto_explain.log_level = notice"} {
				if _, err := pool.Exec(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
		}
		if b == 111 {
			os.WriteFile("/tmp/explain.txt", []byte(strings.Join(notices, "\n\n")), 0o644)
		}
		if b < 20 {
			continue
		}
		total += el
		for i := 1; i < len(ts); i++ {
			sums[i] += ts[i].Sub(ts[i-1])
		}
		_ = now
		endToCommit += 0
	}
	t.Logf("wall per batch %.1f us", float64(total.Microseconds())/batches)
	for i := 1; i < len(labels); i++ {
		t.Logf("%-12s -> %-12s %8.1f us/batch", labels[i-1], labels[i], float64(sums[i].Microseconds())/batches)
	}
}
