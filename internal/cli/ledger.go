package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/batcher"
	"github.com/tallyhq/tally/ledger/crossshard"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/server"
	"github.com/tallyhq/tally/ledger/store"
)

// shardURLsEnv lists shard database URLs, comma-separated, in shard order.
const shardURLsEnv = "TALLY_SHARD_URLS"

func runLedgerServe(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("ledger serve", out)
	var urls stringList
	cfg := server.Config{}
	fs.Var(&urls, "shard-url", "PostgreSQL URL of a shard, repeated in shard order (default $"+shardURLsEnv+")")
	fs.StringVar(&cfg.Listen, "listen", server.DefaultListen, "API address")
	fs.StringVar(&cfg.OpsListen, "ops-listen", server.DefaultOpsListen, "address for /metrics, /healthz and /readyz")
	fs.StringVar(&cfg.GRPCListen, "grpc-listen", server.DefaultGRPCListen, "gRPC API address (TLS as --tls-cert-file says)")
	fs.StringVar(&cfg.TokensFile, "tokens-file", "", "file of caller:token [roles=user,operator,admin] lines, for services")
	fs.StringVar(&cfg.TLSCertFile, "tls-cert-file", "", "serve the API over HTTPS with this certificate (PEM; read again when it changes)")
	fs.StringVar(&cfg.TLSKeyFile, "tls-key-file", "", "the key of --tls-cert-file")
	fs.StringVar(&cfg.RedisURL, "redis-url", "", "Redis shared by the replicas for rate limits and completed writes' answers (redis:// or rediss://; its password, if any, from $"+specs.RedisPasswordEnv+"); without it each replica limits alone and PostgreSQL answers every replay")
	idemCache := fs.Bool("idempotency-cache", true, "with --redis-url, keep completed writes' answers in Redis so replays skip PostgreSQL")
	writesLimit := fs.String("rate-limit-writes", "", "each caller's writes (POSTs), as RATE/UNIT[:BURST], e.g. 600/m; none when empty")
	readsLimit := fs.String("rate-limit-reads", "", "each caller's reads (GETs), as RATE/UNIT[:BURST]; none when empty")
	var jwt auth.JWTConfig
	fs.StringVar(&jwt.Issuer, "jwt-issuer", "", "accept JWTs from this issuer (iss); needs --jwt-audience and keys")
	fs.StringVar(&jwt.Audience, "jwt-audience", "", "the audience (aud) JWTs must name")
	fs.StringVar(&jwt.JWKSURL, "jwks-url", "", "the issuer's JWKS URL, refreshed hourly and when a token names an unknown key")
	jwksFile := fs.String("jwks-file", "", "a JWK Set file of the issuer's public keys")
	fs.StringVar(&jwt.RoleClaim, "jwt-role-claim", "roles", "the claim naming a JWT caller's roles (operator, admin), a string or a list")
	hmacFile := fs.String("jwt-hmac-secret-file", "", "a file holding an HS256 secret (at least 32 bytes); only then are HS256 JWTs accepted")
	fs.DurationVar(&cfg.IdempotencyRetention, "idempotency-retention", server.DefaultIdempotencyRetention, "how long idempotency records are kept")
	maxConns := fs.Int("max-conns", server.DefaultMaxConnsPerShard, "connections per shard")
	logFormat := fs.String("log-format", "json", "json or text")
	fs.IntVar(&cfg.Batching.Writers, "writers", batcher.DefaultWriters, "batches of one shard in flight at once")
	fs.IntVar(&cfg.Batching.MaxBatch, "max-batch", batcher.DefaultMaxBatch, "most transaction requests in one batch")
	fs.DurationVar(&cfg.Batching.Linger, "linger", batcher.DefaultLinger, "how long a small batch waits for more requests")
	fs.IntVar(&cfg.MaxConcurrentRequests, "max-concurrent-requests", httpapi.DefaultMaxConcurrentRequests, "API requests served at once; more are answered 503")
	fs.IntVar(&cfg.Batching.Readers, "readers", batcher.DefaultReaders, "balance queries of one shard in flight at once")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg.ShardDSNs = shardURLs(urls, shardURLsEnv)
	if len(cfg.ShardDSNs) == 0 {
		return fmt.Errorf("give at least one --shard-url or set %s", shardURLsEnv)
	}
	cfg.MaxConnsPerShard = int32(*maxConns)
	cfg.RedisPassword = os.Getenv(specs.RedisPasswordEnv)
	cfg.NoIdempotencyCache = !*idemCache
	for class, flag := range map[ratelimit.Class]string{ratelimit.Writes: *writesLimit, ratelimit.Reads: *readsLimit} {
		if flag == "" {
			continue
		}
		l, err := ratelimit.ParseLimit(flag)
		if err != nil {
			return fmt.Errorf("--rate-limit-%s: %w", class, err)
		}
		if cfg.RateLimits == nil {
			cfg.RateLimits = map[ratelimit.Class]ratelimit.Limit{}
		}
		cfg.RateLimits[class] = l
	}
	if jwt.Issuer != "" {
		if err := readJWTKeys(&jwt, *jwksFile, *hmacFile); err != nil {
			return err
		}
		cfg.JWT = &jwt
	} else if jwt.Audience != "" || jwt.JWKSURL != "" || *jwksFile != "" || *hmacFile != "" {
		return fmt.Errorf("the JWT flags need --jwt-issuer")
	}
	log, err := newLogger(*logFormat)
	if err != nil {
		return err
	}
	cfg.Log = log
	tuneGC()
	return server.Run(ctx, cfg)
}

