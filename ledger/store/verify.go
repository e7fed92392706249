package store

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/ledger"
)

// Violation is one broken invariant found by Verify.
type Violation struct {
	Check  string // which invariant
	Detail string // which rows, and how
}

// String renders a violation for people.
func (v Violation) String() string { return v.Check + ": " + v.Detail }

// maxViolationsPerCheck bounds the report: a broken ledger can have millions of bad rows.
const maxViolationsPerCheck = 20

// check is one invariant: a query returning one text row per violation. Queries see the
// scope as $1, the first transaction id they read (the nil UUID for all of them), and $2,
// the checkpoint that stands for everything before it (NULL for none); seed is that
// checkpoint's row for each account slot (see migration 014).
type check struct {
	name  string
	query string
}

// scope is prepended to every check: it names $1 and $2 with their types, and seed.
const scope = `WITH scope AS (SELECT $1::uuid AS since, $2::timestamptz AS base),
	seed AS (SELECT DISTINCT ON (account_id, slot) account_id, slot, posted, transactions, last_entry, last_balance_after
	         FROM tally.balance_checkpoints WHERE at <= $2 ORDER BY account_id, slot, at DESC) `

// checks recompute everything in scope from the journal, standing on the checkpoint for
// what came before. Each query returns a description of each violation it finds; an
// empty result means the invariant holds.
var checks = []check{
	{"balance equals sum of entries", `
		SELECT format('account %s slot %s: balance %s, entries sum to %s', b.account_id, b.slot, b.posted, coalesce(s.posted, 0) + coalesce(e.total, 0))
		FROM tally.balances b
		LEFT JOIN (SELECT account_id, coalesce(slot, 0) AS slot, sum(amount) AS total FROM tally.entries
		           WHERE transaction_id >= $1 GROUP BY 1, 2) e USING (account_id, slot)
		LEFT JOIN seed s USING (account_id, slot)
		WHERE b.posted <> coalesce(s.posted, 0) + coalesce(e.total, 0)`},
	{"balance version counts its transactions", `
		SELECT format('account %s slot %s: version %s, %s transactions', b.account_id, b.slot, b.version, coalesce(s.transactions, 0) + coalesce(e.n, 0))
		FROM tally.balances b
		LEFT JOIN (SELECT account_id, coalesce(slot, 0) AS slot, count(DISTINCT transaction_id) AS n FROM tally.entries
		           WHERE transaction_id >= $1 GROUP BY 1, 2) e USING (account_id, slot)
		LEFT JOIN seed s USING (account_id, slot)
		WHERE b.version <> coalesce(s.transactions, 0) + coalesce(e.n, 0)`},
	// Each entry continues the one before it by id. In scope, that is the previous entry
	// in scope, or the checkpoint's last entry when that comes between; an entry whose id
	// is below the checkpoint's last entry (made after the boundary, written a moment
	// before an entry made before it) was checked against its neighbours when written.
	{"running balances are consistent", `
		SELECT format('entry %s of account %s slot %s: balance_after %s, previous %s plus amount %s', e.id, e.account_id, e.slot, e.balance_after,
		              CASE WHEN s.last_entry IS NOT NULL AND (e.prev_id IS NULL OR e.prev_id < s.last_entry) THEN s.last_balance_after
		                   ELSE coalesce(e.prev, 0) END, e.amount)
		FROM (SELECT id, account_id, slot, amount, balance_after,
		             lag(balance_after) OVER w AS prev, lag(id) OVER w AS prev_id
		      FROM tally.entries WHERE transaction_id >= $1
		      WINDOW w AS (PARTITION BY account_id, slot ORDER BY id)) e
		LEFT JOIN seed s ON s.account_id = e.account_id AND s.slot = coalesce(e.slot, 0)
		WHERE CASE WHEN s.last_entry IS NOT NULL AND e.id < s.last_entry THEN false
		           WHEN s.last_entry IS NOT NULL AND (e.prev_id IS NULL OR e.prev_id < s.last_entry)
		             THEN e.balance_after <> s.last_balance_after + e.amount
		           ELSE e.balance_after <> coalesce(e.prev, 0) + e.amount END`},
	{"every entry is on one of its account's slots", `
		SELECT format('entry %s of account %s is on slot %s, which has no balance row', e.id, e.account_id, e.slot)
		FROM tally.entries e LEFT JOIN tally.balances b ON b.account_id = e.account_id AND b.slot = coalesce(e.slot, 0)
		WHERE e.transaction_id >= $1 AND b.account_id IS NULL`},
	{"no balance below its floor", `
		SELECT format('account %s: balance %s below floor %s', account_id, posted, floor)
		FROM tally.balances WHERE posted < floor`},
	{"balance floor matches account", `
		SELECT format('account %s: balance floor %s, account floor %s', a.id, b.floor, a.balance_floor)
		FROM tally.accounts a JOIN tally.balances b ON b.account_id = a.id WHERE b.floor <> a.balance_floor`},
	{"every account has its balance slots", `
		SELECT format('account %s has %s balance slots and balance rows for slots %s', a.id, a.balance_slots, coalesce(b.slots, '{}'))
		FROM tally.accounts a
		LEFT JOIN (SELECT account_id, array_agg(slot ORDER BY slot) AS slots FROM tally.balances GROUP BY account_id) b ON b.account_id = a.id
		WHERE b.slots IS DISTINCT FROM CASE WHEN a.balance_slots = 1 THEN '{0}'::smallint[]
		                                    ELSE ARRAY(SELECT s::smallint FROM generate_series(1, a.balance_slots) s) END`},
	{"transaction sums to zero per asset", `
		SELECT format('transaction %s: %s sums to %s', transaction_id, asset, sum(amount))
		FROM tally.entries WHERE transaction_id >= $1 GROUP BY transaction_id, asset HAVING sum(amount) <> 0`},
	{"posting is one credit and debits from one account, one per slot", `
		SELECT format('transaction %s posting %s: %s legs summing to %s', transaction_id, posting, count(*), sum(amount))
		FROM tally.entries WHERE transaction_id >= $1 GROUP BY transaction_id, posting
		HAVING count(*) FILTER (WHERE amount > 0) <> 1 OR count(DISTINCT account_id) FILTER (WHERE amount < 0) <> 1
		    OR count(*) FILTER (WHERE amount < 0) <> count(DISTINCT coalesce(slot, 0)) FILTER (WHERE amount < 0)
		    OR sum(amount) <> 0 OR count(DISTINCT asset) <> 1`},
	{"transaction has entries", `
		SELECT format('transaction %s has no entries', t.id)
		FROM tally.transactions t WHERE t.id >= $1 AND NOT EXISTS (SELECT 1 FROM tally.entries e WHERE e.transaction_id = t.id)`},
	{"entry names its transaction and account", `
		SELECT format('entry %s names %s %s, which does not exist', e.id,
		              CASE WHEN t.id IS NULL THEN 'transaction' ELSE 'account' END,
		              CASE WHEN t.id IS NULL THEN e.transaction_id ELSE e.account_id END)
		FROM tally.entries e
		LEFT JOIN tally.transactions t ON t.id = e.transaction_id
		LEFT JOIN tally.accounts a ON a.id = e.account_id
		WHERE e.transaction_id >= $1 AND (t.id IS NULL OR a.id IS NULL)`},
	{"entry asset matches account", `
		SELECT format('entry %s: asset %s on account %s holding %s', e.id, e.asset, e.account_id, a.asset)
		FROM tally.entries e JOIN tally.accounts a ON a.id = e.account_id WHERE e.transaction_id >= $1 AND e.asset <> a.asset`},
	{"money is conserved per asset", `
		SELECT format('asset %s: balances sum to %s', a.asset, sum(b.posted))
		FROM tally.balances b JOIN tally.accounts a ON a.id = b.account_id
		GROUP BY a.asset HAVING sum(b.posted) <> 0`},
	{"ids belong to this shard", `
		SELECT format('%s %s belongs to shard %s, this is shard %s', what, id, tally.id_shard(id), s.shard_index)
		FROM (SELECT 'account' AS what, id FROM tally.accounts UNION ALL SELECT 'transaction', id FROM tally.transactions WHERE id >= $1) x
		CROSS JOIN tally.shard s WHERE tally.id_shard(x.id) <> s.shard_index`},
	{"each holding account holds exactly its asset's pending transfers", `
		SELECT format('holding account %s of %s holds %s, its pending transfers %s', a.id, a.asset, coalesce(b.held, 0), coalesce(p.pending, 0))
		FROM tally.accounts a
		LEFT JOIN (SELECT account_id, sum(posted) AS held FROM tally.balances GROUP BY account_id) b ON b.account_id = a.id
		LEFT JOIN (SELECT asset, sum(amount) AS pending FROM tally.pending_transfers WHERE state = 'pending' GROUP BY asset) p ON p.asset = a.asset
		WHERE a.kind = 'holding' AND coalesce(b.held, 0) <> coalesce(p.pending, 0)
		UNION ALL
		SELECT format('asset %s has pending transfers of %s but no holding account', p.asset, sum(p.amount))
		FROM tally.pending_transfers p
		WHERE p.state = 'pending' AND NOT EXISTS (SELECT FROM tally.accounts a WHERE a.kind = 'holding' AND a.asset = p.asset)
		GROUP BY p.asset`},
	{"a pending transfer's transactions move exactly what it says", `
		SELECT format('pending transfer %s (%s of %s, %s): %s', p.id, p.amount, p.asset, p.state, m.what)
		FROM tally.pending_transfers p
		JOIN tally.accounts h ON h.kind = 'holding' AND h.asset = p.asset
		CROSS JOIN LATERAL (
		  SELECT 'the reservation moved ' || coalesce(sum(e.amount) FILTER (WHERE e.account_id = h.id), 0) || ' into holding and '
		         || coalesce(-sum(e.amount) FILTER (WHERE e.account_id = p.from_account), 0) || ' from the source' AS what
		  FROM tally.entries e WHERE p.id >= $1 AND e.transaction_id = p.id
		  HAVING p.id >= $1
		     AND (coalesce(sum(e.amount) FILTER (WHERE e.account_id = h.id), 0) <> p.amount
		          OR coalesce(sum(e.amount) FILTER (WHERE e.account_id = p.from_account), 0) <> -p.amount
		          OR count(*) FILTER (WHERE e.account_id NOT IN (h.id, p.from_account)) > 0)
		  UNION ALL
		  SELECT 'the resolution moved ' || coalesce(-sum(e.amount) FILTER (WHERE e.account_id = h.id), 0) || ' out of holding, '
		         || coalesce(sum(e.amount) FILTER (WHERE e.account_id = p.to_account), 0) || ' to the destination'
		  FROM tally.entries e WHERE p.resolved_by >= $1 AND e.transaction_id = p.resolved_by
		  HAVING p.resolved_by >= $1
		     AND (coalesce(sum(e.amount) FILTER (WHERE e.account_id = h.id), 0) <> -p.amount
		          OR coalesce(sum(e.amount) FILTER (WHERE e.account_id = p.to_account), 0) <> coalesce(p.posted_amount, 0)
		          OR coalesce(sum(e.amount) FILTER (WHERE e.account_id = p.from_account), 0) <> p.amount - coalesce(p.posted_amount, 0))) m`},
	{"a reversal mirrors what it reverses", `
		SELECT format('transaction %s is reversed by %s, which does not undo it', r.transaction_id, r.reversal_id)
		FROM tally.reversals r
		WHERE r.transaction_id >= $1 AND r.reversal_id >= $1
		  AND EXISTS (SELECT account_id, asset, sum(amount) FROM tally.entries
		              WHERE transaction_id IN (r.transaction_id, r.reversal_id)
		              GROUP BY account_id, asset HAVING sum(amount) <> 0)`},
	{"closed accounts are empty", `
		SELECT format('closed account %s holds %s', a.id, sum(b.posted))
		FROM tally.accounts a JOIN tally.balances b ON b.account_id = a.id WHERE a.status = 'closed'
		GROUP BY a.id HAVING sum(b.posted) <> 0`},
	// Every checkpoint after the base is the one before it plus its partition's entries,
	// with rows for exactly the slots that moved. Checkpoints are made at partition ends,
	// one partition at a time, so each entry's period is its partition: one read of the
	// journal, grouped by partition.
	{"checkpoints agree with the journal", `
		, moved AS (SELECT p.ends AS at, e.account_id, coalesce(e.slot, 0)::smallint AS slot, sum(e.amount) AS total,
		                 count(DISTINCT e.transaction_id) AS n, max(e.id) AS last_id
		          FROM tally.entries e
		          JOIN tally.journal_partitions p ON e.tableoid = ('tally.entries_' || p.suffix)::regclass
		          WHERE p.state = 'attached' AND p.ends > coalesce($2, '-infinity') AND e.transaction_id >= $1
		            AND EXISTS (SELECT FROM tally.checkpoints c WHERE c.at = p.ends)
		          GROUP BY 1, 2, 3),
		rows AS (SELECT account_id, slot, at, posted, transactions, last_entry,
		                lag(posted) OVER w AS prev_posted, lag(transactions) OVER w AS prev_transactions, lag(last_entry) OVER w AS prev_last
		         FROM tally.balance_checkpoints WINDOW w AS (PARTITION BY account_id, slot ORDER BY at))
		SELECT format('checkpoint %s, account %s slot %s: %s', at, account_id, slot,
		              CASE WHEN r.posted IS NULL THEN 'no row, though it moved'
		                   WHEN m.total IS NULL THEN 'a row, though it did not move'
		                   ELSE format('%s over %s transactions, the journal says %s over %s', r.posted, r.transactions,
		                               coalesce(r.prev_posted, 0) + m.total, coalesce(r.prev_transactions, 0) + m.n) END)
		FROM (SELECT * FROM rows WHERE at > coalesce($2, '-infinity')) r FULL JOIN moved m USING (at, account_id, slot)
		WHERE r.posted IS NULL OR m.total IS NULL OR r.posted <> coalesce(r.prev_posted, 0) + m.total
		   OR r.transactions <> coalesce(r.prev_transactions, 0) + m.n OR r.last_entry <> greatest(r.prev_last, m.last_id)`},
	// A balance row's carried checkpoint (migration 016) is a true copy of a checkpoint
	// row, and once the carry is through a checkpoint, no older than the slot's row there:
	// the running-balance checks stand on it.
	{"balances carry their latest checkpoint", `
		, carry AS (SELECT through FROM tally.checkpoint_carry)
		SELECT format('account %s slot %s carries checkpoint %s (entry %s, balance %s); %s', b.account_id, b.slot,
		              b.checkpoint_at, b.checkpoint_entry, b.checkpoint_balance,
		              CASE WHEN k.at IS NOT NULL AND (k.last_entry, k.last_balance_after) IS DISTINCT FROM (b.checkpoint_entry, b.checkpoint_balance)
		                   THEN format('that checkpoint says entry %s, balance %s', k.last_entry, k.last_balance_after)
		                   ELSE format('its latest is %s', l.at) END)
		FROM tally.balances b CROSS JOIN carry
		LEFT JOIN tally.balance_checkpoints k ON k.account_id = b.account_id AND k.slot = b.slot AND k.at = b.checkpoint_at
		LEFT JOIN LATERAL (SELECT l.at FROM tally.balance_checkpoints l
		                   WHERE l.account_id = b.account_id AND l.slot = b.slot AND l.at <= carry.through
		                   ORDER BY l.at DESC LIMIT 1) l ON true
		WHERE (k.at IS NOT NULL AND (k.last_entry, k.last_balance_after) IS DISTINCT FROM (b.checkpoint_entry, b.checkpoint_balance))
		   OR (l.at IS NOT NULL AND (b.checkpoint_at IS NULL OR b.checkpoint_at < l.at))`},
}

