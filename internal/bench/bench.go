// Package bench is the throughput harness behind `tally bench` and `make bench`. It
// starts its own PostgreSQL with a production shard's settings, seeds accounts, and drives
// transfers and balance reads through the HTTP API and, separately, straight into the
// shard set, in the scenarios uniform, hot, hot-credit, mixed and reads. In the same run,
// on the same server, with the same client code and client counts, it drives the
// reference ceiling (ReferenceCeiling, in its own database) and reports every result as a
// ratio to it: machines here are noisy, so ratios within one run are what count. Each
// result also says what a transfer cost the database (WAL and bytes on disk) and the
// machine's load while it ran.
package bench

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/server"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

// Scenario names.
const (
	Uniform   = "uniform"    // random accounts among all
	Hot       = "hot"        // every transfer debits or credits one account, at random
	HotCredit = "hot-credit" // every transfer credits one account: a merchant paid by many
	Mixed     = "mixed"      // 90% uniform, 10% hot
	Reads     = "reads"      // balance reads of random accounts
	// CrossShard moves money between an account on shard 0 and one on shard 1, every
	// transfer crossing shards (ledger/crossshard), in either direction.
	CrossShard = "cross-shard"
	// PendingPost makes a pending transfer between two random accounts and posts it: one
	// operation is the pair.
	PendingPost = "pending-post"
)

// Scenarios are every scenario, in the order make bench runs them.
var Scenarios = []string{Uniform, Hot, HotCredit, Mixed, Reads, CrossShard, PendingPost, Replays}

// Modes: through the HTTP API, straight into the shard set (batched), Tally's own
// transaction function called once per transfer with no batching, and the reference.
const (
	ModeHTTP      = "http"
	ModeStore     = "store"
	ModeOneCall   = "one-call"
	ModeReference = "reference"
)

// Settings of the bench's PostgreSQL beyond instance.ServerParams: what a production
// shard on a machine like this one is given (the sample LedgerCluster sets the same).
var productionSizing = map[string]string{
	"shared_buffers":     "1GB",
	"max_wal_size":       "4GB",
	"checkpoint_timeout": "15min",
	// Counts the time spent inside each function (pg_stat_user_functions), Tally's
	// post_batch and the reference's transfer alike: what the database spends on a
	// transfer, locks waited for included, apart from parsing, commit and the network.
	"track_functions": "all",
}

// statsSettle is how long a backend gone idle may wait before it publishes its
// statistics (PostgreSQL flushes them at most once a second).
const statsSettle = 1200 * time.Millisecond

// Config is one harness run.
type Config struct {
	Duration  time.Duration
	Clients   []int
	Scenarios []string
	Modes     []string // http, wrk, store and/or one-call; the reference always runs for transfer scenarios
	// Rounds repeats every scenario and client count, reference and modes in turn, so
	// that each ratio is measured next to its own reference; with more than one, the
	// medians are reported too. Zero means one.
	Rounds   int
	Accounts int
	// LargeAccounts, when above Accounts, adds a last scenario: the accounts grow to this
	// many (in Tally and in the reference) and uniform runs again at the largest client
	// count, to show what a big table costs.
	LargeAccounts int
	// Reference is the SQL of the reference ceiling; nil means ReferenceCeiling.
	Reference []byte
	// HotSlots is how many balance slots Tally's hot account has (0 or 1: one row).
	HotSlots int
	// MinOps is how many operations each client completes at least, however long that
	// takes past Duration: a run on a slow or busy machine still measures something.
	MinOps int
	// EventsRate and EventsFor pace the commit-to-Kafka run of the event modes:
	// EventsRate transfers a second for EventsFor (defaults: 2,000/s for 10 s).
	EventsRate int
	EventsFor  time.Duration
	Batching   batcher.Config // for the service and the store mode alike
	Out        io.Writer      // the table
	JSON       io.Writer      // one JSON object per result
}

// Result is one measured scenario.
type Result struct {
	Scenario  string  `json:"scenario"`
	Mode      string  `json:"mode"`
	Clients   int     `json:"clients"`
	Accounts  int     `json:"accounts"`
	Seconds   float64 `json:"seconds"`
	Ops       int64   `json:"ops"`
	PerSecond float64 `json:"per_second"`
	P50ms     float64 `json:"p50_ms"`
	P90ms     float64 `json:"p90_ms"`
	P99ms     float64 `json:"p99_ms"`
	MaxMs     float64 `json:"max_ms"`
	Errors    int64   `json:"errors"`
	Rejected  int64   `json:"rejected"`
	Ratio     float64 `json:"ratio_to_reference,omitempty"`
	MeanBatch float64 `json:"mean_batch,omitempty"` // requests per database transaction
	// WALBytes is WAL written per operation (pg_current_wal_lsn before and after the run);
	// DiskBytes is growth of the database's files per operation, HeapBytes and IndexBytes
	// that of its ledger tables and of their indexes.
	WALBytes   float64 `json:"wal_bytes_per_op"`
	DiskBytes  float64 `json:"disk_bytes_per_op"`
	HeapBytes  float64 `json:"heap_bytes_per_op"`
	IndexBytes float64 `json:"index_bytes_per_op"`
	Load1      float64 `json:"load1"` // the machine's one-minute load average at the end
	// CPU per operation, in microseconds: PostgreSQL's processes; this process (the ledger
	// service, and in modes other than wrk the Go clients driving it); and wrk. Busy is
	// their sum over the run as a share of every core the machine has.
	PostgresCPUus float64 `json:"postgres_cpu_us_per_op"`
	// FunctionUs is wall time inside the write function per operation (Tally's
	// post_batch, the reference's transfer), row locks waited for included.
	FunctionUs   float64 `json:"function_us_per_op"`
	ProcessCPUus float64 `json:"process_cpu_us_per_op"`
	WrkCPUus     float64 `json:"wrk_cpu_us_per_op,omitempty"`
	Busy         float64 `json:"cpu_busy"`
	wrkCPU       time.Duration
	HeapMB       float64 `json:"heap_mb"`     // in use at the end of the run
	HeapMaxMB    float64 `json:"heap_max_mb"` // the most in use, sampled each second
	Violations   int     `json:"invariant_violations"`
	// Round is which round this is (1-based); 0 marks a line of medians over Rounds.
	Round  int `json:"round"`
	Rounds int `json:"rounds,omitempty"`
}

