// Package migrations holds the ledger's versioned SQL schema, embedded in the binary,
// and applies it with tern under tern's advisory lock, so concurrent and repeated runs
// are safe.
package migrations

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/tern/v2/migrate"

	"github.com/tallyhq/tally/internal/postgres"
)

//go:embed sql/*.sql
var files embed.FS

// VersionTable is where the applied schema version is recorded.
const VersionTable = "public.tally_schema_version"

func newMigrator(ctx context.Context, conn *pgx.Conn) (*migrate.Migrator, error) {
	m, err := migrate.NewMigrator(ctx, conn, VersionTable)
	if err != nil {
		return nil, fmt.Errorf("migrations: new migrator: %w", err)
	}
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: embedded files: %w", err)
	}
	if err := m.LoadMigrations(sub); err != nil {
		return nil, fmt.Errorf("migrations: load: %w", err)
	}
	return m, nil
}

// Latest is the schema version this binary brings.
func Latest(ctx context.Context, conn *pgx.Conn) (int32, error) {
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return 0, err
	}
	return int32(len(m.Migrations)), nil
}

// Apply migrates the database behind conn to the latest version and returns the version
// it is at. A schema already newer than this binary's (a rolled-back operator's Job) is
// left as it is: by the upgrade rule (CheckCompatible) the version after ours still
// serves us.
func Apply(ctx context.Context, conn *pgx.Conn) (int32, error) {
	return ApplyTo(ctx, conn, Count())
}

// ApplyTo migrates the database behind conn up to version (never down) and returns the
// version it is at; tests use it to stand up an earlier release's schema.
func ApplyTo(ctx context.Context, conn *pgx.Conn, version int32) (int32, error) {
	unlock, err := lockMigrations(ctx, conn)
	if err != nil {
		return 0, err
	}
	defer unlock()
	m, err := newMigrator(ctx, conn)
	if err != nil {
		return 0, err
	}
	v, err := m.GetCurrentVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrations: read version: %w", err)
	}
	if v >= version {
		return v, nil
	}
	if err := m.MigrateTo(ctx, version); err != nil {
		return 0, fmt.Errorf("migrations: apply: %w", err)
	}
	if v, err = m.GetCurrentVersion(ctx); err != nil {
		return 0, fmt.Errorf("migrations: read version: %w", err)
	}
	return v, nil
}

// migrationLock is the advisory lock key one migration run holds ("tally" in ASCII).
const migrationLock = 0x74616c6c79

// migrationLockPoll is how often a waiting run asks for the lock again.
const migrationLockPoll = 100 * time.Millisecond

// lockMigrations takes the lock that lets one run migrate at a time, asking again and
// again rather than waiting inside one statement. Migrations that build an index
// CONCURRENTLY wait for every transaction open at the time to end, and a second run
// blocked in pg_advisory_lock (as tern waits for its own lock) is such a transaction, held
// open until the first run finishes: the two would deadlock. Polling leaves nothing open.
func lockMigrations(ctx context.Context, conn *pgx.Conn) (unlock func(), err error) {
	for {
		var locked bool
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", migrationLock).Scan(&locked); err != nil {
			return nil, fmt.Errorf("migrations: take the migration lock: %w", err)
		}
		if locked {
			return func() { _, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", migrationLock) }, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("migrations: wait for another run to finish: %w", ctx.Err())
		case <-time.After(migrationLockPoll):
		}
	}
}

// CheckCompatible says whether a binary built for schema version built may serve a
// database at version have. The rule that makes upgrades and rollbacks safe is expand,
// then contract: migration N+1 only adds or widens (new functions, columns, looser
// checks, replaced function bodies with the same signature and answers) and never
// removes or narrows what a binary built for N uses; removing waits for a later
// migration, once no binary for N can run. So a binary accepts its own version and the
// next one: a ledger pod that restarts after the migration but before its own rollout
// keeps serving, and an operator rolled back one version runs on the newer schema.
func CheckCompatible(have, built int32) error {
	switch {
	case have < built:
		return fmt.Errorf("schema version is %d, this binary needs %d: run tally migrate", have, built)
	case have > built+1:
		return fmt.Errorf("schema version is %d, more than one ahead of this binary's %d: run a newer tally", have, built)
	}
	return nil
}

// CurrentVersion returns the applied schema version, 0 for an empty database.
func CurrentVersion(ctx context.Context, conn *pgx.Conn) (int32, error) {
	var v int32
	err := conn.QueryRow(ctx, "SELECT version FROM "+VersionTable).Scan(&v)
	if err != nil {
		var exists bool
		if qerr := conn.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", VersionTable).Scan(&exists); qerr == nil && !exists {
			return 0, nil
		}
		return 0, fmt.Errorf("migrations: read version: %w", err)
	}
	return v, nil
}

// ErrShardMismatch means the database already belongs to another shard.
var ErrShardMismatch = errors.New("migrations: database belongs to a different shard")

