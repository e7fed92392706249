package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/journaltest"
	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/server"
	"github.com/tallyhq/tally/ledger/store"
)

// ScaleConfig is one bench-scale run: a large database and a small one, generated side by
// side on one PostgreSQL, measured the same way in the same run.
type ScaleConfig struct {
	Accounts, Entries           int // the large database
	SmallAccounts, SmallEntries int // the small one
	Months                      int // history spread over this many monthly partitions
	Clients                     int
	Duration                    time.Duration // each measurement
	Rate                        int           // transfers a second of the paced run
	Out, JSON                   io.Writer
	// SharedBuffers is PostgreSQL's shared_buffers for the run ("" keeps the benches'
	// production sizing).
	SharedBuffers string
	// Keep, when set, is a directory the PostgreSQL data goes to and stays in after the
	// run, so the generated databases can be looked into (pg_ctl start -D Keep/data).
	Keep string
}

// ScaleResult is one database's figures.
type ScaleResult struct {
	Database      string  `json:"database"`
	Accounts      int     `json:"accounts"`
	Entries       int     `json:"entries"`
	GenerateSec   float64 `json:"generate_seconds"`
	BalanceP50    float64 `json:"balance_p50_ms"`
	BalanceP99    float64 `json:"balance_p99_ms"`
	BalanceAtP50  float64 `json:"balance_at_p50_ms"`
	BalanceAtP99  float64 `json:"balance_at_p99_ms"`
	HistoryP50    float64 `json:"history_page_p50_ms"`
	HistoryP99    float64 `json:"history_page_p99_ms"`
	Transfers     float64 `json:"uniform_transfers_per_second"`
	TransferP99   float64 `json:"uniform_transfer_p99_ms"`
	PacedP50      float64 `json:"paced_transfer_p50_ms"`
	PacedP99      float64 `json:"paced_transfer_p99_ms"`
	PacedRate     float64 `json:"paced_transfers_per_second"`
	VerifyFullSec float64 `json:"verify_full_seconds"`
	VerifyIncrSec float64 `json:"verify_incremental_seconds"`
	BytesPerAcct  float64 `json:"bytes_per_account"`
	BytesPerEntry float64 `json:"bytes_per_entry"`
	Errors        int64   `json:"errors"`
	Violations    int     `json:"invariant_violations"`
}

// scaleFunding is each generated account's first deposit: far more than the generated
// transfers (at most 100 minor units each) can take away.
const scaleFunding = 1_000_000