// fundingPerAccount is each account's starting balance in minor units: far more than a
// run can move, so transfers are never refused for funds and every one is real work.
const fundingPerAccount = 1_000_000_000_00

// Run executes the harness and cleans up after itself.
func Run(ctx context.Context, cfg Config) ([]Result, error) {
	env, err := start(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer env.close()
	rounds := max(cfg.Rounds, 1)
	emit := func(r Result) {
		if cfg.JSON != nil {
			line, _ := json.Marshal(r)
			fmt.Fprintln(cfg.JSON, string(line))
		}
	}
	var results, medians []Result
	measure := func(scenario string, clients int) error {
		modes := modesFor(scenario, cfg.Modes)
		byMode := map[string][]Result{}
		for round := 1; round <= rounds; round++ {
			var reference float64
			for _, mode := range inTurn(modes, round) {
				r, err := env.run(ctx, scenario, mode, clients, cfg.Duration, cfg.MinOps)
				if err != nil {
					return fmt.Errorf("bench: %s/%s/%d: %w", scenario, mode, clients, err)
				}
				r.Round = round
				if mode == ModeReference {
					reference = r.PerSecond
				} else if reference > 0 {
					r.Ratio = r.PerSecond / reference
				}
				results = append(results, r)
				byMode[mode] = append(byMode[mode], r)
				emit(r)
			}
		}
		if rounds > 1 {
			for _, mode := range modes {
				m := median(byMode[mode])
				medians = append(medians, m)
				emit(m)
			}
		}
		return nil
	}
	for _, scenario := range cfg.Scenarios {
		for _, clients := range cfg.Clients {
			if err := measure(scenario, clients); err != nil {
				return results, err
			}
		}
	}
	if cfg.LargeAccounts > len(env.accounts) {
		if err := env.grow(ctx, cfg.LargeAccounts); err != nil {
			return results, fmt.Errorf("bench: grow to %d accounts: %w", cfg.LargeAccounts, err)
		}
		// what a big table costs is not Redis's question, nor the outbox's
		cfg.Modes = slices.DeleteFunc(slices.Clone(cfg.Modes), func(m string) bool { return viaRedis(m) || viaEvents(m) })
		if err := measure(Uniform, slices.Max(cfg.Clients)); err != nil {
			return results, err
		}
	}
	var latency *Result
	if env.events != nil {
		rate, d := cfg.EventsRate, cfg.EventsFor
		if rate <= 0 {
			rate = EventsRate
		}
		if d <= 0 {
			d = eventsLatencyD
		}
		r, err := env.eventLatency(ctx, rate, d)
		if err != nil {
			return results, fmt.Errorf("bench: commit to Kafka: %w", err)
		}
		emit(r)
		latency = &r
	}
	if cfg.Out != nil {
		printTable(cfg.Out, results)
		summary := results
		if len(medians) > 0 {
			fmt.Fprintf(cfg.Out, "\nmedians over %d rounds (each ratio is to the reference of its own round):\n", rounds)
			printTable(cfg.Out, medians)
			summary = medians
		}
		printTargets(cfg.Out, summary)
		printRedisTargets(cfg.Out, summary)
		printEventsTargets(cfg.Out, summary, latency)
		printGRPCTargets(cfg.Out, summary)
	}
	results = append(results, medians...)
	if latency != nil {
		results = append(results, *latency)
	}
	return results, nil
}

// inTurn is the order of the modes in a round: the reference first (each ratio is to
// its own round's), the others rotated a place each round, so that none is always the
// first or the last to run (the database grows and checkpoints as a run goes on).
func inTurn(modes []string, round int) []string {
	first := 0
	if len(modes) > 0 && modes[0] == ModeReference {
		first = 1
	}
	rest := modes[first:]
	if len(rest) == 0 {
		return modes
	}
	k := (round - 1) % len(rest)
	return append(append(slices.Clone(modes[:first]), rest[k:]...), rest[:k]...)
}

// median summarises rounds of one scenario, mode and client count: each rate, ratio,
// latency and heap figure is the median of that figure over the rounds (so the line need
// not be any one round), and the counts and seconds are totals.
func median(rs []Result) Result {
	m := rs[0]
	m.Round, m.Rounds = 0, len(rs)
	of := func(get func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = get(r)
		}
		slices.Sort(v)
		if len(v)%2 == 1 {
			return v[len(v)/2]
		}
		return (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	m.PerSecond = of(func(r Result) float64 { return r.PerSecond })
	m.Ratio = of(func(r Result) float64 { return r.Ratio })
	m.MeanBatch = of(func(r Result) float64 { return r.MeanBatch })
	m.P50ms = of(func(r Result) float64 { return r.P50ms })
	m.P90ms = of(func(r Result) float64 { return r.P90ms })
	m.P99ms = of(func(r Result) float64 { return r.P99ms })
	m.MaxMs = of(func(r Result) float64 { return r.MaxMs })
	m.HeapMB = of(func(r Result) float64 { return r.HeapMB })
	m.HeapMaxMB = of(func(r Result) float64 { return r.HeapMaxMB })
	m.WALBytes = of(func(r Result) float64 { return r.WALBytes })
	m.DiskBytes = of(func(r Result) float64 { return r.DiskBytes })
	m.HeapBytes = of(func(r Result) float64 { return r.HeapBytes })
	m.IndexBytes = of(func(r Result) float64 { return r.IndexBytes })
	m.Load1 = of(func(r Result) float64 { return r.Load1 })
	m.PostgresCPUus = of(func(r Result) float64 { return r.PostgresCPUus })
	m.FunctionUs = of(func(r Result) float64 { return r.FunctionUs })
	m.ProcessCPUus = of(func(r Result) float64 { return r.ProcessCPUus })
	m.WrkCPUus = of(func(r Result) float64 { return r.WrkCPUus })
	m.Busy = of(func(r Result) float64 { return r.Busy })
	m.Seconds, m.Ops, m.Errors, m.Rejected, m.Violations = 0, 0, 0, 0, 0
	for _, r := range rs {
		m.Seconds += r.Seconds
		m.Ops += r.Ops
		m.Errors += r.Errors
		m.Rejected += r.Rejected
		m.Violations += r.Violations
	}
	return m
}

func printTable(w io.Writer, results []Result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tmode\tclients\taccounts\tops/s\tx reference\tbatch\tp50 ms\tp99 ms\tmax ms\tWAL B/op\tdisk B/op\ttable B/op\tindex B/op\tfn µs/op\tpg µs/op\tgo µs/op\twrk µs/op\tCPU busy\terrors\trejected\tmax heap MB\tload\tviolations\t")
	for _, r := range results {
		ratio := ""
		if r.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", r.Ratio)
		}
		batch := ""
		if r.MeanBatch > 0 {
			batch = fmt.Sprintf("%.1f", r.MeanBatch)
		}
		wrk := ""
		if r.WrkCPUus > 0 {
			wrk = fmt.Sprintf("%.0f", r.WrkCPUus)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.0f\t%s\t%s\t%.2f\t%.2f\t%.1f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%.0f%%\t%d\t%d\t%.0f\t%.2f\t%d\t\n",
			r.Scenario, r.Mode, r.Clients, r.Accounts, r.PerSecond, ratio, batch, r.P50ms, r.P99ms, r.MaxMs, r.WALBytes, r.DiskBytes, r.HeapBytes, r.IndexBytes,
			r.FunctionUs, r.PostgresCPUus, r.ProcessCPUus, wrk, 100*r.Busy, r.Errors, r.Rejected, r.HeapMaxMB, r.Load1, r.Violations)
	}
	tw.Flush()
}

// printTargets sets the figures the performance targets name (at the largest client
// count, through the API) beside the targets themselves.
func printTargets(w io.Writer, results []Result) {
	clients, accounts, large := 0, 0, 0
	for _, r := range results {
		clients = max(clients, r.Clients)
	}
	for _, r := range results {
		if r.Clients == clients && r.Scenario == Uniform {
			if accounts == 0 || r.Accounts < accounts {
				accounts = r.Accounts
			}
			large = max(large, r.Accounts)
		}
	}
	find := func(scenario, mode string, n int) (Result, bool) {
		for _, r := range results {
			if r.Scenario == scenario && r.Mode == mode && r.Clients == clients && r.Accounts == n {
				return r, true
			}
		}
		return Result{}, false
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\ntarget (%d clients)\tmode\tmeasured\tmet\n", clients)
	line := func(target, mode string, value float64, unit string, met bool) {
		fmt.Fprintf(tw, "%s\t%s\t%.2f%s\t%s\n", target, mode, value, unit, yes(met))
	}
	for _, mode := range []string{ModeWrk, ModeHTTP} {
		if r, ok := find(Uniform, mode, accounts); ok {
			line("uniform >= 3x reference", mode, r.Ratio, "x", r.Ratio >= 3)
		}
		if r, ok := find(HotCredit, mode, accounts); ok {
			line("hot-credit >= 40x reference", mode, r.Ratio, "x", r.Ratio >= 40)
		}
		if r, ok := find(Hot, mode, accounts); ok {
			line("hot (debits and credits) >= 20x reference", mode, r.Ratio, "x", r.Ratio >= 20)
		}
		worst := 0.0
		for _, s := range []string{Uniform, Hot, HotCredit, Mixed} {
			if r, ok := find(s, mode, accounts); ok {
				worst = max(worst, r.P99ms)
			}
		}
		if worst > 0 {
			line("transfer p99 < 25 ms (worst scenario)", mode, worst, " ms", worst < 25)
		}
		if r, ok := find(Reads, mode, accounts); ok {
			line("balance-read p99 < 5 ms", mode, r.P99ms, " ms", r.P99ms < 5)
		}
		if r, ok := find(CrossShard, mode, accounts); ok {
			line("cross-shard >= 1.5x reference (issue 16)", mode, r.Ratio, "x", r.Ratio >= 1.5)
			line("cross-shard p99 < 50 ms (issue 16)", mode, r.P99ms, " ms", r.P99ms < 50)
		}
		small, ok1 := find(Uniform, mode, accounts)
		big, ok2 := find(Uniform, mode, large)
		if ok1 && ok2 && large > accounts {
			ratio := big.PerSecond / small.PerSecond
			line(fmt.Sprintf("uniform, %d accounts >= 0.8x of %d", large, accounts), mode, ratio, "x", ratio >= 0.8)
		}
		ref, ok1 := find(Uniform, ModeReference, accounts)
		if r, ok2 := find(Uniform, mode, accounts); ok1 && ok2 && ref.WALBytes > 0 {
			ratio := r.WALBytes / ref.WALBytes
			line(fmt.Sprintf("uniform WAL per transfer <= 1.5x reference's (%.0f B vs %.0f B)", r.WALBytes, ref.WALBytes), mode, ratio, "x", ratio <= 1.5)
			line("uniform bytes on disk per transfer <= 500", mode, r.DiskBytes, " B", r.DiskBytes <= 500)
		}
	}
	tw.Flush()
}

type env struct {
	dir    string
	pg     *postgres.Server
	pool   *pgxpool.Pool
	store  *store.Store
	direct *shardset.Set // one-call: one post_batch call per transfer
	ref    *reference
	// services are the running ledger services by mode: http's (and wrk's), and one for
	// each Redis mode asked for, all over the same databases.
	services map[string]*service
	redis    *redisServer // the Redis modes' own; nil without them
	events   *eventsEnv   // the event modes' Kafka; nil without them
	grpcConn *grpc.ClientConn
	grpc     ledgerv1.LedgerServiceClient // the grpc mode's client; nil without it
	http     *http.Client
	accounts []ledger.AccountID
	hot      ledger.AccountID
	external ledger.AccountID // the USD external account that funds the others
	// Shard 1, a second database on the same server: the other ends of CrossShard.
	pool1     *pgxpool.Pool
	store1    *store.Store
	external1 ledger.AccountID
	others    []ledger.AccountID
	hotSlots  int
	batching  batcher.Config
	seq       atomic.Int64
}

func start(ctx context.Context, cfg Config) (*env, error) {
	dir, err := os.MkdirTemp("", "tally-bench-")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, batching: cfg.Batching, hotSlots: cfg.HotSlots}
	ok := false
	defer func() {
		if !ok {
			e.close()
		}
	}()
	if err := os.Chmod(dir, 0o755); err != nil { // postgres may run as another user
		return nil, err
	}
	maxClients := slices.Max(cfg.Clients)
	params := instance.ServerParams()
	maps.Copy(params, productionSizing)
	params["max_connections"] = strconv.Itoa(8*maxClients + 50) // three services, the reference and the store modes
	e.pg, err = postgres.Start(ctx, postgres.Config{DataDir: filepath.Join(dir, "data"), Params: params})
	if err != nil {
		return nil, err
	}
	admin, err := pgx.Connect(ctx, e.pg.DSN("postgres"))
	if err != nil {
		return nil, err
	}
	defer admin.Close(ctx)
	_, err = admin.Exec(ctx, "CREATE DATABASE tally")
	if err == nil {
		_, err = admin.Exec(ctx, "CREATE ROLE tally_service LOGIN")
	}
	if err != nil {
		return nil, err
	}
	sql := cfg.Reference
	if sql == nil {
		sql = ReferenceCeiling
	}
	if e.ref, err = loadReference(ctx, admin, e.pg.DSN(referenceDatabase), sql, cfg.Accounts, maxClients+4); err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, e.pg.DSN("tally"))
	if err != nil {
		return nil, err
	}
	_, err = migrations.Setup(ctx, conn, 0, "tally_service")
	conn.Close(ctx)
	if err != nil {
		return nil, err
	}
	appDSN := strings.Replace(e.pg.DSN("tally"), postgres.Superuser+"@", "tally_service@", 1)
	if e.pool, err = benchPool(ctx, appDSN, maxClients); err != nil {
		return nil, err
	}
	e.store = store.New(e.pool)
	appDSN1, err := e.startSecondShard(ctx, admin, maxClients)
	if err != nil {
		return nil, fmt.Errorf("second shard: %w", err)
	}
	if e.direct, err = shardset.New([]*store.Store{e.store, e.store1}, nil, time.Now); err != nil {
		return nil, err
	}
	if err := e.seed(ctx, cfg.Accounts); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}

	// The service exactly as `tally ledger serve` runs it, on loopback; with Redis modes,
	// more of them, each configured as its mode says.
	base := server.Config{ShardDSNs: []string{appDSN, appDSN1}, MaxConnsPerShard: int32(maxClients + 4), Batching: cfg.Batching}
	e.services = map[string]*service{}
	if e.services[ModeHTTP], err = startService(ctx, base); err != nil {
		return nil, err
	}
	if err := e.startRedisServices(ctx, cfg.Modes, base); err != nil {
		return nil, err
	}
	if err := e.startEvents(ctx, cfg.Modes); err != nil {
		return nil, err
	}
	if err := e.startGRPC(cfg.Modes); err != nil {
		return nil, err
	}
	e.http = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * maxClients, MaxConnsPerHost: 2 * maxClients}}
	ok = true
	return e, nil
}

