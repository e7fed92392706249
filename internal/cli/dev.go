package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/controllers/specs"
	"github.com/tallyhq/tally/instance"
	"github.com/tallyhq/tally/internal/localshard"
	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/events"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/server"
)

// Local development defaults.
const (
	devDataDir  = ".tally/dev"
	devPGPort   = 54329
	devDatabase = "tally"
	devAppRole  = "tally_service"
	// the event relay's login (tally dev --events)
	devRelayRole     = "tally_relayer"
	devRelayPassword = "dev-relay"
	devKafka         = "127.0.0.1:9092"
)

// Local high-availability defaults (tally dev --instances N): instance n listens on
// devHAPGPort+n for PostgreSQL and devHAStatusPort+n for its status API; the -rw proxy
// takes devPGPort, so the ledger's URL is the same as with one instance.
const (
	devHADataDir    = ".tally/dev-ha"
	devHAPGPort     = 54330
	devHAStatusPort = 54340
	devHAMax        = 5
	devHAToken      = "dev-token"
)

func runDev(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("dev", out)
	dataDir := fs.String("data-dir", "", "where PostgreSQL keeps its data; reused on the next start (default "+devDataDir+", or "+devHADataDir+" with --instances > 1)")
	pgPort := fs.Int("pg-port", devPGPort, "PostgreSQL port on 127.0.0.1 (with --instances > 1, the port that always leads to the primary)")
	instances := fs.Int("instances", 1, fmt.Sprintf("PostgreSQL instances: 1, or up to %d for a primary with synchronous replicas and automatic failover", devHAMax))
	shards := fs.Int("shards", 1, fmt.Sprintf("ledger shards, 1 to %d: one database each on the same PostgreSQL", devMaxShards))
	listen := fs.String("listen", server.DefaultListen, "API address")
	opsListen := fs.String("ops-listen", server.DefaultOpsListen, "address for /metrics, /healthz and /readyz")
	grpcListen := fs.String("grpc-listen", server.DefaultGRPCListen, "gRPC API address")
	printScript := fs.String("print-script", "", "only print the curl commands for the API at this host:port, and exit")
	withEvents := fs.Bool("events", false, "also serve an in-memory Kafka on "+devKafka+" (tally events broker) and relay the shards' events to it")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *shards < 1 || *shards > devMaxShards {
		fmt.Fprintf(fs.Output(), "--shards must be between 1 and %d\n", devMaxShards)
		return errUsage
	}
	if *printScript != "" {
		fmt.Fprintln(out, DevCurlScript(*printScript, *shards))
		return nil
	}
	if *instances < 1 || *instances > devHAMax {
		fmt.Fprintf(fs.Output(), "--instances must be between 1 and %d\n", devHAMax)
		return errUsage
	}
	if *dataDir == "" {
		*dataDir = devDataDir
		if *instances > 1 {
			*dataDir = devHADataDir
		}
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	if err := prepareDataDir(dir); err != nil {
		return err
	}
	// Refuse at once what would fail later, before anything touches the data: a second
	// tally dev on the same data, or an address already taken.
	unlock, err := lockDataDir(dir)
	if err != nil {
		return err
	}
	defer unlock()
	addrs := []string{*listen, *opsListen, *grpcListen}
	if *withEvents {
		addrs = append(addrs, devKafka)
	}
	for _, addr := range addrs {
		if err := checkFree(addr); err != nil {
			return err
		}
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var superDSN func(db string) string
	var extra string
	if *instances == 1 {
		log.Info("starting PostgreSQL", "data", dir, "port", *pgPort)
		pg, err := postgres.Start(ctx, postgres.Config{DataDir: filepath.Join(dir, "pgdata"), Port: *pgPort, LogFile: filepath.Join(dir, "postgres.log")})
		if err != nil {
			return err
		}
		defer func() {
			log.Info("stopping PostgreSQL")
			if err := pg.Stop(); err != nil {
				log.Error("stop PostgreSQL", "err", err.Error())
			}
		}()
		superDSN = pg.DSN
		if err := prepareDevShards(ctx, superDSN, *shards, true); err != nil {
			return err
		}
	} else {
		log.Info("starting a local shard", "instances", *instances, "data", dir)
		sh, err := startDevShard(ctx, dir, *instances, *pgPort, log)
		if err != nil {
			return err
		}
		defer func() {
			log.Info("stopping the shard")
			sh.Stop()
		}()
		superDSN = func(db string) string { return sh.DSN(postgres.Superuser, db) }
		if err := prepareDevShards(ctx, superDSN, *shards, false); err != nil {
			return err
		}
		extra = DevHABanner(sh)
	}
	var appDSNs, databaseURLs []string
	for i := range *shards {
		databaseURLs = append(databaseURLs, superDSN(devShardDatabase(i)))
		appDSNs = append(appDSNs, strings.Replace(superDSN(devShardDatabase(i)), postgres.Superuser+"@", devAppRole+"@", 1))
	}
	if *withEvents {
		stop, err := runDevEvents(ctx, superDSN, *shards, log)
		if err != nil {
			return err
		}
		defer stop()
		extra += fmt.Sprintf("\nEvents: every shard's, relayed to an in-memory Kafka on %s (topic %s); watch them:\n  bin/tally events tail --brokers %s\n",
			devKafka, specs.DefaultEventsTopic, devKafka)
	}
	ready := make(chan string, 1)
	go func() {
		select {
		case addr := <-ready:
			fmt.Fprint(out, DevBanner(addr, *opsListen, dir, databaseURLs)+DevGRPCExample(*grpcListen)+extra)
		case <-ctx.Done():
		}
	}()
	tuneGC()
	err = server.Run(ctx, server.Config{
		Listen: *listen, OpsListen: *opsListen, GRPCListen: *grpcListen, ShardDSNs: appDSNs,
		MaxConnsPerShard: server.DefaultMaxConnsPerShard, Log: log, Ready: ready,
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// startDevShard runs the local high-availability shape: n instances, ANY 1 synchronous
// replication with dataDurability required, automatic failover.
func startDevShard(ctx context.Context, dir string, n, proxyPort int, log *slog.Logger) (*localshard.Shard, error) {
	cfg := localshard.Config{
		Dir: filepath.Join(dir, "shard"), Instances: n, ProxyPort: proxyPort, Token: devHAToken,
		Sync:      instance.SyncRule{Method: instance.SyncAny, Number: 1, Required: true},
		Bootstrap: instance.Bootstrap{Database: devDatabase, AppUser: devAppRole},
		Log:       log,
	}
	for i := 1; i <= n; i++ {
		cfg.PGPorts = append(cfg.PGPorts, devHAPGPort+i)
		cfg.StatusPorts = append(cfg.StatusPorts, devHAStatusPort+i)
	}
	return localshard.Start(ctx, cfg)
}

// DevHABanner tells how to watch the local shard and make it fail over. Its commands
// find the primary when they run, so they stay right after a failover.
func DevHABanner(sh *localshard.Shard) string {
	var ports []string
	for _, m := range sh.Members() {
		ports = append(ports, strings.TrimPrefix(m.StatusURL, "http://127.0.0.1:"))
	}
	auth := fmt.Sprintf("-H 'Authorization: Bearer %s'", sh.Token())
	each := fmt.Sprintf("for p in %s; do", strings.Join(ports, " "))
	return fmt.Sprintf(`
High availability: %d instances, ANY 1 synchronous, failover after %s.
PostgreSQL clients use 127.0.0.1:%d, which always leads to the primary.
  watch it      %s curl -s %s http://127.0.0.1:$p/v1/status; echo; done
  fail over     %s curl -s %s http://127.0.0.1:$p/v1/status | grep -q '"role":"primary"' && curl -s -X POST %s http://127.0.0.1:$p/v1/fence; done
                (fences whichever instance is primary; a synchronous replica is promoted,
                and the old primary rejoins as a replica through pg_rewind)
  crash it      for d in %s/*/pgdata; do [ -f $d/standby.signal ] || [ ! -f $d/postmaster.pid ] || kill -9 $(head -1 $d/postmaster.pid); done
                (kills the primary's postgres; its manager restarts it; if it stays down
                past the delay, a failover)
`, len(sh.Members()), localshard.DefaultFailoverDelay, sh.ProxyPort(), each, auth, each, auth, auth, sh.Dir())
}

// lockDataDir holds an exclusive lock on the data directory while this process lives, so
// a second tally dev on the same data refuses before it touches a running PostgreSQL.
func lockDataDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, "tally-dev.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("another tally dev is running on %s: stop it first, or give this one its own --data-dir", dir)
	}
	return func() { f.Close() }, nil
}

// checkFree reports an address that cannot be listened on, such as one another process
// holds.
func checkFree(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s (is another tally dev running? choose another with --listen or --ops-listen): %w", addr, err)
	}
	return ln.Close()
}

// prepareDataDir creates the directory; when we are root, postgres runs as another user
// and must be able to reach it.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chmod(dir, 0o755); err != nil {
			return err
		}
	}
	return nil
}

