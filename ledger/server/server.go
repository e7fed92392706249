// Package server runs the ledger service: it opens a pool per shard, checks the schema,
// serves the API and, on a separate port, metrics and health, and cleans up expired
// idempotency records. `tally ledger serve` and `tally dev` both run it.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/tallyhq/tally/internal/pki"
	"github.com/tallyhq/tally/internal/redisconn"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/grpcapi"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/idemcache"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/service"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

// Defaults for Config.
const (
	DefaultListen               = "127.0.0.1:8080"
	DefaultOpsListen            = "127.0.0.1:9090"
	DefaultGRPCListen           = "127.0.0.1:8081"
	DefaultIdempotencyRetention = 24 * time.Hour
	DefaultMaxConnsPerShard     = 16
	// spareConnsPerShard is how many connections of each shard's pool are left to the
	// API's unbatched queries beyond the batcher's writers and readers.
	spareConnsPerShard = 4
	cleanupInterval    = time.Minute
	// journalInterval is how often partitions ahead and checkpoints are looked after:
	// there is work once a partition's width.
	journalInterval = time.Hour
	// expiryInterval is how often each replica looks for pending transfers whose time is
	// up; timeouts are whole seconds.
	expiryInterval = time.Second
	expiryBatch    = 100
	// resumeAfter is how long a transfer between shards is left to the replica that took
	// its request before every replica's resumer takes it on.
	resumeAfter   = 10 * time.Second
	shutdownGrace = 15 * time.Second
	// redisWarmTimeout bounds the first connection to Redis at start.
	redisWarmTimeout  = 3 * time.Second
	readyCheckTimeout = 2 * time.Second
)

// Config is what the service needs.
type Config struct {
	Listen     string   // API address
	OpsListen  string   // metrics, /healthz and /readyz
	GRPCListen string   // the gRPC API's address (same TLS as the HTTP API's)
	ShardDSNs  []string // one per shard, in shard order
	TokensFile string   // caller:token [roles=...] lines (ledger/auth)
	// TLSCertFile and TLSKeyFile, when set, serve the API over HTTPS with that
	// certificate, read again when the files change (a renewed Secret).
	TLSCertFile, TLSKeyFile string
	// RateLimits per class of route and caller; none when empty. RedisURL (redis:// or
	// rediss://) shares them between replicas; without it each replica has its own.
	RateLimits    map[ratelimit.Class]ratelimit.Limit
	RedisURL      string
	RedisPassword string // overrides the URL's, so it need not be in any argument
	// NoIdempotencyCache answers every replay from PostgreSQL even with Redis; with
	// Redis and without it, completed writes' answers are kept there (idemcache).
	NoIdempotencyCache bool
	// JWT, when set, lets callers in with JWTs it verifies, beside the static tokens.
	// Without either the API is open.
	JWT                  *auth.JWTConfig
	IdempotencyRetention time.Duration
	MaxConnsPerShard     int32
	// MaxConcurrentRequests bounds the API requests served at once (zero: the API's default).
	MaxConcurrentRequests int
	Batching              batcher.Config // zero takes the batcher's defaults
	Log                   *slog.Logger
	// Ready, when set, receives the API's address once it is listening.
	Ready chan<- string
}