// RunScale generates both databases, measures each, prints the comparison and returns the
// results, small first.
func RunScale(ctx context.Context, cfg ScaleConfig) ([]ScaleResult, error) {
	dir := cfg.Keep
	if dir == "" {
		tmp, err := os.MkdirTemp("", "tally-bench-scale-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	params := instance.ServerParams()
	maps.Copy(params, productionSizing)
	params["max_connections"] = strconv.Itoa(2*cfg.Clients + 50)
	params["maintenance_work_mem"] = "1GB"
	if cfg.SharedBuffers != "" {
		params["shared_buffers"] = cfg.SharedBuffers
	}
	pg, err := postgres.Start(ctx, postgres.Config{DataDir: filepath.Join(dir, "data"), Params: params})
	if err != nil {
		return nil, err
	}
	defer pg.Stop() //nolint:errcheck // the directory goes too, unless kept
	fmt.Fprintf(cfg.Out, "PostgreSQL %s, shared_buffers %s\n", dir, params["shared_buffers"])
	admin, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE tally_service LOGIN"); err != nil {
		return nil, err
	}
	// Both databases are generated before either is measured, and the generator's writes
	// are flushed by a checkpoint, so the two are measured alike: on one PostgreSQL whose
	// memory holds both, neither paying for the load's dirty pages or its first writes
	// after a checkpoint. A small database measured alone, before the large one exists,
	// would have the server's memory to itself.
	var dbs []*scaleDB
	defer func() {
		for _, db := range dbs {
			db.close(ctx)
		}
	}()
	for _, size := range []struct {
		name              string
		accounts, entries int
	}{{"small", cfg.SmallAccounts, cfg.SmallEntries}, {"large", cfg.Accounts, cfg.Entries}} {
		fmt.Fprintf(cfg.Out, "generating %s: %d accounts, %d entries over %d months...\n", size.name, size.accounts, size.entries, cfg.Months)
		db, err := generateDatabase(ctx, pg, admin, cfg, size.name, size.accounts, size.entries)
		if db != nil {
			dbs = append(dbs, db)
		}
		if err != nil {
			return nil, fmt.Errorf("%s database: %w", size.name, err)
		}
		fmt.Fprintf(cfg.Out, "%s: generated in %.0f s\n", size.name, db.r.GenerateSec)
	}
	if _, err := admin.Exec(ctx, "CHECKPOINT"); err != nil {
		return nil, fmt.Errorf("checkpoint after generating: %w", err)
	}
	var out []ScaleResult
	for _, db := range dbs {
		r, err := db.measure(ctx, cfg)
		if err != nil {
			return out, fmt.Errorf("%s database: %w", db.r.Database, err)
		}
		out = append(out, r)
		if cfg.JSON != nil {
			_ = json.NewEncoder(cfg.JSON).Encode(r)
		}
		fmt.Fprintf(cfg.Out, "%s: measured\n", db.r.Database)
	}
	printScale(cfg.Out, out)
	return out, nil
}

// scaleDB is one generated database, ready to be measured.
type scaleDB struct {
	r      ScaleResult
	super  *pgx.Conn
	pool   *pgxpool.Pool
	st     *store.Store
	appDSN string
	gen    generated
}

func (db *scaleDB) close(ctx context.Context) {
	if db.pool != nil {
		db.pool.Close()
	}
	db.super.Close(ctx)
}

// generateDatabase creates one database, sets its schema up and generates its ledger.
func generateDatabase(ctx context.Context, pg *postgres.Server, admin *pgx.Conn, cfg ScaleConfig, name string, accounts, entries int) (*scaleDB, error) {
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return nil, err
	}
	super, err := pgx.Connect(ctx, pg.DSN(name))
	if err != nil {
		return nil, err
	}
	db := &scaleDB{r: ScaleResult{Database: name, Accounts: accounts, Entries: entries}, super: super}
	if _, err := migrations.Setup(ctx, super, 0, "tally_service"); err != nil {
		return db, err
	}
	db.appDSN = strings.Replace(pg.DSN(name), postgres.Superuser+"@", "tally_service@", 1)
	if db.pool, err = benchPool(ctx, db.appDSN, cfg.Clients); err != nil {
		return db, err
	}
	db.st = store.New(db.pool)
	start := time.Now()
	if db.gen, err = generate(ctx, pg.DSN(name), super, db.st, accounts, entries, cfg.Months); err != nil {
		return db, fmt.Errorf("generate: %w", err)
	}
	db.r.GenerateSec = time.Since(start).Seconds()
	return db, nil
}