// service is one running ledger service.
type service struct {
	api, ops, grpc string // addresses
	stop           context.CancelFunc
	done           chan error
}

// startService runs the ledger service with cfg on loopback ports.
func startService(ctx context.Context, cfg server.Config) (*service, error) {
	opsPort, err := postgres.FreePort()
	if err != nil {
		return nil, err
	}
	grpcPort, err := postgres.FreePort()
	if err != nil {
		return nil, err
	}
	ready := make(chan string, 1)
	cfg.Listen, cfg.OpsListen, cfg.GRPCListen, cfg.Ready = "127.0.0.1:0", "127.0.0.1:"+strconv.Itoa(opsPort), "127.0.0.1:"+strconv.Itoa(grpcPort), ready
	cfg.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	runCtx, stop := context.WithCancel(ctx)
	s := &service{ops: cfg.OpsListen, grpc: cfg.GRPCListen, stop: stop, done: make(chan error, 1)}
	go func() { s.done <- server.Run(runCtx, cfg) }()
	select {
	case s.api = <-ready:
		return s, nil
	case err := <-s.done:
		stop()
		return nil, fmt.Errorf("ledger server: %w", err)
	}
}

func (e *env) close() {
	if e.grpcConn != nil {
		e.grpcConn.Close()
	}
	stopped := map[*service]bool{} // the event and grpc modes share ModeHTTP's
	for _, s := range e.services {
		if !stopped[s] {
			stopped[s] = true
			s.stop()
			<-s.done
		}
	}
	if e.redis != nil {
		e.redis.stop()
	}
	e.events.close()
	if e.pool != nil {
		e.pool.Close()
	}
	if e.pool1 != nil {
		e.pool1.Close()
	}
	if e.ref != nil {
		e.ref.close()
	}
	if e.pg != nil {
		_ = e.pg.Stop()
	}
	os.RemoveAll(e.dir)
}

