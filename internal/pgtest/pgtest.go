// Package pgtest gives tests a real PostgreSQL server: one per test binary, started by
// Main in a temporary directory on a free loopback port with fsync on, and torn down when
// the tests end. Each test gets its own database, cloned from a migrated template.
package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/store"
)

// AppRole is the login role tests connect as: a member of tally_app, the same
// privileges the ledger service has.
const AppRole = "tally_service"

// RelayLogin is the login role the event relay's tests connect as: a member of
// tally_relay, the same privileges the relay has.
const RelayLogin = "tally_relayer"

const templateDB = "tally_template"

// The server and template are shared by all tests of one binary, which Main brackets.
var (
	server       *postgres.Server
	templateOnce sync.Once
	templateErr  error
	createMu     sync.Mutex // CREATE DATABASE ... TEMPLATE must not run concurrently
	dbCounter    int
)

// Main starts PostgreSQL, runs the tests, and stops it. Call it from TestMain.
func Main(m *testing.M) {
	os.Exit(Run(m))
}

// Run is Main for a TestMain with more to set up and tear down: it returns the exit code.
func Run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tally-pgtest-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// postgres may run as another OS user (when we are root); it must reach its data dir
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	ctx := context.Background()
	server, err = postgres.Start(ctx, postgres.Config{
		DataDir: filepath.Join(dir, "data"),
		Params:  map[string]string{"max_connections": "300", "shared_buffers": "128MB"},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest:", err)
		return 1
	}
	defer server.Stop() //nolint:errcheck // best effort at exit
	return m.Run()
}

// Server returns the running server, for tests that need its port or data directory.
func Server(t testing.TB) *postgres.Server {
	t.Helper()
	if server == nil {
		t.Fatal("pgtest: no server; call pgtest.Main from TestMain")
	}
	return server
}

// DB is one test's database.
type DB struct {
	Name string
	srv  *postgres.Server
}

// SuperDSN connects as the superuser (the schema owner).
func (d *DB) SuperDSN() string { return d.srv.DSN(d.Name) }

// AppDSN connects as AppRole, with the ledger service's privileges.
func (d *DB) AppDSN() string {
	return strings.Replace(d.srv.DSN(d.Name), postgres.Superuser+"@", AppRole+"@", 1)
}

// RelayDSN connects as RelayLogin, with the event relay's privileges.
func (d *DB) RelayDSN() string {
	return strings.Replace(d.srv.DSN(d.Name), postgres.Superuser+"@", RelayLogin+"@", 1)
}

// AppPool opens a pool as AppRole, closed when the test ends.
func (d *DB) AppPool(t testing.TB, maxConns int32) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(d.AppDSN())
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	cfg.MaxConns = maxConns
	// Tests open dozens of connections at once on machines far busier than production
	// ones: a login there can take longer than store.ConnectTimeout, which is sized for a
	// healthy shard. Tests of the timeout itself configure their own pools.
	cfg.ConnConfig.ConnectTimeout = time.Minute
	store.ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatalf("pgtest: open pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// SuperConn opens a superuser connection, closed when the test ends.
func (d *DB) SuperConn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), d.SuperDSN())
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// NewDB creates a fresh database with the ledger schema applied, as shard 0.
func NewDB(t testing.TB) *DB {
	t.Helper()
	srv := Server(t)
	templateOnce.Do(func() { templateErr = makeTemplate(srv) })
	if templateErr != nil {
		t.Fatalf("pgtest: template: %v", templateErr)
	}
	db := create(t, srv, "TEMPLATE "+templateDB)
	// A copy of the template would share its identity; a database made anew has its own.
	if _, err := db.SuperConn(t).Exec(context.Background(), "UPDATE tally.ledger_identity SET id = gen_random_uuid()"); err != nil {
		t.Fatalf("pgtest: new identity: %v", err)
	}
	return db
}

// NewEmptyDB creates a fresh database with no schema.
func NewEmptyDB(t testing.TB) *DB {
	t.Helper()
	return create(t, Server(t), "TEMPLATE template0")
}

func create(t testing.TB, srv *postgres.Server, clause string) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	createMu.Lock()
	dbCounter++
	name := fmt.Sprintf("t%d_%s", dbCounter, sanitize(t.Name()))
	conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err == nil {
		_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()+" "+clause)
		conn.Close(ctx)
	}
	createMu.Unlock()
	if err != nil {
		t.Fatalf("pgtest: create database %s: %v", name, err)
	}
	return &DB{Name: name, srv: srv}
}

func sanitize(name string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(name) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	return b.String()
}

func makeTemplate(srv *postgres.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		return err
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+templateDB); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE ROLE "+AppRole+" LOGIN"); err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, srv.DSN(templateDB))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err = migrations.Setup(ctx, conn, 0, AppRole); err != nil {
		return err
	}
	_, err = admin.Exec(ctx, "CREATE ROLE "+RelayLogin+" LOGIN IN ROLE "+migrations.RelayRole)
	return err
}

// NewShardDB creates a fresh migrated database that is shard index instead of 0.
func NewShardDB(t testing.TB, index int) *DB {
	t.Helper()
	db := NewDB(t)
	conn := db.SuperConn(t)
	if _, err := conn.Exec(context.Background(), "UPDATE tally.shard SET shard_index = $1", index); err != nil {
		t.Fatalf("pgtest: set shard %d: %v", index, err)
	}
	return db
}
