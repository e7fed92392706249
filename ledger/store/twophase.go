package store

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/ledger"
)

// Step is one idempotent write of a two-phase transfer or a reversal, as the store
// records it: who asks, under which key, for what (Hash), as which new transaction.
type Step struct {
	Caller    string
	Key       string
	Hash      [32]byte
	ID        ledger.TransactionID // the transaction the step writes
	CreatedAt time.Time
	Metadata  []byte
}

func (st Step) validate() error {
	return validateEnvelope(st.Caller, st.Key, st.ID, st.CreatedAt, st.Metadata)
}

func (st Step) args() []any {
	meta := st.Metadata
	if len(meta) == 0 {
		meta = []byte("{}")
	}
	return []any{st.Caller, st.Key, st.Hash[:], [16]byte(st.ID), st.CreatedAt, meta}
}

// Reservation is what a pending transfer reserves: Amount of Asset from From, for To on
// this shard or, when Remote is set, for Remote on another shard (the amount is then
// reserved for this shard's clearing account for that shard, and To is ignored). Expires
// is when it voids by itself (zero: never; always zero with Remote). HoldingID and
// ClearingID open the asset's holding and clearing accounts if this shard has none yet.
type Reservation struct {
	From, To, Remote      ledger.AccountID
	Amount                int64
	Asset                 string
	Expires               time.Time
	HoldingID, ClearingID ledger.AccountID
}

// Reserve makes a pending transfer (tally.reserve).
func (s *Store) Reserve(ctx context.Context, st Step, r Reservation) (ledger.Outcome, error) {
	if err := st.validate(); err != nil {
		return ledger.Outcome{}, err
	}
	var exp *time.Time
	if !r.Expires.IsZero() {
		exp = &r.Expires
	}
	var remote *[16]byte
	if r.Remote != (ledger.AccountID{}) {
		id := [16]byte(r.Remote)
		remote = &id
	}
	args := append(st.args(), [16]byte(r.From), [16]byte(r.To), r.Amount, r.Asset, exp, [16]byte(r.HoldingID), remote, [16]byte(r.ClearingID))
	return s.step(ctx, "reserve", `SELECT status, body, replayed, transaction_id FROM tally.reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`, args...)
}

// Resolve posts (amount, or all of it when amount is 0), voids or expires the pending
// transfer (tally.resolve).
func (s *Store) Resolve(ctx context.Context, st Step, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error) {
	if err := st.validate(); err != nil {
		return ledger.Outcome{}, err
	}
	var amt *int64
	if amount != 0 {
		amt = &amount
	}
	args := append(st.args(), [16]byte(pending), string(how), amt)
	return s.step(ctx, "resolve", `SELECT status, body, replayed, transaction_id FROM tally.resolve($1, $2, $3, $4, $5, $6, $7, $8, $9)`, args...)
}

// Reverse posts a transaction of the original's postings turned around, once per
// original (tally.reverse).
func (s *Store) Reverse(ctx context.Context, st Step, original ledger.TransactionID) (ledger.Outcome, error) {
	if err := st.validate(); err != nil {
		return ledger.Outcome{}, err
	}
	args := append(st.args(), [16]byte(original))
	return s.step(ctx, "reverse", `SELECT status, body, replayed, transaction_id FROM tally.reverse($1, $2, $3, $4, $5, $6, $7)`, args...)
}

// step runs one of the functions above in one round trip, retrying what PostgreSQL asks
// to retry. Errors mean what they mean for PostBatch.
func (s *Store) step(ctx context.Context, op, sql string, args ...any) (ledger.Outcome, error) {
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		var out ledger.Outcome
		err = s.durably(ctx, func(conn *pgxpool.Conn) error {
			var body *string
			var txID *[16]byte
			if err := conn.QueryRow(ctx, sql, args...).Scan(&out.Status, &body, &out.Replayed, &txID); err != nil {
				return err
			}
			switch {
			case body != nil:
				out.Body = []byte(*body)
			case out.Status != http.StatusCreated || txID == nil:
				return fmt.Errorf("%s answered status %d with neither a body nor a transaction", op, out.Status)
			default:
				out.Transaction = ledger.TransactionID(*txID)
			}
			return nil
		})
		if err == nil {
			return out, nil
		}
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	s.reconnectAfter(err)
	return ledger.Outcome{}, wrapWrite(op, err)
}