// measure measures one generated database through the service.
func (db *scaleDB) measure(ctx context.Context, cfg ScaleConfig) (ScaleResult, error) {
	r, gen, st, super, appDSN := db.r, db.gen, db.st, db.super, db.appDSN
	accounts, entries := r.Accounts, r.Entries
	svc, err := startService(ctx, server.Config{ShardDSNs: []string{appDSN}, MaxConnsPerShard: int32(cfg.Clients + 4)})
	if err != nil {
		return r, err
	}
	defer func() { svc.stop(); <-svc.done }()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * cfg.Clients, MaxConnsPerHost: 2 * cfg.Clients}}
	get := func(path string) opFunc {
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			return httpCall(ctx, client, "GET", "http://"+svc.api+strings.ReplaceAll(path, "{id}", gen.accounts[rng.IntN(len(gen.accounts))].String()), "", nil)
		}
	}
	var seq atomic.Int64
	transfer := func(ctx context.Context, rng *rand.Rand) (bool, error) {
		from, to := rng.IntN(len(gen.accounts)), rng.IntN(len(gen.accounts)-1)
		if to >= from {
			to++
		}
		key := fmt.Sprintf("scale-%d", seq.Add(1))
		return httpCall(ctx, client, "POST", "http://"+svc.api+"/v1/transfers", transferBody(gen.accounts[from], gen.accounts[to], ""),
			map[string]string{"Idempotency-Key": key})
	}
	measure := func(op opFunc) (Result, error) {
		// Warmed as long as measured, so each database's working set is read in as far
		// as memory holds it, as in one that has been serving.
		warm, stop := context.WithTimeout(ctx, cfg.Duration)
		drive(ctx, warm, op, cfg.Clients, 0, &Result{})
		stop()
		var res Result
		run, stop := context.WithTimeout(ctx, cfg.Duration)
		defer stop()
		if msg := drive(ctx, run, op, cfg.Clients, 0, &res); msg != "" {
			return res, errors.New(msg)
		}
		if res.Rejected > 0 { // nothing here should be refused: a refusal is a harness bug
			return res, fmt.Errorf("%d requests refused", res.Rejected)
		}
		return res, nil
	}
	balance, err := measure(get("/v1/accounts/{id}/balance"))
	if err != nil {
		return r, fmt.Errorf("balance reads: %w", err)
	}
	r.BalanceP50, r.BalanceP99 = balance.P50ms, balance.P99ms
	moment := gen.t0.Add(time.Since(gen.t0) / 2).UTC().Format(time.RFC3339)
	balanceAt, err := measure(get("/v1/accounts/{id}/balance?at=" + moment))
	if err != nil {
		return r, fmt.Errorf("balance at a moment: %w", err)
	}
	r.BalanceAtP50, r.BalanceAtP99 = balanceAt.P50ms, balanceAt.P99ms
	history, err := measure(get("/v1/accounts/{id}/entries?limit=50"))
	if err != nil {
		return r, fmt.Errorf("history pages: %w", err)
	}
	r.HistoryP50, r.HistoryP99 = history.P50ms, history.P99ms
	uniform, err := measure(transfer)
	if err != nil {
		return r, fmt.Errorf("uniform transfers: %w", err)
	}
	r.Transfers, r.TransferP99, r.Errors = uniform.PerSecond, uniform.P99ms, uniform.Errors
	paced := drivePaced(ctx, transfer, cfg.Rate, cfg.Duration)
	r.PacedP50, r.PacedP99, r.PacedRate = paced.P50ms, paced.P99ms, paced.PerSecond
	r.Errors += paced.Errors

	// What the databases hold is checked, and what checking costs is measured.
	t := time.Now()
	vs, err := st.Verify(ctx)
	if err != nil {
		return r, fmt.Errorf("verify: %w", err)
	}
	r.VerifyFullSec, r.Violations = time.Since(t).Seconds(), len(vs)
	t = time.Now()
	vs, err = st.VerifyIncremental(ctx)
	if err != nil {
		return r, fmt.Errorf("incremental verify: %w", err)
	}
	r.VerifyIncrSec, r.Violations = time.Since(t).Seconds(), r.Violations+len(vs)
	for _, v := range vs {
		fmt.Fprintln(cfg.Out, "VIOLATION", v)
	}
	var perAccount, perEntry float64
	if err := super.QueryRow(ctx, `SELECT
		(pg_total_relation_size('tally.accounts') + pg_total_relation_size('tally.balances') + pg_total_relation_size('tally.balance_checkpoints'))::float8 / $1,
		(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		 WHERE i.inhparent IN ('tally.entries'::regclass, 'tally.transactions'::regclass))::float8 / $2`,
		accounts, entries).Scan(&perAccount, &perEntry); err != nil {
		return r, fmt.Errorf("sizes: %w", err)
	}
	r.BytesPerAcct, r.BytesPerEntry = perAccount, perEntry
	return r, nil
}

