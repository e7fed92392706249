package store

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/ledger"
)

// PartitionsAhead is how far past now the journal's partitions are made.
const PartitionsAhead = 90 * 24 * time.Hour

// CheckpointGrace is how long after a partition's end its checkpoint waits: longer than
// any request lives, so no transaction made before the boundary is still on its way.
const CheckpointGrace = time.Hour

// EnsurePartitions makes the journal's partitions until ahead from now (migration 014)
// and returns how many it made; -1 means the tables were too busy to lock for a moment,
// and the next call tries again.
func (s *Store) EnsurePartitions(ctx context.Context, ahead time.Duration) (int, error) {
	var made int
	if err := s.pool.QueryRow(ctx, "SELECT tally.ensure_partitions($1)", ahead).Scan(&made); err != nil {
		return 0, wrap("ensure partitions", err)
	}
	return made, nil
}

// MakeCheckpoints checkpoints every account slot's balance at each partition boundary
// at least grace in the past that has none yet (migration 014), and returns how many
// boundaries it checkpointed.
func (s *Store) MakeCheckpoints(ctx context.Context, grace time.Duration) (int, error) {
	var made int
	if err := s.pool.QueryRow(ctx, "SELECT tally.make_checkpoints($1)", grace).Scan(&made); err != nil {
		return 0, wrap("make checkpoints", err)
	}
	return made, nil
}

// BalanceAt is the account's posted balance (all slots) counting every transaction made
// at or before at, to the millisecond. Before the retention horizon it is
// CodeHistoryArchived.
func (s *Store) BalanceAt(ctx context.Context, id ledger.AccountID, at time.Time) (int64, error) {
	var posted int64
	err := s.pool.QueryRow(ctx, "SELECT tally.balance_at($1, $2)", [16]byte(id), at).Scan(&posted)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "TLY02" {
		return 0, ledger.Errorf(ledger.CodeHistoryArchived, "the journal before %s is archived; balances before it are not served", pgErr.Detail)
	}
	if err != nil {
		return 0, wrap("balance at", err)
	}
	return posted, nil
}
