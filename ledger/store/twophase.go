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
	"github.com/tallyhq/tally/ledger/metadata"
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

// ReserveRequest is one reservation of a batch.
type ReserveRequest struct {
	Step
	Reservation
}

// Validate checks what the request carries into a batch, so that PostgreSQL cannot
// refuse a batch because of it (see Request.Validate).
func (r ReserveRequest) Validate() error {
	if err := r.Step.validate(); err != nil {
		return err
	}
	if r.Amount <= 0 || r.Asset == "" || !storableText(r.Asset) {
		return ledger.Errorf(ledger.CodeInvalidRequest, "a transfer needs a positive amount and an asset")
	}
	if !r.Expires.IsZero() && (!r.Expires.After(r.CreatedAt) || r.Remote != (ledger.AccountID{})) {
		return fmt.Errorf("store: a reservation expires after it is made, and one to another shard never does")
	}
	return nil
}

// Reserve makes one pending transfer: a batch of one (see ReserveBatch).
func (s *Store) Reserve(ctx context.Context, st Step, r Reservation) (ledger.Outcome, error) {
	return one(ctx, s.ReserveBatch, ReserveRequest{st, r})
}

// ReserveBatch makes pending transfers, each under its own idempotency key, in one
// database transaction and one round trip (tally.reserve_batch); a 201's
// Outcome.Transaction is the pending transfer's id. Requests must have distinct keys and
// pass Validate. Errors mean what they mean for PostBatch.
func (s *Store) ReserveBatch(ctx context.Context, reqs []ReserveRequest) ([]ledger.Outcome, error) {
	n := len(reqs)
	env := newEnvelopes(n)
	from, to, remote := make([][16]byte, n), make([][16]byte, n), make([]*[16]byte, n)
	holding, clearing := make([][16]byte, n), make([][16]byte, n)
	amounts, assets, expires := make([]int64, n), make([]string, n), make([]*time.Time, n)
	for i, r := range reqs {
		env.add(i, r.Step)
		from[i], to[i], holding[i], clearing[i] = [16]byte(r.From), [16]byte(r.To), [16]byte(r.HoldingID), [16]byte(r.ClearingID)
		amounts[i], assets[i] = r.Amount, r.Asset
		if !r.Expires.IsZero() {
			expires[i] = &r.Expires
		}
		if r.Remote != (ledger.AccountID{}) {
			id := [16]byte(r.Remote)
			remote[i] = &id
		}
	}
	args := append(env.args(), from, to, amounts, assets, expires, holding, remote, clearing)
	return s.stepBatch(ctx, "reserve", `SELECT req, status, body, replayed, transaction_id
		FROM tally.reserve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`, n, args)
}

// ResolveRequest is one resolution of a batch: post (Amount, or all of it when 0),
// void or expire the pending transfer, or settle or return one to another shard.
type ResolveRequest struct {
	Step
	Pending ledger.TransactionID
	How     ledger.Resolution
	Amount  int64
}

// Validate checks what the request carries into a batch (see Request.Validate).
func (r ResolveRequest) Validate() error {
	if err := r.Step.validate(); err != nil {
		return err
	}
	switch r.How {
	case ledger.ResolvePost, ledger.ResolveVoid, ledger.ResolveExpire, ledger.ResolveSettle, ledger.ResolveReturn:
	default:
		return fmt.Errorf("store: unknown resolution %q", r.How)
	}
	if r.Amount < 0 || (r.Amount != 0 && r.How != ledger.ResolvePost) {
		return ledger.Errorf(ledger.CodeInvalidRequest, "only a post names an amount, and it is positive")
	}
	return nil
}

// Resolve resolves one pending transfer: a batch of one (see ResolveBatch).
func (s *Store) Resolve(ctx context.Context, st Step, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error) {
	return one(ctx, s.ResolveBatch, ResolveRequest{st, pending, how, amount})
}