// drivePaced starts op at rate a second for d, whatever the answers take (an open loop,
// so a slow answer cannot slow the arrivals), and measures each from when it was due.
func drivePaced(ctx context.Context, op opFunc, rate int, d time.Duration) Result {
	due := make(chan time.Time, rate)
	h := newHistogram()
	var mu sync.Mutex
	var errs atomic.Int64
	var wg sync.WaitGroup
	for w := range 512 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for at := range due {
				if rejected, err := op(ctx, rng); err != nil || rejected {
					errs.Add(1)
				}
				mu.Lock()
				h.add(time.Since(at))
				mu.Unlock()
			}
		}()
	}
	start := time.Now()
	n := int(d.Seconds() * float64(rate))
	for i := range n {
		at := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
		time.Sleep(time.Until(at))
		due <- at
	}
	close(due)
	wg.Wait()
	elapsed := time.Since(start)
	return Result{Ops: h.n, PerSecond: float64(h.n) / elapsed.Seconds(), P50ms: h.quantileMs(.5), P99ms: h.quantileMs(.99), Errors: errs.Load()}
}

// generated is what generate made: the accounts, and when its history begins.
type generated struct {
	accounts []ledger.AccountID
	t0       time.Time
}

// generate fills an empty ledger database with accounts and a journal, by COPY and with
// the database's checks off (session_replication_role = replica), so every row is made
// right here: each account is funded from the external account once, then uniform
// transfers of 1 to 100 move between random accounts, their times spread over monthly
// partitions of the past months, running balances, balances and versions exact. The
// journal's indexes are dropped first and built after, checkpoints are made, and verify
// (measured after) checks it all.
func generate(ctx context.Context, dsn string, super *pgx.Conn, st *store.Store, accounts, entries, months int) (generated, error) {
	now := time.Now().UTC()
	t0 := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC).AddDate(0, -months, 0)
	g := generated{t0: t0}
	if err := journaltest.Repartition(ctx, super, t0, "1 month"); err != nil {
		return g, err
	}
	extID, err := ledger.NewAccountID(0)
	if err != nil {
		return g, err
	}
	_, external, _, err := st.RegisterAsset(ctx, "USD", 2, extID)
	if err != nil {
		return g, err
	}
	g.accounts = make([]ledger.AccountID, accounts)
	for i := range g.accounts {
		if g.accounts[i], err = ledger.NewAccountID(0); err != nil {
			return g, err
		}
	}
	transactions := max(entries/2, accounts)
	for _, stmt := range []string{
		"SET session_replication_role = replica",
		"DROP INDEX tally.entries_by_account, tally.entries_by_slot, tally.entries_by_transaction",
		"ALTER TABLE tally.transactions DROP CONSTRAINT transactions_pkey",
		`DO $$ DECLARE r record; BEGIN
		   FOR r IN SELECT c.conrelid::regclass AS t, c.conname FROM pg_constraint c JOIN pg_inherits i ON i.inhrelid = c.conrelid
		            WHERE i.inhparent = 'tally.entries'::regclass AND c.contype = 'p' LOOP
		     EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.t, r.conname);
		   END LOOP; END $$`,
	} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			return g, fmt.Errorf("%.60s: %w", stmt, err)
		}
	}
	// Transaction k is made at t0 + k·step; its id carries that millisecond and k.
	template, err := ledger.NewTransactionID(0)
	if err != nil {
		return g, err
	}
	span := now.Add(-2 * time.Hour).Sub(t0)
	txID := func(k int) ([16]byte, time.Time) {
		at := t0.Add(time.Duration(float64(span) * float64(k) / float64(transactions)))
		id := [16]byte(template)
		ms := at.UnixMilli()
		for i := range 6 {
			id[i] = byte(ms >> (8 * (5 - i)))
		}
		for i := range 5 {
			id[15-i] = byte(k >> (8 * i))
		}
		return id, at
	}
	errc := make(chan error, 1)
	go func() {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			errc <- err
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "SET session_replication_role = replica"); err != nil {
			errc <- err
			return
		}
		k := 0
		_, err = conn.CopyFrom(ctx, pgx.Identifier{"tally", "transactions"}, []string{"id", "metadata", "created_at"},
			pgx.CopyFromFunc(func() ([]any, error) {
				if k == transactions {
					return nil, nil
				}
				id, at := txID(k)
				k++
				return []any{id, map[string]any{}, at}, nil
			}))
		errc <- err
	}()
	balance := make([]int64, accounts)
	version := make([]int64, accounts)
	var extBalance, extVersion int64
	rng := rand.New(rand.NewPCG(1, 2))
	k, leg := 0, 0
	var entryID int64
	var cur struct {
		tx       [16]byte
		from, to int // -1: the external account
		amount   int64
	}
	_, err = super.CopyFrom(ctx, pgx.Identifier{"tally", "entries"},
		[]string{"id", "transaction_id", "posting", "account_id", "asset", "amount", "balance_after", "slot"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if leg == 0 {
				if k == transactions {
					return nil, nil
				}
				cur.tx, _ = txID(k)
				if k < accounts {
					cur.from, cur.to, cur.amount = -1, k, scaleFunding
				} else {
					cur.from, cur.to, cur.amount = rng.IntN(accounts), rng.IntN(accounts-1), 1+rng.Int64N(100)
					if cur.to >= cur.from {
						cur.to++
					}
				}
				k++
			}
			entryID++
			side, sign := cur.from, int64(-1)
			if leg == 1 {
				side, sign = cur.to, 1
			}
			leg = 1 - leg
			var acct [16]byte
			var after int64
			if side < 0 {
				extBalance += sign * cur.amount
				extVersion++
				acct, after = [16]byte(external), extBalance
			} else {
				balance[side] += sign * cur.amount
				version[side]++
				acct, after = [16]byte(g.accounts[side]), balance[side]
			}
			return []any{entryID, cur.tx, int16(0), acct, "USD", sign * cur.amount, after, nil}, nil
		}))
	if err != nil {
		return g, fmt.Errorf("copy entries: %w", err)
	}
	if err := <-errc; err != nil {
		return g, fmt.Errorf("copy transactions: %w", err)
	}
	n := 0
	if _, err := super.CopyFrom(ctx, pgx.Identifier{"tally", "accounts"}, []string{"id", "owner", "asset", "scale"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if n == accounts {
				return nil, nil
			}
			n++
			return []any{[16]byte(g.accounts[n-1]), "owner-" + strconv.Itoa(n-1), "USD", int16(2)}, nil
		})); err != nil {
		return g, fmt.Errorf("copy accounts: %w", err)
	}
	n = 0
	if _, err := super.CopyFrom(ctx, pgx.Identifier{"tally", "balances"}, []string{"account_id", "floor", "posted", "version", "slot"},
		pgx.CopyFromFunc(func() ([]any, error) {
			if n == accounts {
				return nil, nil
			}
			n++
			return []any{[16]byte(g.accounts[n-1]), int64(0), balance[n-1], version[n-1], int16(0)}, nil
		})); err != nil {
		return g, fmt.Errorf("copy balances: %w", err)
	}
	for _, stmt := range []string{
		fmt.Sprintf("UPDATE tally.balances SET posted = %d, version = %d WHERE account_id = '%s'", extBalance, extVersion, external),
		fmt.Sprintf("SELECT setval('tally.entries_id_seq', %d)", entryID),
		"CREATE INDEX entries_by_account ON tally.entries (account_id, id)",
		"CREATE INDEX entries_by_slot ON tally.entries (account_id, slot, id) WHERE slot IS NOT NULL",
		"CREATE INDEX entries_by_transaction ON tally.entries (transaction_id)",
		"ALTER TABLE tally.transactions ADD CONSTRAINT transactions_pkey PRIMARY KEY (id)",
		`DO $$ DECLARE r record; BEGIN
		   FOR r IN SELECT i.inhrelid::regclass AS t FROM pg_inherits i WHERE i.inhparent = 'tally.entries'::regclass LOOP
		     EXECUTE format('ALTER TABLE %s ADD PRIMARY KEY (id)', r.t);
		   END LOOP; END $$`,
		"RESET session_replication_role",
		// As a ledger that has lived: every row frozen and its hint bits set, statistics
		// current. Measured right after the load instead, the first reads set hint bits
		// and autovacuum rewrites the tables under the measurements.
		"VACUUM (FREEZE, ANALYZE)",
		"SELECT tally.make_checkpoints()",
		// Carried as the service carries it, in one pass with the checks off like the load.
		"SET session_replication_role = replica",
		"DO $$ BEGIN WHILE NOT tally.carry_checkpoints(1000000) LOOP END LOOP; END $$",
		"RESET session_replication_role",
		"VACUUM (FREEZE, ANALYZE) tally.balances, tally.balance_checkpoints, tally.checkpoint_carry",
	} {
		if _, err := super.Exec(ctx, stmt); err != nil {
			return g, fmt.Errorf("%.60s: %w", stmt, err)
		}
	}
	return g, nil
}