// seed registers USD and opens and funds n accounts; the first is the hot one.
func (e *env) seed(ctx context.Context, n int) error {
	asset, _, err := e.direct.RegisterAsset(ctx, "USD", 2)
	if err != nil {
		return err
	}
	e.external, e.external1 = asset.ExternalAccounts[0], asset.ExternalAccounts[1]
	if err := e.openHot(ctx); err != nil {
		return err
	}
	if err := e.open(ctx, n-1); err != nil {
		return err
	}
	// Shard 1 holds as many accounts, the other ends of transfers between shards.
	e.others, err = openAccounts(ctx, e.pool1, e.store1, e.external1, 1, n, e.request)
	return err
}

// openHot opens the hot account, with hotSlots balance slots, funded as the reference's
// hot account is: with far more than any run moves, spread over its slots (each funding
// transaction credits one slot, chosen at random).
func (e *env) openHot(ctx context.Context) error {
	id, err := ledger.NewAccountID(0)
	if err != nil {
		return err
	}
	if _, err := e.store.CreateAccount(ctx, ledger.Account{ID: id, Owner: "bench-hot", Asset: "USD", BalanceSlots: max(e.hotSlots, 1)}); err != nil {
		return fmt.Errorf("open the hot account: %w", err)
	}
	fundings := 4 * max(e.hotSlots, 1)
	for range fundings {
		out, err := e.store.PostTransaction(ctx, e.request("seed", []ledger.Posting{{From: e.external, To: id, Amount: hotAccountBalance / int64(fundings), Asset: "USD"}}))
		if err != nil {
			return err
		}
		if out.Status != http.StatusCreated {
			return fmt.Errorf("funding the hot account: %d %s", out.Status, out.Body)
		}
	}
	e.hot = id
	e.accounts = append(e.accounts, id)
	return nil
}