// ResolveBatch resolves pending transfers, each at most once in a batch, in one database
// transaction and one round trip (tally.resolve_batch). Errors mean what they mean for
// PostBatch.
func (s *Store) ResolveBatch(ctx context.Context, reqs []ResolveRequest) ([]ledger.Outcome, error) {
	n := len(reqs)
	env := newEnvelopes(n)
	pending, actions, amounts := make([][16]byte, n), make([]string, n), make([]*int64, n)
	for i, r := range reqs {
		env.add(i, r.Step)
		pending[i], actions[i] = [16]byte(r.Pending), string(r.How)
		if r.Amount != 0 {
			amounts[i] = &reqs[i].Amount
		}
	}
	args := append(env.args(), pending, actions, amounts)
	return s.stepBatch(ctx, "resolve", `SELECT req, status, body, replayed, transaction_id
		FROM tally.resolve_batch($1, $2, $3, $4, $5, $6, $7, $8, $9)`, n, args)
}

// Reverse posts a transaction of the original's postings turned around, once per
// original (tally.reverse).
func (s *Store) Reverse(ctx context.Context, st Step, original ledger.TransactionID) (ledger.Outcome, error) {
	if err := st.validate(); err != nil {
		return ledger.Outcome{}, err
	}
	outs, err := s.stepBatch(ctx, "reverse", `SELECT 1, status, body, replayed, transaction_id FROM tally.reverse($1, $2, $3, $4, $5, $6, $7)`,
		1, append(st.args(), [16]byte(original)))
	if err != nil {
		return ledger.Outcome{}, err
	}
	return outs[0], nil
}

// one runs a batch function for a single request.
func one[R interface{ Validate() error }, O any](ctx context.Context, batch func(context.Context, []R) ([]O, error), r R) (O, error) {
	var zero O
	if err := r.Validate(); err != nil {
		return zero, err
	}
	outs, err := batch(ctx, []R{r})
	if err != nil {
		return zero, err
	}
	return outs[0], nil
}

// envelopes are the idempotency and journal arguments every step batch starts with.
type envelopes struct {
	callers, keys []string
	hashes        [][]byte
	ids           [][16]byte
	created       []time.Time
	metas         [][]byte
}

func newEnvelopes(n int) *envelopes {
	return &envelopes{callers: make([]string, n), keys: make([]string, n), hashes: make([][]byte, n),
		ids: make([][16]byte, n), created: make([]time.Time, n), metas: make([][]byte, n)}
}

func (e *envelopes) add(i int, st Step) {
	e.callers[i], e.keys[i], e.hashes[i] = st.Caller, st.Key, st.Hash[:]
	e.ids[i], e.created[i], e.metas[i] = [16]byte(st.ID), st.CreatedAt, st.Metadata
	if len(e.metas[i]) == 0 {
		e.metas[i] = []byte("{}")
	}
}

func (e *envelopes) args() []any {
	return []any{e.callers, e.keys, e.hashes, e.ids, e.created, e.metas}
}

