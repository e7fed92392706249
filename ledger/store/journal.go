package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/jackc/pgx/v5"
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

// carryBatch is how many balance rows one carry transaction locks: small enough that a
// transfer waiting on one of them waits milliseconds.
const carryBatch = 1000

// MakeCheckpoints checkpoints every account slot's balance at each partition boundary
// at least grace in the past that has none yet (migration 014), carries the latest
// checkpoint onto the balance rows, a batch per transaction (migration 016), and returns
// how many boundaries it checkpointed.
func (s *Store) MakeCheckpoints(ctx context.Context, grace time.Duration) (int, error) {
	var made int
	if err := s.pool.QueryRow(ctx, "SELECT tally.make_checkpoints($1)", grace).Scan(&made); err != nil {
		return 0, wrap("make checkpoints", err)
	}
	for done := false; !done; {
		if err := s.pool.QueryRow(ctx, "SELECT tally.carry_checkpoints($1)", carryBatch).Scan(&done); err != nil {
			return made, wrap("carry checkpoints", err)
		}
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

// Partition is one partition of the journal (tally.journal_partitions).
type Partition struct {
	Suffix string    // names its tables: transactions_<suffix>, entries_<suffix>
	Starts time.Time // zero for "history", which holds everything before partitioning
	Ends   time.Time
}

// ArchivablePartitions lists, oldest first, the attached partitions that ended before
// before and whose end is checkpointed, stopping at the first that is not: archival
// goes in order, so the horizon only moves forward.
func (s *Store) ArchivablePartitions(ctx context.Context, before time.Time) ([]Partition, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT p.suffix, CASE WHEN isfinite(p.starts) THEN p.starts END, p.ends, p.ends <= $1 AND EXISTS (SELECT FROM tally.checkpoints c WHERE c.at = p.ends)
		FROM tally.journal_partitions p WHERE p.state = 'attached' ORDER BY p.starts`, before)
	if err != nil {
		return nil, wrap("archivable partitions", err)
	}
	var out []Partition
	var p Partition
	var starts *time.Time
	var ready bool
	_, err = pgx.ForEachRow(rows, []any{&p.Suffix, &starts, &p.Ends, &ready}, func() error {
		if !ready {
			return errStop
		}
		p.Starts = time.Time{}
		if starts != nil {
			p.Starts = *starts
		}
		out = append(out, p)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return nil, wrap("archivable partitions", err)
	}
	return out, nil
}

var errStop = errors.New("stop")

// ArchiveMembers are the parts of a partition's archive, in the order ExportPartition
// writes them: its transactions and entries, and for each account slot that moved in it,
// the checkpoint before it (opening) and at its end (closing).
var ArchiveMembers = []string{"transactions", "entries", "opening", "closing"}

// ExportPartition writes the partition's rows, in PostgreSQL's COPY text format, to the
// writer open gives for each of ArchiveMembers, all read in one snapshot, and returns how
// many rows each has.
func (s *Store) ExportPartition(ctx context.Context, p Partition, open func(member string) (io.Writer, error)) (map[string]int64, error) {
	tx, err := s.pool.BeginTx(ctx, pgxTxReadOnlySnapshot)
	if err != nil {
		return nil, wrap("export partition: begin", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	var lo, hi string
	var starts any
	if !p.Starts.IsZero() {
		starts = p.Starts
	}
	if err := tx.QueryRow(ctx, `SELECT coalesce(tally.uuid_at($1), '00000000-0000-0000-0000-000000000000')::text, tally.uuid_at($2)::text`,
		starts, p.Ends).Scan(&lo, &hi); err != nil {
		return nil, wrap("export partition: bounds", err)
	}
	ends := quoteTime(p.Ends)
	opening := "'-infinity'"
	if !p.Starts.IsZero() {
		opening = quoteTime(p.Starts)
	}
	queries := map[string]string{
		"transactions": fmt.Sprintf(`SELECT id, metadata, created_at FROM tally.transactions
			WHERE id >= '%s' AND id < '%s' ORDER BY id`, lo, hi),
		"entries": fmt.Sprintf(`SELECT id, transaction_id, posting, account_id, asset, amount, balance_after, slot FROM tally.entries
			WHERE transaction_id >= '%s' AND transaction_id < '%s' ORDER BY id`, lo, hi),
		"opening": fmt.Sprintf(`SELECT DISTINCT ON (c.account_id, c.slot) c.account_id, c.slot, c.at, c.posted, c.transactions, c.last_entry, c.last_balance_after
			FROM tally.balance_checkpoints c
			WHERE c.at <= %s AND (c.account_id, c.slot) IN (SELECT k.account_id, k.slot FROM tally.balance_checkpoints k WHERE k.at = %s)
			ORDER BY c.account_id, c.slot, c.at DESC`, opening, ends),
		"closing": fmt.Sprintf(`SELECT account_id, slot, at, posted, transactions, last_entry, last_balance_after
			FROM tally.balance_checkpoints WHERE at = %s ORDER BY account_id, slot`, ends),
	}
	counts := map[string]int64{}
	for _, m := range ArchiveMembers {
		w, err := open(m)
		if err != nil {
			return nil, err
		}
		tag, err := tx.Conn().PgConn().CopyTo(ctx, w, "COPY ("+queries[m]+") TO STDOUT")
		if err != nil {
			return nil, wrap("export partition "+p.Suffix+": "+m, err)
		}
		counts[m] = tag.RowsAffected()
	}
	return counts, nil
}

func quoteTime(t time.Time) string { return "'" + t.UTC().Format(time.RFC3339Nano) + "'::timestamptz" }

// DropArchivedPartition detaches and drops a partition whose archive was written and
// checked, and records the archive (tally.drop_archived_partition: oldest first, and
// only once its end is checkpointed). It needs the owner's login.
func (s *Store) DropArchivedPartition(ctx context.Context, suffix string, archive []byte) error {
	if _, err := s.pool.Exec(ctx, "SELECT tally.drop_archived_partition($1, $2)", suffix, archive); err != nil {
		return wrap("drop archived partition "+suffix, err)
	}
	return nil
}

// Horizon is the start of the oldest partition still attached: history before it is
// archived. ok is false while nothing is.
func (s *Store) Horizon(ctx context.Context) (horizon time.Time, ok bool, err error) {
	var h *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT CASE WHEN isfinite(min(starts)) THEN min(starts) END
		FROM tally.journal_partitions WHERE state = 'attached'`).Scan(&h); err != nil {
		return time.Time{}, false, wrap("horizon", err)
	}
	if h == nil {
		return time.Time{}, false, nil
	}
	return *h, true, nil
}