// grow opens and funds accounts until there are total, and seeds the reference with as
// many.
func (e *env) grow(ctx context.Context, total int) error {
	if err := e.open(ctx, total-len(e.accounts)); err != nil {
		return err
	}
	if _, err := e.pool.Exec(ctx, "ANALYZE"); err != nil {
		return err
	}
	return e.ref.seed(ctx, total)
}

// open opens n more accounts on shard 0.
func (e *env) open(ctx context.Context, n int) error {
	fresh, err := openAccounts(ctx, e.pool, e.store, e.external, 0, n, e.request)
	e.accounts = append(e.accounts, fresh...)
	return err
}

// openAccounts opens n accounts on a shard in one statement and funds them from its
// external account through the ledger's own write path.
func openAccounts(ctx context.Context, pool *pgxpool.Pool, st *store.Store, external ledger.AccountID, shard, n int,
	request func(string, []ledger.Posting) store.Request) ([]ledger.AccountID, error) {
	fresh := make([]ledger.AccountID, n)
	ids := make([][16]byte, n)
	for i := range fresh {
		var err error
		if fresh[i], err = ledger.NewAccountID(shard); err != nil {
			return nil, err
		}
		ids[i] = [16]byte(fresh[i])
	}
	if _, err := pool.Exec(ctx, `
		WITH a AS (
			INSERT INTO tally.accounts (id, owner, asset, scale)
			SELECT id, 'bench-' || ord, 'USD', 2 FROM unnest($1::uuid[]) WITH ORDINALITY u(id, ord)
			RETURNING id, balance_floor)
		INSERT INTO tally.balances (account_id, floor) SELECT id, balance_floor FROM a`, ids); err != nil {
		return nil, err
	}
	const perRequest = ledger.MaxPostings
	var reqs []store.Request
	for i := 0; i < n; i += perRequest {
		var postings []ledger.Posting
		for _, id := range fresh[i:min(i+perRequest, n)] {
			postings = append(postings, ledger.Posting{From: external, To: id, Amount: fundingPerAccount, Asset: "USD"})
		}
		req := request("seed", postings)
		req.Transaction.ID, _ = ledger.NewTransactionID(shard)
		reqs = append(reqs, req)
	}
	for len(reqs) > 0 {
		chunk := reqs[:min(len(reqs), 500)]
		reqs = reqs[len(chunk):]
		outs, err := st.PostBatch(ctx, chunk)
		if err != nil {
			return nil, err
		}
		for _, o := range outs {
			if o.Status != http.StatusCreated {
				return nil, fmt.Errorf("funding: %d %s", o.Status, o.Body)
			}
		}
	}
	return fresh, nil
}

