package bench

import (
	"context"
	"crypto/rand"
	_ "embed"
	"errors"
	"fmt"
	mrand "math/rand/v2"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ReferenceCeiling is the yardstick every ratio divides by: the least work a correct,
// locked, idempotent double-entry transfer does in PostgreSQL, one call per transfer. It
// is a verbatim copy of the shared reference file (a test pins its hash): a ceiling the
// measured system wrote for itself would measure nothing.
//
//go:embed reference_ceiling.sql
var ReferenceCeiling []byte

// referenceDatabase is the reference's own database on the bench's PostgreSQL server.
const referenceDatabase = "reference"

// hotAccountBalance is what the reference's seed gives account 1, its hot account.
const hotAccountBalance = 1_000_000_000_000_000

// reference is the reference ceiling loaded and seeded in its own database.
type reference struct {
	pool     *pgxpool.Pool
	accounts int
}

// loadReference creates the reference's database, loads sql into it and seeds n accounts
// with the balance every Tally account gets.
func loadReference(ctx context.Context, admin *pgx.Conn, dsn string, sql []byte, n, maxConns int) (*reference, error) {
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+referenceDatabase); err != nil {
		return nil, fmt.Errorf("reference: create database: %w", err)
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.MaxConns = int32(maxConns)
	// The file's functions name their tables unqualified and set no search_path of their
	// own: it loads with search_path ceil, and so must every session that calls them.
	cfg.ConnConfig.RuntimeParams["search_path"] = "ceil"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("reference: connect: %w", err)
	}
	// The file is several statements; the simple protocol runs them as one script.
	if _, err := pool.Exec(ctx, string(sql), pgx.QueryExecModeSimpleProtocol); err != nil {
		pool.Close()
		return nil, fmt.Errorf("reference: load: %w", err)
	}
	r := &reference{pool: pool}
	if err := r.seed(ctx, n); err != nil {
		pool.Close()
		return nil, err
	}
	return r, nil
}

// seed replaces every account and journal row with n accounts.
func (r *reference) seed(ctx context.Context, n int) error {
	if _, err := r.pool.Exec(ctx, "SELECT ceil.seed($1, $2)", n, int64(fundingPerAccount)); err != nil {
		return fmt.Errorf("reference: seed %d accounts: %w", n, err)
	}
	if _, err := r.pool.Exec(ctx, "VACUUM ANALYZE ceil.accounts"); err != nil {
		return fmt.Errorf("reference: analyze: %w", err)
	}
	r.accounts = n
	return nil
}

// op is one reference transfer between the accounts the scenario picks (account i of the
// harness is the reference's account i+1, so account 1 is the hot one in both), with a
// fresh idempotency key; insufficient funds count as rejected, as a 422 does for Tally.
func (r *reference) op(pick func(*mrand.Rand) (int, int)) opFunc {
	return func(ctx context.Context, rng *mrand.Rand) (bool, error) {
		from, to := pick(rng)
		var key [16]byte
		_, _ = rand.Read(key[:])
		key[6], key[8] = key[6]&0x0f|0x40, key[8]&0x3f|0x80 // a version 4 UUID
		_, err := r.pool.Exec(ctx, "SELECT * FROM ceil.transfer($1, $2, $3, $4)", int64(from+1), int64(to+1), int64(100), key)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "LD001" {
			return true, nil
		}
		return false, err
	}
}

// violations runs the reference's own invariant check and renders each problem it finds.
func (r *reference) violations(ctx context.Context) ([]string, error) {
	initial := fmt.Sprintf("%d", hotAccountBalance+int64(r.accounts-1)*fundingPerAccount)
	rows, err := r.pool.Query(ctx, "SELECT problem || ': ' || detail FROM ceil.check_invariants($1::numeric)", initial)
	if err != nil {
		return nil, fmt.Errorf("reference: check invariants: %w", err)
	}
	problems, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("reference: check invariants: %w", err)
	}
	return problems, nil
}

func (r *reference) close() { r.pool.Close() }