// devMaxShards bounds tally dev --shards: each shard is a database and a pool of
// connections on the one local PostgreSQL.
const devMaxShards = 8

// devShardDatabase is shard i's database: shard 0 keeps the name a one-shard dev ledger
// has always had, so its data carries over.
func devShardDatabase(i int) string {
	if i == 0 {
		return devDatabase
	}
	return fmt.Sprintf("%s_shard_%d", devDatabase, i)
}

// prepareDevShards creates each shard's database (create: the service's login role too;
// a local HA shard's instance managers made the role and shard 0's database already), and
// migrates each as its shard. Every step is idempotent, so a restart reuses the data, and
// a restart with more shards adds them.
func prepareDevShards(ctx context.Context, superDSN func(db string) string, shards int, create bool) error {
	admin, err := pgx.Connect(ctx, superDSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	var stmts []string
	if create {
		stmts = append(stmts, "CREATE ROLE "+devAppRole+" LOGIN", "CREATE DATABASE "+devDatabase)
	}
	for i := 1; i < shards; i++ {
		stmts = append(stmts, "CREATE DATABASE "+devShardDatabase(i))
	}
	for _, stmt := range stmts {
		var pgErr *pgconn.PgError
		if _, err := admin.Exec(ctx, stmt); err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "42710")) {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	for i := range shards {
		if err := migrateDevShard(ctx, superDSN(devShardDatabase(i)), i); err != nil {
			return fmt.Errorf("shard %d: %w", i, err)
		}
	}
	return nil
}

func migrateDevShard(ctx context.Context, dsn string, shard int) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err = migrations.Setup(ctx, conn, shard, devAppRole); err != nil {
		return err
	}
	// the event relay's login, for tally dev --events
	return migrations.GrantRelay(ctx, conn, devRelayRole, devRelayPassword)
}