func (e *env) request(prefix string, postings []ledger.Posting) store.Request {
	key := prefix + "-" + strconv.FormatInt(e.seq.Add(1), 10)
	id, _ := ledger.NewTransactionID(0)
	return store.Request{Caller: "bench", Key: key, Hash: sha256.Sum256([]byte(key)), Body: []byte(`{}`),
		Transaction: ledger.Transaction{ID: id, Postings: postings, CreatedAt: time.Now().UTC()}}
}

// pick returns the indexes of the two accounts of the next transfer in a scenario; index 0
// is the hot account. Tally and the reference share it, so both see the same load.
func (e *env) pick(scenario string) func(rng *rand.Rand) (from, to int) {
	n := len(e.accounts)
	return func(rng *rand.Rand) (from, to int) {
		a := rng.IntN(n-1) + 1 // never the hot account unless chosen
		switch {
		case scenario == HotCredit:
			return a, 0
		case scenario == Hot || (scenario == Mixed && rng.IntN(10) == 0):
			if rng.IntN(2) == 0 {
				return 0, a
			}
			return a, 0
		}
		b := rng.IntN(n-2) + 1
		if b >= a {
			b++
		}
		return a, b
	}
}

type opFunc func(ctx context.Context, rng *rand.Rand) (rejected bool, err error)

func (e *env) op(scenario, mode string, batchedSet *shardset.Set) opFunc {
	if scenario == Replays {
		return e.replayOp(mode)
	}
	if mode == ModeGRPC {
		return e.grpcOp(scenario)
	}
	if scenario == Reads {
		if viaHTTP(mode) {
			return func(ctx context.Context, rng *rand.Rand) (bool, error) {
				id := e.accounts[rng.IntN(len(e.accounts))]
				return e.httpDoAt(ctx, mode, http.MethodGet, "/v1/accounts/"+id.String()+"/balance", "", nil)
			}
		}
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			_, err := batchedSet.Balance(ctx, e.accounts[rng.IntN(len(e.accounts))])
			return false, err
		}
	}
	if scenario == CrossShard || scenario == PendingPost {
		if mode == ModeReference { // the same yardstick: one transfer between two random accounts
			return e.ref.op(e.pick(Uniform))
		}
		return e.twoPhaseOp(scenario, mode, batchedSet)
	}
	pick := e.pick(scenario)
	switch mode {
	case ModeReference:
		return e.ref.op(pick)
	case ModeHTTP, ModeHTTPCache, ModeHTTPLimits, ModeHTTPNoOutbox, ModeHTTPEvents:
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			from, to := pick(rng)
			body := `{"from_account":"` + e.accounts[from].String() + `","to_account":"` + e.accounts[to].String() + `","amount":"1.00","asset":"USD"}`
			return e.httpDoAt(ctx, mode, http.MethodPost, "/v1/transfers", body, map[string]string{"Idempotency-Key": "h-" + strconv.FormatInt(e.seq.Add(1), 10)})
		}
	default:
		set := e.direct
		if mode == ModeStore {
			set = batchedSet
		}
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			from, to := pick(rng)
			key := "s-" + strconv.FormatInt(e.seq.Add(1), 10)
			out, err := set.Post(ctx, shardset.TransactionRequest{
				Caller: "bench", Key: key, Hash: sha256.Sum256([]byte(key)),
				Postings: []shardset.PostingRequest{{From: shardset.Account{ID: e.accounts[from]}, To: shardset.Account{ID: e.accounts[to]}, Amount: 100, Asset: "USD"}},
			}, func(context.Context, ledger.Transaction) ([]byte, error) { return []byte(`{}`), nil })
			if err != nil {
				return false, err
			}
			return out.Status != http.StatusCreated, nil
		}
	}
}

func (e *env) httpDo(ctx context.Context, method, path, body string, headers map[string]string) (bool, error) {
	return e.httpDoAt(ctx, ModeHTTP, method, path, body, headers)
}

// httpDoAt sends a request to the mode's service: true if it was refused (4xx).
func (e *env) httpDoAt(ctx context.Context, mode, method, path, body string, headers map[string]string) (bool, error) {
	return httpCall(ctx, e.http, method, "http://"+e.services[mode].api+path, body, headers)
}

// httpCall sends a request: true if it was refused (4xx), an error for 5xx.
func httpCall(ctx context.Context, client *http.Client, method, url, body string, headers map[string]string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return false, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return false, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode < 300:
		return false, nil
	case resp.StatusCode < 500:
		return true, nil
	default:
		return false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
}