// SetShard records which shard this database is. It may be set once; setting the same
// index again is a no-op, and a different index is ErrShardMismatch.
func SetShard(ctx context.Context, conn *pgx.Conn, shard int) error {
	var got int
	err := conn.QueryRow(ctx, `
		WITH ins AS (INSERT INTO tally.shard (shard_index) VALUES ($1) ON CONFLICT DO NOTHING RETURNING shard_index)
		SELECT shard_index FROM ins UNION ALL SELECT shard_index FROM tally.shard LIMIT 1`, shard).Scan(&got)
	if err != nil {
		return fmt.Errorf("migrations: set shard %d: %w", shard, err)
	}
	if got != shard {
		return fmt.Errorf("%w: it is shard %d, asked for %d", ErrShardMismatch, got, shard)
	}
	return nil
}

// GrantLogin makes the login role a member of tally_app, the role the service uses.
func GrantLogin(ctx context.Context, conn *pgx.Conn, role string) error {
	if _, err := conn.Exec(ctx, "GRANT tally_app TO "+pgx.Identifier{role}.Sanitize()); err != nil {
		return fmt.Errorf("migrations: grant tally_app to %s: %w", role, err)
	}
	return nil
}

// MonitorRole is the database role that may count a shard's accounts and nothing else
// (migration 006); the operator logs in as a member of it.
const MonitorRole = "tally_monitor"

// RelayRole is the database role that may read and publish a shard's event outbox and
// nothing else (migration 012); the event relay logs in as a member of it.
const RelayRole = "tally_relay"

// GrantMonitor makes login a login role with the given password (stored as a SCRAM
// verifier, never sent in clear) and a member of MonitorRole, and nothing more.
func GrantMonitor(ctx context.Context, conn *pgx.Conn, login, password string) error {
	return grantRole(ctx, conn, MonitorRole, login, password)
}

// GrantRelay makes login a login role with the given password and a member of
// RelayRole, and nothing more.
func GrantRelay(ctx context.Context, conn *pgx.Conn, login, password string) error {
	return grantRole(ctx, conn, RelayRole, login, password)
}

func grantRole(ctx context.Context, conn *pgx.Conn, granted, login, password string) error {
	role := pgx.Identifier{login}.Sanitize()
	if _, err := conn.Exec(ctx, `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = `+quoteLiteral(login)+`) THEN CREATE ROLE `+role+` LOGIN; END IF; END $$`); err != nil {
		return fmt.Errorf("migrations: create %s: %w", login, err)
	}
	if err := postgres.SetPassword(ctx, conn, login, password); err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	if _, err := conn.Exec(ctx, "GRANT "+granted+" TO "+role); err != nil {
		return fmt.Errorf("migrations: grant %s to %s: %w", granted, login, err)
	}
	return nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// Setup applies the schema, records the shard index (skipped when shard < 0) and, when
// login is not empty, lets that role log in as the service: everything `tally migrate`
// does, in order.
func Setup(ctx context.Context, conn *pgx.Conn, shard int, login string) (int32, error) {
	version, err := Apply(ctx, conn)
	if err != nil {
		return 0, err
	}
	if shard >= 0 {
		if err := SetShard(ctx, conn, shard); err != nil {
			return version, err
		}
	}
	if login != "" {
		if err := GrantLogin(ctx, conn, login); err != nil {
			return version, err
		}
	}
	return version, nil
}

// Count is the number of migrations embedded in this binary: the schema version it
// needs, known without a database.
func Count() int32 {
	names, err := fs.Glob(files, "sql/*.sql")
	if err != nil {
		panic(fmt.Sprintf("migrations: embedded files: %v", err)) // a broken build, not a runtime state
	}
	return int32(len(names))
}

// CDCPublication is the publication change data capture reads (EnableCDC).
const CDCPublication = "tally_cdc"

// cdcTables are the journal's tables change data capture sees: what happened, never the
// service's own bookkeeping (idempotency keys, the outbox).
var cdcTables = []string{"tally.transactions", "tally.entries", "tally.accounts", "tally.pending_transfers",
	"tally.inbound_transfers", "tally.reversals"}

// EnableCDC makes login (with password) a login that may replicate (logical decoding)
// and read the journal's tables, and nothing more, and keeps the publication
// CDCPublication over those tables (the journal's changes named after its parent tables,
// whatever partition they land in). It needs the schema applied and, to be used,
// wal_level=logical. Every statement tolerates a rerun.
func EnableCDC(ctx context.Context, conn *pgx.Conn, login, password string) error {
	role := pgx.Identifier{login}.Sanitize()
	tables := strings.Join(cdcTables, ", ")
	for _, stmt := range []string{
		`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = ` + quoteLiteral(login) + `) THEN CREATE ROLE ` + role + ` LOGIN REPLICATION; END IF; END $$`,
		"GRANT USAGE ON SCHEMA tally TO " + role,
		"GRANT SELECT ON " + tables + " TO " + role,
		`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_publication WHERE pubname = ` + quoteLiteral(CDCPublication) + `) THEN CREATE PUBLICATION ` +
			CDCPublication + ` FOR TABLE ` + tables + ` WITH (publish_via_partition_root = true); END IF; END $$`,
	} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("migrations: change data capture: %w", err)
		}
	}
	if err := postgres.SetPassword(ctx, conn, login, password); err != nil {
		return fmt.Errorf("migrations: %w", err)
	}
	return nil
}