// DevBanner is what `tally dev` prints once it serves: where things are, and curl
// commands to paste, in order, into a POSIX shell. databaseURLs are the shards', in order.
func DevBanner(addr, opsAddr, dataDir string, databaseURLs []string) string {
	verify := "bin/tally verify --database-url '" + databaseURLs[0] + "'"
	databases := databaseURLs[0]
	if len(databaseURLs) > 1 {
		verify = "bin/tally verify"
		for _, u := range databaseURLs {
			verify += " --shard-url '" + u + "'"
		}
		databases = fmt.Sprintf("%d shards: %s", len(databaseURLs), strings.Join(databaseURLs, " "))
	}
	return fmt.Sprintf(`
Tally is running.
  API       http://%[1]s
  metrics   http://%[2]s/metrics   health http://%[2]s/healthz, /readyz
  database  %[5]s
  verify    %[6]s
  data      %[3]s (delete it to start afresh)
Press Ctrl-C to stop.

Try it (paste into a shell):

%[4]s
`, addr, opsAddr, dataDir, DevCurlScript(addr, len(databaseURLs)), databases, verify)
}

// DevGRPCExample shows the gRPC API with grpcurl (server reflection lists the rest).
func DevGRPCExample(addr string) string {
	return fmt.Sprintf(`
The same over gRPC (tally.ledger.v1.LedgerService; grpcurl -plaintext %[1]s list shows it all):
  grpcurl -plaintext -d '{"code":"USD"}' %[1]s tally.ledger.v1.LedgerService/GetAsset
`, addr)
}