// run drives one scenario with the given clients for the duration, then checks every
// invariant.
func (e *env) run(ctx context.Context, scenario, mode string, clients int, d time.Duration, minOps int) (Result, error) {
	batchedSet, b, stop, err := e.batchedSet(e.batching)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	if viaEvents(mode) {
		end, err := e.eventsRound(ctx, mode)
		if err != nil {
			return Result{}, err
		}
		defer end()
	}
	op := e.op(scenario, mode, batchedSet)
	if scenario == Replays {
		if err := e.applyReplayed(ctx, mode, clients); err != nil {
			return Result{}, err
		}
	}
	// Warm up, unmeasured: a connection compiles each database function it calls on first
	// use (tens of milliseconds for post_batch), once in a running service's life, not per
	// request; the reference warms up the same way.
	warmOp := op
	if mode == ModeWrk {
		warmOp = e.op(scenario, ModeHTTP, batchedSet)
	}
	warm, stopWarm := context.WithTimeout(ctx, min(max(d/4, time.Second), 3*time.Second))
	drive(ctx, warm, warmOp, clients, 0, &Result{})
	stopWarm()
	batchesBefore, err := e.batchStats(ctx, mode, b)
	if err != nil {
		return Result{}, err
	}
	database := "tally"
	if mode == ModeReference {
		database = referenceDatabase
	}
	costBefore, err := e.cost(ctx, database)
	if err != nil {
		return Result{}, err
	}
	runtime.GC()
	cpuBefore := e.cpu()
	runCtx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var heapMax atomic.Uint64
	sampler := time.NewTicker(time.Second)
	defer sampler.Stop()
	go func() {
		var ms runtime.MemStats
		for {
			select {
			case <-runCtx.Done():
				return
			case <-sampler.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > heapMax.Load() {
					heapMax.Store(ms.HeapInuse)
				}
			}
		}
	}()
	r := Result{Scenario: scenario, Mode: mode, Clients: clients, Accounts: len(e.accounts)}
	var firstErr string
	if mode == ModeWrk {
		if err := e.wrk(ctx, scenario, clients, d, &r); err != nil {
			return r, err
		}
		firstErr = "wrk does not say which (socket errors, timeouts and non-2xx statuses count)"
	} else {
		firstErr = drive(ctx, runCtx, op, clients, minOps, &r)
	}
	cpuAfter := e.cpu()
	if r.Ops > 0 {
		perOp := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(r.Ops) }
		r.PostgresCPUus = perOp(cpuAfter.postgres - cpuBefore.postgres)
		r.ProcessCPUus = perOp(cpuAfter.service - cpuBefore.service)
		r.WrkCPUus = perOp(r.wrkCPU)
		r.Busy = (r.PostgresCPUus + r.ProcessCPUus + r.WrkCPUus) * r.PerSecond / 1e6 / float64(runtime.NumCPU())
	}
	var mem runtime.MemStats
	runtime.ReadMemStats(&mem)
	r.HeapMB, r.HeapMaxMB = float64(mem.HeapInuse)/(1<<20), float64(max(heapMax.Load(), mem.HeapInuse))/(1<<20)
	batchesAfter, err := e.batchStats(ctx, mode, b)
	if err != nil {
		return r, err
	}
	if n := batchesAfter.Batches - batchesBefore.Batches; n > 0 {
		r.MeanBatch = float64(batchesAfter.Requests-batchesBefore.Requests) / float64(n)
	}
	time.Sleep(statsSettle)
	costAfter, err := e.cost(ctx, database)
	if err != nil {
		return r, err
	}
	if r.Ops > 0 {
		r.WALBytes = float64(costAfter.wal-costBefore.wal) / float64(r.Ops)
		r.DiskBytes = float64(costAfter.disk-costBefore.disk) / float64(r.Ops)
		r.HeapBytes = float64(costAfter.heap-costBefore.heap) / float64(r.Ops)
		r.IndexBytes = float64(costAfter.index-costBefore.index) / float64(r.Ops)
		r.FunctionUs = (costAfter.functionMs - costBefore.functionMs) * 1000 / float64(r.Ops)
	}
	r.Load1 = loadAverage()
	var violations []string
	if mode == ModeReference {
		violations, err = e.ref.violations(ctx)
	} else {
		violations, err = e.verifyAll(ctx)
	}
	if err != nil {
		return r, err
	}
	r.Violations = len(violations)
	if len(violations) > 0 {
		return r, fmt.Errorf("invariants broken after the run: %v", violations[0])
	}
	if r.Errors > r.Ops/100 {
		return r, errors.New("more than 1% of operations failed; first: " + firstErr)
	}
	return r, nil
}

// databaseCost is where the server's WAL stands, how big a database's files are, its
// schema's tables and their indexes, and the time spent so far inside its write function.
type databaseCost struct {
	wal, disk, heap, index int64
	functionMs             float64
}

// cost reads the WAL position and a database's sizes. WAL is the whole server's, so runs
// are measured one at a time and nothing else writes meanwhile.
func (e *env) cost(ctx context.Context, database string) (databaseCost, error) {
	pools, schema, function := []*pgxpool.Pool{e.pool, e.pool1}, "tally", "post_batch"
	if database == referenceDatabase {
		pools, schema, function = []*pgxpool.Pool{e.ref.pool}, "ceil", "transfer"
	}
	var total databaseCost
	for _, pool := range pools {
		c, err := databaseCostOf(ctx, pool, schema, function)
		if err != nil {
			return total, err
		}
		total.wal = c.wal // the server's, the same from either
		total.disk, total.heap, total.index = total.disk+c.disk, total.heap+c.heap, total.index+c.index
		total.functionMs += c.functionMs
	}
	return total, nil
}

func databaseCostOf(ctx context.Context, pool *pgxpool.Pool, schema, function string) (databaseCost, error) {
	var c databaseCost
	err := pool.QueryRow(ctx, `
		SELECT pg_current_wal_lsn() - '0/0', pg_database_size(current_database()),
		       coalesce(sum(pg_relation_size(c.oid)), 0)::bigint, coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint,
		       (SELECT coalesce(sum(f.total_time), 0) FROM pg_stat_user_functions f WHERE f.schemaname = $1 AND f.funcname = $2)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r'`, schema, function).Scan(&c.wal, &c.disk, &c.heap, &c.index, &c.functionMs)
	if err != nil {
		return c, fmt.Errorf("database cost: %w", err)
	}
	return c, nil
}