// PendingTransfer reads a pending transfer, whatever its state; id is the transaction
// that reserved it.
func (s *Store) PendingTransfer(ctx context.Context, id ledger.TransactionID) (ledger.PendingTransfer, error) {
	p := ledger.PendingTransfer{ID: id}
	var from, to [16]byte
	var resolvedBy, remote *[16]byte
	var expires, resolvedAt *time.Time
	var posted *int64
	err := s.pool.QueryRow(ctx, `
		SELECT p.from_account, p.to_account, p.asset, p.amount, p.expires_at, p.state, p.posted_amount,
		       p.resolved_by, p.resolved_at, p.remote_account, t.metadata, t.created_at
		FROM tally.pending_transfers p JOIN tally.transactions t ON t.id = p.id
		WHERE p.id = $1`, [16]byte(id)).
		Scan(&from, &to, &p.Asset, &p.Amount, &expires, &p.State, &posted, &resolvedBy, &resolvedAt, &remote, &p.Metadata, &p.CreatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, ledger.Errorf(ledger.CodeTransferNotFound, "no pending transfer %s", id)
	}
	if err != nil {
		return p, wrap("read pending transfer", err)
	}
	p.From, p.To = ledger.AccountID(from), ledger.AccountID(to)
	if expires != nil {
		p.ExpiresAt = *expires
	}
	if posted != nil {
		p.PostedAmount = *posted
	}
	if resolvedBy != nil {
		p.ResolvedBy, p.ResolvedAt = ledger.TransactionID(*resolvedBy), *resolvedAt
	}
	if remote != nil {
		p.Remote = ledger.AccountID(*remote)
	}
	return p, nil
}

// ExpiredTransfers lists up to limit pending transfers whose time was up at now, oldest
// first: the service's sweep expires them.
func (s *Store) ExpiredTransfers(ctx context.Context, now time.Time, limit int) ([]ledger.TransactionID, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT id FROM tally.pending_transfers
		WHERE state = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1
		ORDER BY expires_at LIMIT $2`, now, limit)
	if err != nil {
		return nil, wrap("list expired transfers", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledger.TransactionID, error) {
		var id [16]byte
		err := r.Scan(&id)
		return ledger.TransactionID(id), err
	})
}

// InFlight lists up to limit transfers to other shards still pending that were made
// before the given time, oldest first: the cross-shard driver resumes them.
func (s *Store) InFlight(ctx context.Context, before time.Time, limit int) ([]ledger.TransactionID, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT p.id FROM tally.pending_transfers p JOIN tally.transactions t ON t.id = p.id
		WHERE p.state = 'pending' AND p.remote_account IS NOT NULL AND t.created_at < $1
		ORDER BY p.id LIMIT $2`, before, limit)
	if err != nil {
		return nil, wrap("list transfers in flight", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ledger.TransactionID, error) {
		var id [16]byte
		err := r.Scan(&id)
		return ledger.TransactionID(id), err
	})
}

// Inbound is what a shard did with a transfer another shard sent it.
type Inbound struct {
	Applied     bool
	Transaction ledger.TransactionID // the applying transaction
	Problem     []byte               // why it was refused
}

// ApplyInbound applies, once, the transfer another shard reserved for an account here
// (tally.apply_inbound), as transaction tx made at created; clearingID opens the asset's
// clearing account for the source shard if need be. Asked again, it answers the same.
func (s *Store) ApplyInbound(ctx context.Context, pt ledger.PendingTransfer, tx ledger.TransactionID, created time.Time, clearingID ledger.AccountID) (Inbound, error) {
	meta := pt.Metadata
	if len(meta) == 0 {
		meta = []byte("{}")
	}
	var in Inbound
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		err = s.durably(ctx, func(conn *pgxpool.Conn) error {
			var state string
			var problem *string
			var txID *[16]byte
			if err := conn.QueryRow(ctx, `SELECT state, problem, transaction_id FROM tally.apply_inbound($1, $2, $3, $4, $5, $6, $7, $8)`,
				[16]byte(pt.ID), [16]byte(pt.Remote), pt.Amount, pt.Asset, [16]byte(tx), created, meta, [16]byte(clearingID)).Scan(&state, &problem, &txID); err != nil {
				return err
			}
			in = Inbound{Applied: state == "applied"}
			if txID != nil {
				in.Transaction = ledger.TransactionID(*txID)
			}
			if problem != nil {
				in.Problem = []byte(*problem)
			}
			return nil
		})
		if err == nil || !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		s.reconnectAfter(err)
		return Inbound{}, wrapWrite("apply inbound transfer", err)
	}
	return in, nil
}

// InboundOutcome reads what this shard did with a transfer another shard sent it; found
// is false if it has not been asked yet.
func (s *Store) InboundOutcome(ctx context.Context, id ledger.TransactionID) (in Inbound, found bool, err error) {
	var state string
	var problem *string
	var txID *[16]byte
	err = s.pool.QueryRow(ctx, "SELECT state, problem, transaction_id FROM tally.inbound_transfers WHERE id = $1", [16]byte(id)).Scan(&state, &problem, &txID)
	if errors.Is(err, pgx.ErrNoRows) {
		return in, false, nil
	}
	if err != nil {
		return in, false, wrap("read inbound transfer", err)
	}
	in.Applied = state == "applied"
	if txID != nil {
		in.Transaction = ledger.TransactionID(*txID)
	}
	if problem != nil {
		in.Problem = []byte(*problem)
	}
	return in, true, nil
}