func (c *Config) withDefaults() {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.OpsListen == "" {
		c.OpsListen = DefaultOpsListen
	}
	if c.GRPCListen == "" {
		c.GRPCListen = DefaultGRPCListen
	}
	if c.IdempotencyRetention <= 0 {
		c.IdempotencyRetention = DefaultIdempotencyRetention
	}
	if c.MaxConnsPerShard <= 0 {
		c.MaxConnsPerShard = DefaultMaxConnsPerShard
	}
	if c.Log == nil {
		c.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
}

// authenticator builds what the config asks for: static tokens, JWTs, both, or (nil)
// neither, for an open API.
func authenticator(ctx context.Context, cfg Config) (*auth.Authenticator, error) {
	var tokens *auth.Tokens
	if cfg.TokensFile != "" {
		f, err := os.Open(cfg.TokensFile)
		if err != nil {
			return nil, fmt.Errorf("server: tokens: %w", err)
		}
		tokens, err = auth.ParseTokens(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	var verifier *auth.JWTVerifier
	if cfg.JWT != nil {
		jc := *cfg.JWT
		if jc.Log == nil {
			jc.Log = cfg.Log
		}
		var err error
		if verifier, err = auth.NewJWTVerifier(ctx, jc); err != nil {
			return nil, fmt.Errorf("server: %w", err)
		}
	}
	if tokens == nil && verifier == nil {
		cfg.Log.Warn("no tokens file and no JWT issuer: the API is open to anyone who can reach it, as an admin named " + auth.AnonymousCaller.Name)
		return nil, nil
	}
	return auth.New(tokens, verifier, cfg.Log)
}

// Run serves until ctx is cancelled, then shuts down gracefully.
func Run(ctx context.Context, cfg Config) error {
	cfg.withDefaults()
	if len(cfg.ShardDSNs) == 0 {
		return errors.New("server: no shard database given")
	}
	batching, err := cfg.Batching.Resolve()
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	// Writers and readers each hold a connection while they work; a pool smaller than
	// they need would make batches wait for connections instead of for requests.
	if need := int32(batching.Conns() + spareConnsPerShard); cfg.MaxConnsPerShard < need {
		cfg.Log.Info("raising connections per shard to what batching needs", "from", cfg.MaxConnsPerShard, "to", need)
		cfg.MaxConnsPerShard = need
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	stores := make([]*store.Store, len(cfg.ShardDSNs))
	pending := map[int]*pgxpool.Pool{} // shards that did not answer at start
	for i, dsn := range cfg.ShardDSNs {
		pool, err := openPool(ctx, dsn, cfg.MaxConnsPerShard)
		if err != nil {
			return fmt.Errorf("server: shard %d: %w", i, err)
		}
		defer pool.Close()
		switch err := checkShardSoon(ctx, pool, i); {
		case err == nil:
		case unreachable(err):
			// One shard failing over must not keep the service from serving the others;
			// its hot operations wait behind a gate until it answers and checks out.
			cfg.Log.Warn("shard unreachable at start: serving the others, and it once it answers", "shard", i, "err", err.Error())
			pending[i] = pool
		default:
			return fmt.Errorf("server: shard %d: %w", i, err)
		}
		stores[i] = store.New(pool)
	}
	reg.MustRegister(newPoolCollector(stores))
	fronts := make([]shardset.Front, len(stores))
	batchers := make([]*batcher.Batcher, len(stores))
	gates := make([]*shardGate, len(stores))
	for i, st := range stores {
		b, err := batcher.New(st, batching)
		if err != nil {
			return err
		}
		b.Start()
		defer b.Stop() // after the API has drained: queued requests finish first
		gates[i] = &shardGate{Front: b, shard: i}
		gates[i].open.Store(pending[i] == nil)
		fronts[i], batchers[i] = gates[i], b
	}
	reg.MustRegister(newBatchCollector(batchers))
	set, err := shardset.New(stores, fronts, time.Now)
	if err != nil {
		return err
	}
	errc := make(chan error, 3)
	if len(pending) == 0 {
		if err := set.SyncAssets(ctx); err != nil {
			return fmt.Errorf("server: %w", err)
		}
	} else {
		awaitCtx, stopAwait := context.WithCancel(ctx)
		defer stopAwait()
		go awaitShards(awaitCtx, pending, set, gates, cfg.Log, errc)
	}
	authn, err := authenticator(ctx, cfg)
	if err != nil {
		return err
	}
	svc := service.New(set, service.NewMetrics(reg), cfg.Log)
	api := httpapi.New(svc, authn, httpapi.NewMetrics(reg), cfg.Log)
	grpcAPI := grpcapi.New(svc, authn, cfg.Log)
	if cfg.MaxConcurrentRequests > 0 {
		api.WithMaxConcurrentRequests(cfg.MaxConcurrentRequests)
	}
	var rdb *redisconn.Client
	if cfg.RedisURL != "" {
		opts, err := redisconn.Options(cfg.RedisURL, cfg.RedisPassword)
		if err != nil {
			return fmt.Errorf("server: %w", err)
		}
		client := redis.NewClient(opts)
		defer client.Close()
		rdb = redisconn.New(client, redisconn.NewBreaker(0, cfg.Log))
		defer rdb.Close()
		warmCtx, cancel := context.WithTimeout(ctx, redisWarmTimeout)
		if err := client.Ping(warmCtx).Err(); err != nil {
			cfg.Log.Warn("Redis does not answer yet: rate limits start in each replica's memory, replays in PostgreSQL", "err", err.Error())
		}
		cancel()
	}
	if len(cfg.RateLimits) > 0 {
		limiter := ratelimit.New(ratelimit.Config{Limits: cfg.RateLimits, Redis: rdb, Log: cfg.Log, Registerer: reg})
		warmCtx, cancel := context.WithTimeout(ctx, redisWarmTimeout)
		_ = limiter.Warm(warmCtx) // loads its script; a Redis not there yet was logged above
		cancel()
		api.WithRateLimiter(limiter)
		grpcAPI.WithRateLimiter(limiter)
	}
	cacheCtx, stopCache := context.WithCancel(ctx)
	defer stopCache()
	if rdb != nil && !cfg.NoIdempotencyCache {
		cache := idemcache.New(idemcache.Config{Redis: rdb, Retention: cfg.IdempotencyRetention, Log: cfg.Log, Registerer: reg})
		go identityLoop(cacheCtx, stores[0], cache, cfg.Log)
		svc.WithIdempotencyCache(cache)
	}

	apiLn, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("server: listen %s: %w", cfg.Listen, err)
	}
	opsLn, err := net.Listen("tcp", cfg.OpsListen)
	if err != nil {
		apiLn.Close()
		return fmt.Errorf("server: listen %s: %w", cfg.OpsListen, err)
	}
	grpcLn, err := net.Listen("tcp", cfg.GRPCListen)
	if err != nil {
		apiLn.Close()
		opsLn.Close()
		return fmt.Errorf("server: listen %s: %w", cfg.GRPCListen, err)
	}
	closeAll := func() { apiLn.Close(); opsLn.Close(); grpcLn.Close() }
	if (cfg.TLSCertFile == "") != (cfg.TLSKeyFile == "") {
		closeAll()
		return errors.New("server: HTTPS needs both a certificate and a key file")
	}
	var grpcOpts []grpc.ServerOption
	if cfg.TLSCertFile != "" {
		if _, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			closeAll()
			return fmt.Errorf("server: the API's certificate: %w", err)
		}
		apiLn = tls.NewListener(apiLn, pki.ServerConfig(cfg.TLSCertFile, cfg.TLSKeyFile))
		grpcOpts = append(grpcOpts, grpc.Creds(credentials.NewTLS(pki.ServerConfig(cfg.TLSCertFile, cfg.TLSKeyFile))))
	}
	apiSrv := api.Server()
	opsSrv := &http.Server{Handler: opsHandler(reg, stores), ReadHeaderTimeout: 10 * time.Second}
	grpcSrv, grpcHealth := grpcAPI.Server(reg, grpcOpts...)

	go func() { errc <- apiSrv.Serve(apiLn) }()
	go func() { errc <- opsSrv.Serve(opsLn) }()
	go func() { errc <- grpcSrv.Serve(grpcLn) }()
	cleanupCtx, stopCleanup := context.WithCancel(ctx)
	defer stopCleanup()
	go cleanupLoop(cleanupCtx, stores, cfg.IdempotencyRetention, cfg.Log)
	go expiryLoop(cleanupCtx, set, cfg.Log)
	go resumeLoop(cleanupCtx, set, cfg.Log)
	go journalLoop(cleanupCtx, stores, cfg.Log)

	cfg.Log.Info("ledger serving", "api", apiLn.Addr().String(), "grpc", grpcLn.Addr().String(), "ops", opsLn.Addr().String(), "shards", len(stores))
	if cfg.Ready != nil {
		cfg.Ready <- apiLn.Addr().String()
	}
	select {
	case <-ctx.Done():
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	}
	cfg.Log.Info("shutting down: draining requests")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	grpcHealth.Shutdown() // NOT_SERVING
	grpcDone := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(grpcDone) }()
	errAPI := apiSrv.Shutdown(shutdownCtx)
	errOps := opsSrv.Shutdown(shutdownCtx)
	select {
	case <-grpcDone:
	case <-shutdownCtx.Done():
		grpcSrv.Stop()
	}
	return errors.Join(errAPI, errOps)
}

// identityInterval is how often the ledger's identity is read again, so that a
// database made anew under a running replica stops its cached answers within it.
const identityInterval = 30 * time.Second

// identityLoop names the cache's database (shard 0's identity) once it answers, and
// again whenever it changes, until ctx ends.
func identityLoop(ctx context.Context, st *store.Store, cache *idemcache.Cache, log *slog.Logger) {
	known, told := "", false
	for {
		readCtx, cancel := context.WithTimeout(ctx, readyCheckTimeout)
		id, err := st.Identity(readCtx)
		cancel()
		switch {
		case err == nil && id != known:
			if known != "" {
				log.Warn("shard 0's database was made anew: answers kept in Redis for the old one are no longer read")
			}
			cache.SetIdentity(id)
			known = id
		case err != nil && known == "" && !told && ctx.Err() == nil:
			log.Info("the idempotency cache waits for shard 0 to answer", "err", err.Error())
			told = true
		}
		wait := identityInterval
		if known == "" {
			wait = shardRecheck
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// shardStartCheckTimeout bounds the first check of each shard at start, so an
// unreachable one (a failover in progress) delays the service by seconds, not minutes.
const shardStartCheckTimeout = 5 * time.Second

// shardRecheck is how often a shard unreachable at start is tried again.
const shardRecheck = 2 * time.Second

func checkShardSoon(ctx context.Context, pool *pgxpool.Pool, index int) error {
	ctx, cancel := context.WithTimeout(ctx, shardStartCheckTimeout)
	defer cancel()
	return checkShard(ctx, pool, index)
}

// unreachable reports whether a shard check failed for want of an answer, rather than
// because the database is not what this service needs (schema, shard index).
func unreachable(err error) bool {
	return store.Unavailable(err) || errors.Is(err, context.DeadlineExceeded)
}

// shardGate holds a shard's hot operations (posting, balance reads) until its database
// has been checked, answering 503 meanwhile.
type shardGate struct {
	shardset.Front
	shard int
	open  atomic.Bool
}

func (g *shardGate) closed() error {
	return ledger.Errorf(ledger.CodeUnavailable, "shard %d has not answered since the service started; retry shortly", g.shard)
}

// PostTransaction posts through the shard's batcher once the shard is checked.
func (g *shardGate) PostTransaction(ctx context.Context, req store.Request) (ledger.Outcome, error) {
	if !g.open.Load() {
		return ledger.Outcome{}, g.closed()
	}
	return g.Front.PostTransaction(ctx, req)
}

// Reserve reserves through the shard's batcher once the shard is checked.
func (g *shardGate) Reserve(ctx context.Context, st store.Step, r store.Reservation) (ledger.Outcome, error) {
	if !g.open.Load() {
		return ledger.Outcome{}, g.closed()
	}
	return g.Front.Reserve(ctx, st, r)
}

// Resolve resolves through the shard's batcher once the shard is checked.
func (g *shardGate) Resolve(ctx context.Context, st store.Step, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error) {
	if !g.open.Load() {
		return ledger.Outcome{}, g.closed()
	}
	return g.Front.Resolve(ctx, st, pending, how, amount)
}

// ApplyInbound applies through the shard's batcher once the shard is checked.
func (g *shardGate) ApplyInbound(ctx context.Context, pt ledger.PendingTransfer, tx ledger.TransactionID, created time.Time, clearingID ledger.AccountID) (store.Inbound, error) {
	if !g.open.Load() {
		return store.Inbound{}, g.closed()
	}
	return g.Front.ApplyInbound(ctx, pt, tx, created, clearingID)
}

// ClaimKey claims an idempotency key through the shard's batcher once the shard is checked.
func (g *shardGate) ClaimKey(ctx context.Context, c store.Claim) (ledger.Outcome, error) {
	if !g.open.Load() {
		return ledger.Outcome{}, g.closed()
	}
	return g.Front.ClaimKey(ctx, c)
}

// Balance reads through the shard's batcher once the shard is checked.
func (g *shardGate) Balance(ctx context.Context, id ledger.AccountID) (ledger.Balance, error) {
	if !g.open.Load() {
		return ledger.Balance{}, g.closed()
	}
	return g.Front.Balance(ctx, id)
}

// awaitShards checks the shards that did not answer at start until each does, then
// registers every asset everywhere and opens their gates. A shard that answers but is
// not what this service needs stops the service, as it would have at start.
func awaitShards(ctx context.Context, pending map[int]*pgxpool.Pool, set *shardset.Set, gates []*shardGate, log *slog.Logger, errc chan<- error) {
	t := time.NewTicker(shardRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i, pool := range pending {
			err := checkShardSoon(ctx, pool, i)
			switch {
			case err == nil:
				delete(pending, i)
			case !unreachable(err):
				errc <- fmt.Errorf("server: shard %d: %w", i, err)
				return
			}
		}
		if len(pending) > 0 {
			continue
		}
		if err := set.SyncAssets(ctx); err != nil {
			log.Warn("registering assets on every shard", "err", err.Error())
			continue
		}
		for _, g := range gates {
			g.open.Store(true)
		}
		log.Info("every shard answers: serving them all")
		return
	}
}

func openPool(ctx context.Context, dsn string, maxConns int32) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse database URL: %w", err)
	}
	cfg.MaxConns = maxConns
	store.ConfigurePool(cfg)
	cfg.ConnConfig.RuntimeParams["application_name"] = "tally-ledger"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open pool: %w", err)
	}
	return pool, nil
}

// checkShard refuses to serve a database that is not migrated to this binary's schema or
// that belongs to a different shard than its position in the shard list.
func checkShard(ctx context.Context, pool *pgxpool.Pool, index int) error {
	return pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		conn := c.Conn()
		have, err := migrations.CurrentVersion(ctx, conn)
		if err != nil {
			return err
		}
		if err := migrations.CheckCompatible(have, migrations.Count()); err != nil {
			return err
		}
		var shard int
		if err := conn.QueryRow(ctx, "SELECT shard_index FROM tally.shard").Scan(&shard); errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("the database has no shard index: run tally migrate --shard %d", index)
		} else if err != nil {
			return fmt.Errorf("read shard index: %w", err)
		}
		if shard != index {
			return fmt.Errorf("the database is shard %d but is listed as shard %d", shard, index)
		}
		return nil
	})
}