// loadAverage is the one-minute load average, or 0 where /proc/loadavg is not.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}

// drive runs the clients, each doing op after op until run ends and it has done at least
// minOps, and fills r's counts; it returns the first error seen. Operations run on ctx,
// so the end of the run never cuts one short.
func drive(ctx, run context.Context, op opFunc, clients, minOps int, r *Result) (firstErr string) {
	latencies := make([]*histogram, clients)
	for c := range latencies {
		latencies[c] = newHistogram()
	}
	var errs, rejected atomic.Int64
	var first atomic.Value
	var wg sync.WaitGroup
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(c), uint64(start.UnixNano())))
			for n := 0; (run.Err() == nil || n < minOps) && ctx.Err() == nil; n++ {
				t0 := time.Now()
				rej, err := op(ctx, rng)
				if ctx.Err() != nil && err != nil {
					return // the harness was stopped mid-request
				}
				latencies[c].add(time.Since(t0))
				switch {
				case err != nil:
					errs.Add(1)
					first.CompareAndSwap(nil, err.Error())
				case rej:
					rejected.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	all := newHistogram()
	for _, l := range latencies {
		all.merge(l)
	}
	r.Seconds, r.Ops, r.PerSecond = elapsed.Seconds(), all.n, float64(all.n)/elapsed.Seconds()
	r.Errors, r.Rejected = errs.Load(), rejected.Load()
	r.P50ms, r.P90ms, r.P99ms, r.MaxMs = all.quantileMs(.50), all.quantileMs(.90), all.quantileMs(.99), float64(all.max)/1e6
	msg, _ := first.Load().(string)
	return msg
}

// batchedSet is a shard set with a fresh batcher per shard, as the server runs it; the
// first shard's batcher is returned for its statistics, and stop stops both.
func (e *env) batchedSet(cfg batcher.Config) (set *shardset.Set, b *batcher.Batcher, stop func(), err error) {
	if b, err = newBatcher(e.store, cfg); err != nil {
		return nil, nil, nil, err
	}
	b1, err := newBatcher(e.store1, cfg)
	if err != nil {
		b.Stop()
		return nil, nil, nil, err
	}
	stop = func() { b.Stop(); b1.Stop() }
	set, err = shardset.New([]*store.Store{e.store, e.store1}, []shardset.Front{b, b1}, time.Now)
	if err == nil {
		_, err = set.Asset(context.Background(), "USD")
	}
	if err != nil {
		stop()
		return nil, nil, nil, err
	}
	return set, b, stop, nil
}

// batchStats are the batching totals of the mode's batcher: the store mode's own, or the
// service's, scraped from its metrics as an operator would. The ceiling does not batch.
func (e *env) batchStats(ctx context.Context, mode string, b *batcher.Batcher) (batcher.Stats, error) {
	switch mode {
	case ModeStore:
		return b.Stats(), nil
	case ModeWrk, ModeGRPC:
		mode = ModeHTTP
	case ModeHTTP, ModeHTTPCache, ModeHTTPLimits, ModeHTTPNoOutbox, ModeHTTPEvents:
	default:
		return batcher.Stats{}, nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.services[mode].ops+"/metrics", nil)
	if err != nil {
		return batcher.Stats{}, err
	}
	resp, err := e.http.Do(req)
	if err != nil {
		return batcher.Stats{}, fmt.Errorf("scrape metrics: %w", err)
	}
	defer resp.Body.Close()
	var st batcher.Stats
	lines := bufio.NewScanner(resp.Body)
	for lines.Scan() {
		name, value, _ := strings.Cut(lines.Text(), " ")
		n, _ := strconv.ParseFloat(value, 64)
		switch name {
		case `tally_batch_batches_total{shard="0"}`, `tally_batch_batches_total{shard="1"}`:
			st.Batches += uint64(n)
		case `tally_batch_requests_total{shard="0"}`, `tally_batch_requests_total{shard="1"}`:
			st.Requests += uint64(n)
		}
	}
	return st, lines.Err()
}

func newBatcher(st *store.Store, cfg batcher.Config) (*batcher.Batcher, error) {
	b, err := batcher.New(st, cfg)
	if err != nil {
		return nil, err
	}
	b.Start()
	return b, nil
}

// histogram counts latencies in logarithmic buckets 1% wide, so a run of any length
// takes the same memory and the harness does not disturb the service's heap figures.
type histogram struct {
	counts []int64
	n      int64
	max    time.Duration
}

const (
	histogramGrowth  = 1.01
	histogramBuckets = 2400 // 1.01^2400 ns is far beyond any timeout
)

func newHistogram() *histogram { return &histogram{counts: make([]int64, histogramBuckets)} }

func (h *histogram) add(d time.Duration) {
	i := 0
	if d > 1 {
		i = min(int(math.Log(float64(d))/math.Log(histogramGrowth)), histogramBuckets-1)
	}
	h.counts[i]++
	h.n++
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// quantileMs returns the upper edge of the bucket holding quantile q, in milliseconds.
func (h *histogram) quantileMs(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := int64(math.Ceil(q * float64(h.n)))
	var seen int64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return math.Min(math.Pow(histogramGrowth, float64(i+1)), float64(h.max)) / 1e6
		}
	}
	return float64(h.max) / 1e6
}