// stepBatch runs one of the step functions above for n requests in one round trip,
// retrying what PostgreSQL asks to retry, and returns each request's outcome in order.
func (s *Store) stepBatch(ctx context.Context, op, sql string, n int, args []any) ([]ledger.Outcome, error) {
	var outs []ledger.Outcome
	err := s.writeRows(ctx, op, sql, args, func(rows pgx.Rows) error {
		outs = make([]ledger.Outcome, n)
		got := 0
		for rows.Next() {
			var idx int
			var body *string
			var txID *[16]byte
			var o ledger.Outcome
			if err := rows.Scan(&idx, &o.Status, &body, &o.Replayed, &txID); err != nil {
				return err
			}
			switch {
			case idx < 1 || idx > n:
				return fmt.Errorf("%s answered for request %d of %d", op, idx, n)
			case body != nil:
				o.Body = []byte(*body)
			case o.Status != http.StatusCreated || txID == nil:
				return fmt.Errorf("%s answered request %d with status %d and neither a body nor a transaction", op, idx, o.Status)
			default:
				o.Transaction = ledger.TransactionID(*txID)
			}
			outs[idx-1] = o
			got++
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if got != n {
			return fmt.Errorf("%s answered %d of %d requests", op, got, n)
		}
		return nil
	})
	return outs, err
}

// writeRows runs a write statement and reads its rows with scan, retrying what
// PostgreSQL asks to retry (scan starts afresh each time). Errors mean what they mean for
// PostBatch.
func (s *Store) writeRows(ctx context.Context, op, sql string, args []any, scan func(pgx.Rows) error) error {
	var err error
	for attempt := 1; attempt <= maxAttempts; attempt++ {
		err = s.durably(ctx, func(conn *pgxpool.Conn) error {
			rows, err := conn.Query(ctx, sql, args...)
			if err != nil {
				return err
			}
			defer rows.Close()
			return scan(rows)
		})
		if err == nil {
			return nil
		}
		if !retryable(err) || ctx.Err() != nil {
			break
		}
	}
	s.reconnectAfter(err)
	return wrapWrite(op, err)
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

// InboundRequest is one transfer another shard reserved for an account here, to apply
// as transaction Tx made at Created; ClearingID opens the asset's clearing account for
// the source shard if need be.
type InboundRequest struct {
	Transfer   ledger.PendingTransfer
	Tx         ledger.TransactionID
	Created    time.Time
	ClearingID ledger.AccountID
}

// Validate checks what the request carries into a batch (see Request.Validate).
func (r InboundRequest) Validate() error {
	pt := r.Transfer
	switch {
	case pt.ID == ledger.TransactionID{} || r.Tx == ledger.TransactionID{}:
		return fmt.Errorf("store: an inbound transfer needs its id and a transaction id")
	case pt.Amount <= 0 || pt.Asset == "" || !storableText(pt.Asset):
		return fmt.Errorf("store: inbound transfer %s has no positive amount or no asset", pt.ID)
	case r.Created.Year() < 1 || r.Created.Year() > 9999:
		return fmt.Errorf("store: created_at %s is outside the years 1 to 9999", r.Created)
	case len(pt.Metadata) > 0 && !metadata.IsCanonical(pt.Metadata):
		return fmt.Errorf("store: inbound transfer %s carries metadata not in canonical form", pt.ID)
	}
	return nil
}

// ApplyInbound applies one transfer from another shard: a batch of one (see
// ApplyInboundBatch).
func (s *Store) ApplyInbound(ctx context.Context, pt ledger.PendingTransfer, tx ledger.TransactionID, created time.Time, clearingID ledger.AccountID) (Inbound, error) {
	return one(ctx, s.ApplyInboundBatch, InboundRequest{pt, tx, created, clearingID})
}

// ApplyInboundBatch applies, each once, transfers other shards reserved for accounts
// here (tally.apply_inbound_batch), in one database transaction and one round trip.
// Asked again for a transfer, it answers the same. Transfers must be distinct within a
// batch. Errors mean what they mean for PostBatch.
func (s *Store) ApplyInboundBatch(ctx context.Context, reqs []InboundRequest) ([]Inbound, error) {
	n := len(reqs)
	ids, to, txs, clearing := make([][16]byte, n), make([][16]byte, n), make([][16]byte, n), make([][16]byte, n)
	amounts, assets, created, metas := make([]int64, n), make([]string, n), make([]time.Time, n), make([][]byte, n)
	for i, r := range reqs {
		pt := r.Transfer
		ids[i], to[i], txs[i], clearing[i] = [16]byte(pt.ID), [16]byte(pt.Remote), [16]byte(r.Tx), [16]byte(r.ClearingID)
		amounts[i], assets[i], created[i], metas[i] = pt.Amount, pt.Asset, r.Created, pt.Metadata
		if len(metas[i]) == 0 {
			metas[i] = []byte("{}")
		}
	}
	var ins []Inbound
	err := s.writeRows(ctx, "apply inbound transfers", `SELECT req, state, problem, transaction_id
		FROM tally.apply_inbound_batch($1, $2, $3, $4, $5, $6, $7, $8)`,
		[]any{ids, to, amounts, assets, txs, created, metas, clearing}, func(rows pgx.Rows) error {
			ins = make([]Inbound, n)
			got := 0
			for rows.Next() {
				var idx int
				var state string
				var problem *string
				var txID *[16]byte
				if err := rows.Scan(&idx, &state, &problem, &txID); err != nil {
					return err
				}
				if idx < 1 || idx > n {
					return fmt.Errorf("apply_inbound_batch answered for request %d of %d", idx, n)
				}
				in := Inbound{Applied: state == "applied"}
				if txID != nil {
					in.Transaction = ledger.TransactionID(*txID)
				}
				if problem != nil {
					in.Problem = []byte(*problem)
				}
				ins[idx-1] = in
				got++
			}
			if err := rows.Err(); err != nil {
				return err
			}
			if got != n {
				return fmt.Errorf("apply_inbound_batch answered %d of %d requests", got, n)
			}
			return nil
		})
	return ins, err
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
