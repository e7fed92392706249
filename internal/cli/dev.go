package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/server"
)

// Local development defaults.
const (
	devDataDir  = ".tally/dev"
	devPGPort   = 54329
	devDatabase = "tally"
	devAppRole  = "tally_service"
)

func runDev(ctx context.Context, args []string, out io.Writer) error {
	fs := newFlagSet("dev", out)
	dataDir := fs.String("data-dir", devDataDir, "where PostgreSQL keeps its data; reused on the next start")
	pgPort := fs.Int("pg-port", devPGPort, "PostgreSQL port on 127.0.0.1")
	listen := fs.String("listen", server.DefaultListen, "API address")
	opsListen := fs.String("ops-listen", server.DefaultOpsListen, "address for /metrics, /healthz and /readyz")
	printScript := fs.String("print-script", "", "only print the curl commands for the API at this host:port, and exit")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *printScript != "" {
		fmt.Fprintln(out, DevCurlScript(*printScript))
		return nil
	}
	dir, err := filepath.Abs(*dataDir)
	if err != nil {
		return err
	}
	if err := prepareDataDir(dir); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	log.Info("starting PostgreSQL", "data", dir, "port", *pgPort)
	pg, err := postgres.Start(ctx, postgres.Config{DataDir: filepath.Join(dir, "pgdata"), Port: *pgPort, LogFile: filepath.Join(dir, "postgres.log")})
	if err != nil {
		return err
	}
	defer func() {
		log.Info("stopping PostgreSQL")
		if err := pg.Stop(); err != nil {
			log.Error("stop PostgreSQL", "err", err)
		}
	}()
	if err := prepareDevDatabase(ctx, pg); err != nil {
		return err
	}
	appDSN := strings.Replace(pg.DSN(devDatabase), postgres.Superuser+"@", devAppRole+"@", 1)
	ready := make(chan string, 1)
	go func() {
		select {
		case addr := <-ready:
			fmt.Fprint(out, DevBanner(addr, *opsListen, dir))
		case <-ctx.Done():
		}
	}()
	err = server.Run(ctx, server.Config{
		Listen: *listen, OpsListen: *opsListen, ShardDSNs: []string{appDSN},
		MaxConnsPerShard: server.DefaultMaxConnsPerShard, Log: log, Ready: ready,
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
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

// prepareDevDatabase creates the database and the service's login role if missing, and
// migrates it as shard 0. Every step is idempotent, so a restart reuses the data.
func prepareDevDatabase(ctx context.Context, pg *postgres.Server) error {
	admin, err := pgx.Connect(ctx, pg.DSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	for _, stmt := range []string{
		"CREATE DATABASE " + devDatabase,
		"CREATE ROLE " + devAppRole + " LOGIN",
	} {
		var pgErr *pgconn.PgError
		if _, err := admin.Exec(ctx, stmt); err != nil && !(errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "42710")) {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	conn, err := pgx.Connect(ctx, pg.DSN(devDatabase))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = migrations.Setup(ctx, conn, 0, devAppRole)
	return err
}

// DevBanner is what `tally dev` prints once it serves: where things are, and curl
// commands to paste, in order, into a POSIX shell.
func DevBanner(addr, opsAddr, dataDir string) string {
	return fmt.Sprintf(`
Tally is running.
  API      http://%[1]s
  metrics  http://%[2]s/metrics   health http://%[2]s/healthz, /readyz
  data     %[3]s (delete it to start afresh)
Press Ctrl-C to stop.

Try it (paste into a shell):

%[4]s
`, addr, opsAddr, dataDir, DevCurlScript(addr))
}

// DevCurlScript registers USD, opens two accounts, deposits, transfers, and reads the
// balance and history. Idempotency keys include the account ids, so the script can be
// pasted again after a restart.
func DevCurlScript(addr string) string {
	return strings.ReplaceAll(`API=http://ADDR
curl -s -X POST $API/v1/assets -H 'Content-Type: application/json' -d '{"code":"USD","scale":2}'; echo
ALICE=$(curl -s -X POST $API/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"alice","asset":"USD"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
BOB=$(curl -s -X POST $API/v1/accounts -H 'Content-Type: application/json' -d '{"owner":"bob","asset":"USD"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
echo "alice=$ALICE bob=$BOB"
curl -s -X POST $API/v1/transfers -H 'Content-Type: application/json' -H "Idempotency-Key: deposit-$ALICE" -d '{"from_account":"external","to_account":"'$ALICE'","amount":"100.00","asset":"USD"}'; echo
curl -s -X POST $API/v1/transfers -H 'Content-Type: application/json' -H "Idempotency-Key: pay-$ALICE" -d '{"from_account":"'$ALICE'","to_account":"'$BOB'","amount":"12.34","asset":"USD"}'; echo
curl -s $API/v1/accounts/$BOB/balance; echo
curl -s $API/v1/accounts/$ALICE/entries; echo`, "ADDR", addr)
}