// Verify checks every invariant in one repeatable-read snapshot, so a running ledger can
// be verified without stopping it: every balance recomputed from the journal (standing on
// the checkpoint at the retention horizon once older partitions are archived), every
// transaction, and every checkpoint since.
func (s *Store) Verify(ctx context.Context) ([]Violation, error) {
	return s.verify(ctx, `SELECT max(c.at) FROM tally.checkpoints c
		WHERE c.at <= (SELECT min(p.starts) FROM tally.journal_partitions p WHERE p.state = 'attached')`)
}

// VerifyIncremental checks what changed since the latest checkpoint: every balance is
// the checkpoint plus the entries since, and every transaction since is checked; the
// checkpoints themselves are the full Verify's to check.
func (s *Store) VerifyIncremental(ctx context.Context) ([]Violation, error) {
	return s.verify(ctx, `SELECT max(at) FROM tally.checkpoints`)
}

// verify runs the checks over the journal from the checkpoint base selects (none: all).
func (s *Store) verify(ctx context.Context, base string) ([]Violation, error) {
	tx, err := s.pool.BeginTx(ctx, pgxTxReadOnlySnapshot)
	if err != nil {
		return nil, wrap("verify: begin", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	var at *time.Time
	if err := tx.QueryRow(ctx, base).Scan(&at); err != nil {
		return nil, wrap("verify: base checkpoint", err)
	}
	since := [16]byte{}
	if at != nil {
		if err := tx.QueryRow(ctx, "SELECT tally.uuid_at($1)", *at).Scan(&since); err != nil {
			return nil, wrap("verify: base checkpoint", err)
		}
	}
	var found []Violation
	for _, c := range checks {
		rows, err := tx.Query(ctx, scope+c.query+fmt.Sprintf(" LIMIT %d", maxViolationsPerCheck), since, at)
		if err != nil {
			return nil, wrap("verify: "+c.name, err)
		}
		for rows.Next() {
			var detail string
			if err := rows.Scan(&detail); err != nil {
				rows.Close()
				return nil, wrap("verify: "+c.name, err)
			}
			found = append(found, Violation{Check: c.name, Detail: detail})
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, wrap("verify: "+c.name, err)
		}
	}
	return found, nil
}

var pgxTxReadOnlySnapshot = pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}

// ShardRecords is what one shard holds of transfers between shards, read in one
// snapshot: its clearing accounts' balances, the transfers it sent and those it received.
type ShardRecords struct {
	Clearing map[ClearingKey]int64 // balance of the clearing account for (asset, peer shard)
	Sent     []SentTransfer
	Received []ReceivedTransfer
	// Totals is, per asset, the sum of every balance on the shard.
	Totals map[string]int64
}

// ClearingKey names a clearing account: its asset and the shard it stands for.
type ClearingKey struct {
	Asset string
	Peer  int
}

// SentTransfer is a transfer this shard reserved for an account on another shard.
type SentTransfer struct {
	ID     ledger.TransactionID
	Remote ledger.AccountID
	Asset  string
	Amount int64
	State  ledger.PendingState
}

// ReceivedTransfer is what this shard did with a transfer another shard sent it.
type ReceivedTransfer struct {
	ID      ledger.TransactionID // the source's pending transfer, which names the source shard
	To      ledger.AccountID
	Asset   string
	Amount  int64
	Applied bool
}

// CrossShardRecords reads the shard's side of transfers between shards for a cluster
// verify (ledger/crossshard).
func (s *Store) CrossShardRecords(ctx context.Context) (ShardRecords, error) {
	r := ShardRecords{Clearing: map[ClearingKey]int64{}, Totals: map[string]int64{}}
	tx, err := s.pool.BeginTx(ctx, pgxTxReadOnlySnapshot)
	if err != nil {
		return r, wrap("cross-shard records: begin", err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // read-only
	rows, err := tx.Query(ctx, `
		SELECT a.asset, a.kind, a.owner, sum(b.posted)::numeric::text
		FROM tally.accounts a JOIN tally.balances b ON b.account_id = a.id
		GROUP BY a.asset, a.kind, a.owner`)
	if err != nil {
		return r, wrap("cross-shard records: balances", err)
	}
	var asset, kind, owner, sum string
	_, err = pgx.ForEachRow(rows, []any{&asset, &kind, &owner, &sum}, func() error {
		n, err := strconv.ParseInt(sum, 10, 64)
		if err != nil {
			return fmt.Errorf("balance sum %s of %s: %w", sum, owner, err)
		}
		r.Totals[asset] += n
		if kind == string(ledger.KindClearing) {
			peer, err := strconv.Atoi(strings.TrimPrefix(owner, ClearingOwnerPrefix))
			if err != nil {
				return fmt.Errorf("clearing account owner %q: %w", owner, err)
			}
			r.Clearing[ClearingKey{Asset: asset, Peer: peer}] += n
		}
		return nil
	})
	if err != nil {
		return r, wrap("cross-shard records: balances", err)
	}
	rows, err = tx.Query(ctx, `SELECT id, remote_account, asset, amount, state FROM tally.pending_transfers WHERE remote_account IS NOT NULL`)
	if err != nil {
		return r, wrap("cross-shard records: sent", err)
	}
	if r.Sent, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (SentTransfer, error) {
		var t SentTransfer
		var id, remote [16]byte
		err := row.Scan(&id, &remote, &t.Asset, &t.Amount, &t.State)
		t.ID, t.Remote = ledger.TransactionID(id), ledger.AccountID(remote)
		return t, err
	}); err != nil {
		return r, wrap("cross-shard records: sent", err)
	}
	rows, err = tx.Query(ctx, `SELECT id, to_account, asset, amount, state = 'applied' FROM tally.inbound_transfers`)
	if err != nil {
		return r, wrap("cross-shard records: received", err)
	}
	if r.Received, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (ReceivedTransfer, error) {
		var t ReceivedTransfer
		var id, to [16]byte
		err := row.Scan(&id, &to, &t.Asset, &t.Amount, &t.Applied)
		t.ID, t.To = ledger.TransactionID(id), ledger.AccountID(to)
		return t, err
	}); err != nil {
		return r, wrap("cross-shard records: received", err)
	}
	return r, nil
}

// ClearingOwnerPrefix starts the owner of a clearing account; the peer shard's index follows.
const ClearingOwnerPrefix = "tally:clearing:"