func opsHandler(reg *prometheus.Registry, stores []*store.Store) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Write([]byte("ok\n")) //nolint:errcheck
	})
	// Ready while any shard's primary answers: one shard failing over must not take the
	// others' traffic away (requests for it answer 503 with Retry-After meanwhile). Not
	// ready when none answers, since then no request could succeed. The body names each
	// shard's state.
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), readyCheckTimeout)
		defer cancel()
		states := make([]error, len(stores))
		var wg sync.WaitGroup
		for i, st := range stores {
			wg.Go(func() { states[i] = st.Ping(ctx) })
		}
		wg.Wait()
		var body strings.Builder
		up := 0
		for i, err := range states {
			if err != nil {
				fmt.Fprintf(&body, "shard %d: %v\n", i, err)
			} else {
				up++
				fmt.Fprintf(&body, "shard %d: ok\n", i)
			}
		}
		status := http.StatusOK
		if up == 0 {
			status = http.StatusServiceUnavailable
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(status)
		w.Write([]byte(body.String())) //nolint:errcheck
	})
	return mux
}

func cleanupLoop(ctx context.Context, stores []*store.Store, retention time.Duration, log *slog.Logger) {
	t := time.NewTicker(cleanupInterval)
	defer t.Stop()
	for {
		for i, st := range stores {
			n, err := st.DeleteExpiredIdempotencyKeys(ctx, retention)
			if err != nil && ctx.Err() == nil {
				log.Warn("idempotency cleanup failed", "shard", i, "err", err)
			} else if n > 0 {
				log.Info("expired idempotency records removed", "shard", i, "count", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// journalLoop keeps each shard's journal partitioned ahead and checkpointed, when the
// service starts and every journalInterval; every replica runs it, and the database lets
// one do the work at a time.
func journalLoop(ctx context.Context, stores []*store.Store, log *slog.Logger) {
	t := time.NewTicker(journalInterval)
	defer t.Stop()
	for {
		for i, st := range stores {
			if n, err := st.EnsurePartitions(ctx, store.PartitionsAhead); err != nil && ctx.Err() == nil {
				log.Warn("making the journal's partitions failed", "shard", i, "err", err)
			} else if n > 0 {
				log.Info("journal partitions made", "shard", i, "count", n)
			} else if n < 0 {
				log.Info("the journal was too busy to add partitions; trying again next time", "shard", i)
			}
			if n, err := st.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil && ctx.Err() == nil {
				log.Warn("checkpointing balances failed", "shard", i, "err", err)
			} else if n > 0 {
				log.Info("balances checkpointed", "shard", i, "boundaries", n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// expiryLoop voids pending transfers whose timeout has passed, on every shard; every
// replica runs it (see shardset.ExpireDue for why that is harmless).
func expiryLoop(ctx context.Context, set *shardset.Set, log *slog.Logger) {
	eachSecond(ctx, log, "expiring pending transfers", func(ctx context.Context) (int, error) {
		return set.ExpireDue(ctx, expiryBatch)
	})
}

// resumeLoop completes transfers between shards left in flight (a replica that stopped
// mid-way, a shard that was failing over).
func resumeLoop(ctx context.Context, set *shardset.Set, log *slog.Logger) {
	eachSecond(ctx, log, "completing transfers between shards left in flight", func(ctx context.Context) (int, error) {
		return set.Driver().Resume(ctx, resumeAfter, expiryBatch)
	})
}

// eachSecond runs a sweep every expiryInterval until ctx ends, and logs what it did.
func eachSecond(ctx context.Context, log *slog.Logger, what string, sweep func(context.Context) (int, error)) {
	t := time.NewTicker(expiryInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := sweep(ctx)
		if err != nil && ctx.Err() == nil {
			log.Warn(what+" failed", "err", err)
		}
		if n > 0 {
			log.Info(what, "count", n)
		}
	}
}