// readJWTKeys reads the key files the JWT flags name.
func readJWTKeys(cfg *auth.JWTConfig, jwksFile, hmacFile string) error {
	if jwksFile != "" {
		b, err := os.ReadFile(jwksFile)
		if err != nil {
			return fmt.Errorf("read --jwks-file: %w", err)
		}
		cfg.JWKS = b
	}
	if hmacFile != "" {
		b, err := os.ReadFile(hmacFile)
		if err != nil {
			return fmt.Errorf("read --jwt-hmac-secret-file: %w", err)
		}
		cfg.HMACSecret = []byte(strings.TrimSpace(string(b)))
	}
	return nil
}

// monitorPasswordEnv holds the password of tally migrate --monitor-login.
const (
	monitorPasswordEnv = "TALLY_MONITOR_PASSWORD"
)

func runMigrate(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("migrate", out)
	url := fs.String("database-url", "", "PostgreSQL URL of the shard, as the schema owner (default $DATABASE_URL)")
	shard := fs.Int("shard", -1, "the shard index this database holds (required the first time)")
	grant := fs.String("grant-login", "", "a login role to make a member of tally_app, the role the service uses")
	monitor := fs.String("monitor-login", "", "a login role that may only count accounts (the operator's), its password from $"+monitorPasswordEnv)
	relay := fs.String("relay-login", "", "a login role that may only read and publish the event outbox (the relay's), its password from $"+specs.RelayPasswordEnv)
	if err := parse(fs, args); err != nil {
		return err
	}
	password, relayPassword := os.Getenv(monitorPasswordEnv), os.Getenv(specs.RelayPasswordEnv)
	if *monitor != "" && password == "" {
		return fmt.Errorf("--monitor-login needs its password in $%s", monitorPasswordEnv)
	}
	if *relay != "" && relayPassword == "" {
		return fmt.Errorf("--relay-login needs its password in $%s", specs.RelayPasswordEnv)
	}
	conn, err := connect(ctx, *url)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	version, err := migrations.Setup(ctx, conn, *shard, *grant)
	if err != nil {
		return err
	}
	if *monitor != "" {
		if err := migrations.GrantMonitor(ctx, conn, *monitor, password); err != nil {
			return err
		}
	}
	if *relay != "" {
		if err := migrations.GrantRelay(ctx, conn, *relay, relayPassword); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "schema version %d\n", version)
	return nil
}

func runVerify(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("verify", out)
	url := fs.String("database-url", "", "PostgreSQL URL of the shard (default $DATABASE_URL)")
	var urls stringList
	fs.Var(&urls, "shard-url", "cluster mode: PostgreSQL URL of a shard, repeated in shard order, every shard of the ledger (default $"+shardURLsEnv+" when --database-url and $DATABASE_URL are unset)")
	incremental := fs.Bool("incremental", false, "check only what changed since each shard's latest balance checkpoint (the full check, the default, also checks the checkpoints)")
	if err := parse(fs, args); err != nil {
		return err
	}
	shards := []string(urls)
	if len(shards) == 0 && *url == "" && os.Getenv("DATABASE_URL") == "" {
		shards = shardURLs(nil, shardURLsEnv)
	}
	var violations []store.Violation
	var err error
	if len(shards) > 0 {
		violations, err = verifyCluster(ctx, shards, *incremental)
	} else {
		violations, err = verifyShard(ctx, *url, *incremental)
	}
	if err != nil {
		return err
	}
	for _, v := range violations {
		fmt.Fprintln(out, "VIOLATION", v)
	}
	if len(violations) > 0 {
		fmt.Fprintf(out, "%d invariant violations\n", len(violations))
		return ErrFailed
	}
	if len(shards) > 0 {
		fmt.Fprintf(out, "ok: %d shards; every balance matches its journal, every invariant holds, money is conserved across shards and every clearing pair owes what is in flight\n", len(shards))
		return nil
	}
	if *incremental {
		fmt.Fprintln(out, "ok: since the latest checkpoint, every balance matches the checkpoint plus the journal and every invariant holds")
		return nil
	}
	fmt.Fprintln(out, "ok: every balance matches the journal and every invariant holds")
	return nil
}

func verifyShard(ctx context.Context, url string, incremental bool) ([]store.Violation, error) {
	dsn, err := databaseURL(url)
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer pool.Close()
	if incremental {
		return store.New(pool).VerifyIncremental(ctx)
	}
	return store.New(pool).Verify(ctx)
}

// verifyCluster checks every shard and what spans them (crossshard.Driver.Verify).
func verifyCluster(ctx context.Context, urls []string, incremental bool) ([]store.Violation, error) {
	stores := make([]*store.Store, len(urls))
	for i, u := range urls {
		pool, err := pgxpool.New(ctx, u)
		if err != nil {
			return nil, fmt.Errorf("connect to shard %d: %w", i, err)
		}
		defer pool.Close()
		stores[i] = store.New(pool)
	}
	d := crossshard.New(stores, nil, time.Now)
	if incremental {
		return d.VerifyIncremental(ctx)
	}
	return d.Verify(ctx)
}

func databaseURL(flagged string) (string, error) {
	if flagged != "" {
		return flagged, nil
	}
	if env := os.Getenv("DATABASE_URL"); env != "" {
		return env, nil
	}
	return "", fmt.Errorf("give --database-url or set DATABASE_URL")
}

func connect(ctx context.Context, flagged string) (*pgx.Conn, error) {
	url, err := databaseURL(flagged)
	if err != nil {
		return nil, err
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}