// DevCurlScript registers USD, opens two accounts, deposits, transfers, and reads the
// balance and history; with more than one shard, it also pays an account on another
// shard. Idempotency keys include the account ids, so the script can be pasted again
// after a restart.
func DevCurlScript(addr string, shards int) string {
	script := `API=http://ADDR
curl -s -X POST $API/v1/assets -H 'Content-Type: application/json' -d '{"code":"USD","scale":2}'; echo
ALICE=$(curl -s -X POST $API/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"alice","asset":"USD"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
BOB=$(curl -s -X POST $API/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"bob","asset":"USD"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
echo "alice=$ALICE bob=$BOB"
curl -s -X POST $API/v1/transfers -H 'Content-Type: application/json' -H "Idempotency-Key: deposit-$ALICE" -d '{"from_account":"external","to_account":"'$ALICE'","amount":"100.00","asset":"USD"}'; echo
curl -s -X POST $API/v1/transfers -H 'Content-Type: application/json' -H "Idempotency-Key: pay-$ALICE" -d '{"from_account":"'$ALICE'","to_account":"'$BOB'","amount":"12.34","asset":"USD"}'; echo
curl -s $API/v1/accounts/$BOB/balance; echo
curl -s $API/v1/accounts/$ALICE/entries; echo`
	if shards > 1 {
		// Carol is placed on the shard after alice's (bytes 9 and 10 of an id), so the
		// payment crosses shards.
		script += `
SHARD=$(( (16#$(echo $ALICE | cut -c22-23)$(echo $ALICE | cut -c25-26) + 1) % ` + fmt.Sprint(shards) + ` ))
CAROL=$(curl -s -X POST $API/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"carol","asset":"USD","shard":'$SHARD'}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
echo "carol=$CAROL, on shard $SHARD: a transfer between shards"
curl -s -X POST $API/v1/transfers -H 'Content-Type: application/json' -H "Idempotency-Key: across-$ALICE" -d '{"from_account":"'$ALICE'","to_account":"'$CAROL'","amount":"7.00","asset":"USD"}'; echo
curl -s $API/v1/accounts/$CAROL/balance; echo`
	}
	return strings.ReplaceAll(script, "ADDR", addr)
}

// runDevEvents serves an in-memory Kafka on devKafka and relays every shard's events to
// it, until the returned stop is called.
func runDevEvents(ctx context.Context, superDSN func(db string) string, shards int, log *slog.Logger) (stop func(), err error) {
	broker, err := startBroker(devKafka, devKafka, specs.DefaultEventsTopic, 4)
	if err != nil {
		return nil, err
	}
	producer, err := events.NewProducer(events.Kafka{Brokers: []string{devKafka}})
	if err != nil {
		broker.Close()
		return nil, err
	}
	dsns := make([]string, shards)
	for i := range dsns {
		dsns[i] = strings.Replace(superDSN(devShardDatabase(i)), postgres.Superuser+"@", devRelayRole+":"+devRelayPassword+"@", 1)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = events.RunShards(rctx, dsns, events.Config{Client: producer, Topic: specs.DefaultEventsTopic, Log: log})
	}()
	return func() { cancel(); <-done; producer.Close(); broker.Close() }, nil
}