// printScale sets the large database beside the small one, with the targets.
func printScale(w io.Writer, rs []ScaleResult) {
	if len(rs) != 2 {
		return
	}
	s, l := rs[0], rs[1]
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nfigure\tsmall (%d accounts, %d entries)\tlarge (%d accounts, %d entries)\tlarge/small\ttarget\n", s.Accounts, s.Entries, l.Accounts, l.Entries)
	row := func(name string, sv, lv float64, unit, target string) {
		ratio := "-"
		if sv > 0 {
			ratio = fmt.Sprintf("%.2fx", lv/sv)
		}
		fmt.Fprintf(tw, "%s\t%.2f %s\t%.2f %s\t%s\t%s\n", name, sv, unit, lv, unit, ratio, target)
	}
	row("generated in", s.GenerateSec, l.GenerateSec, "s", "")
	row("balance read p50", s.BalanceP50, l.BalanceP50, "ms", "within 1.5x")
	row("balance read p99", s.BalanceP99, l.BalanceP99, "ms", "within 1.5x; under 100 ms")
	row("balance at a moment p50", s.BalanceAtP50, l.BalanceAtP50, "ms", "")
	row("balance at a moment p99", s.BalanceAtP99, l.BalanceAtP99, "ms", "")
	row("history page (50) p50", s.HistoryP50, l.HistoryP50, "ms", "within 1.5x")
	row("history page (50) p99", s.HistoryP99, l.HistoryP99, "ms", "within 1.5x")
	row("uniform transfers", s.Transfers, l.Transfers, "/s", "within 1.5x")
	row("uniform transfer p99", s.TransferP99, l.TransferP99, "ms", "within 1.5x")
	row("paced transfers", s.PacedRate, l.PacedRate, "/s", "the pace asked")
	row("paced transfer p50", s.PacedP50, l.PacedP50, "ms", "")
	row("paced transfer p99", s.PacedP99, l.PacedP99, "ms", "under 500 ms")
	row("verify, full", s.VerifyFullSec, l.VerifyFullSec, "s", "")
	row("verify, incremental", s.VerifyIncrSec, l.VerifyIncrSec, "s", "")
	row("bytes per account", s.BytesPerAcct, l.BytesPerAcct, "B", "")
	row("bytes per entry", s.BytesPerEntry, l.BytesPerEntry, "B", "")
	fmt.Fprintf(tw, "errors\t%d\t%d\t\t0\n", s.Errors, l.Errors)
	fmt.Fprintf(tw, "invariant violations\t%d\t%d\t\t0\n", s.Violations, l.Violations)
	tw.Flush()
}
