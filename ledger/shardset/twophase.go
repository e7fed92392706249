package shardset

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/crossshard"
	"github.com/tallyhq/tally/ledger/store"
)

// StepRequest is an idempotent request for a two-phase step or a reversal.
type StepRequest struct {
	Caller   string
	Key      string
	Hash     [32]byte
	Metadata json.RawMessage
}

// step is the request as the shard records it: a new transaction on the shard, at the
// service's clock (see Post).
func (s *Set) step(req StepRequest, shard int) (store.Step, error) {
	id, err := ledger.NewTransactionID(shard)
	if err != nil {
		return store.Step{}, err
	}
	return store.Step{Caller: req.Caller, Key: req.Key, Hash: req.Hash, ID: id,
		CreatedAt: s.now().UTC().Truncate(time.Microsecond), Metadata: req.Metadata}, nil
}

// Reserve makes a pending transfer of the posting, expiring after timeout (0: never). Its
// accounts must share a shard; a 201's Outcome.Transaction is the pending transfer's id.
func (s *Set) Reserve(ctx context.Context, req StepRequest, p PostingRequest, timeout time.Duration) (ledger.Outcome, error) {
	shard := -1
	for _, a := range []Account{p.From, p.To} {
		if a.External {
			continue
		}
		if shard >= 0 && a.ID.Shard() != shard {
			return ledger.Outcome{}, ledger.Errorf(ledger.CodeCrossShardNotSupported,
				"accounts on shards %d and %d cannot be in one pending transfer yet", shard, a.ID.Shard())
		}
		shard = a.ID.Shard()
	}
	if shard < 0 {
		return ledger.Outcome{}, ledger.Errorf(ledger.CodeInvalidRequest, "a transfer needs at least one account that is not external")
	}
	if _, err := s.shard(shard); err != nil {
		return ledger.Outcome{}, err
	}
	from, err := s.resolve(ctx, p.From, p.Asset, shard)
	if err != nil {
		return ledger.Outcome{}, err
	}
	to, err := s.resolve(ctx, p.To, p.Asset, shard)
	if err != nil {
		return ledger.Outcome{}, err
	}
	step, err := s.step(req, shard)
	if err != nil {
		return ledger.Outcome{}, err
	}
	var expires time.Time
	if timeout > 0 {
		expires = step.CreatedAt.Add(timeout)
	}
	r := store.Reservation{From: from, To: to, Amount: p.Amount, Asset: p.Asset, Expires: expires}
	if r.HoldingID, r.ClearingID, err = newSystemIDs(shard); err != nil {
		return ledger.Outcome{}, err
	}
	if refusal, err := s.claim(ctx, req.Caller, req.Key, req.Hash, shard); err != nil || refusal.Status != 0 {
		return refusal, err
	}
	return s.fronts[shard].Reserve(ctx, step, r)
}

// newSystemIDs are ids for the holding and clearing accounts a reservation may open.
func newSystemIDs(shard int) (holding, clearing ledger.AccountID, err error) {
	if holding, err = ledger.NewAccountID(shard); err != nil {
		return
	}
	clearing, err = ledger.NewAccountID(shard)
	return
}

// TransferAcross moves money between accounts on two shards (see ledger/crossshard): it
// reserves the amount on the source shard under the request's key, then drives the
// transfer to its end for at most wait. The Outcome is the reservation's: a refusal there
// (insufficient funds, say) is the answer. If it was made, or made before (a replay), the
// Result says where the transfer stands: settled, returned with the destination's refusal,
// or still pending at the bound, to be completed by any replica's resumer.
func (s *Set) TransferAcross(ctx context.Context, req StepRequest, p PostingRequest, wait time.Duration) (ledger.Outcome, crossshard.Result, error) {
	var res crossshard.Result
	if p.From.External || p.To.External || p.From.ID.Shard() == p.To.ID.Shard() {
		return ledger.Outcome{}, res, fmt.Errorf("shardset: transfer from %v to %v does not cross shards", p.From, p.To)
	}
	source := p.From.ID.Shard()
	st, err := s.shard(source)
	if err != nil {
		return ledger.Outcome{}, res, err
	}
	if _, err := s.shard(p.To.ID.Shard()); err != nil {
		return ledger.Outcome{}, res, err
	}
	step, err := s.step(req, source)
	if err != nil {
		return ledger.Outcome{}, res, err
	}
	r := store.Reservation{From: p.From.ID, Remote: p.To.ID, Amount: p.Amount, Asset: p.Asset}
	if r.HoldingID, r.ClearingID, err = newSystemIDs(source); err != nil {
		return ledger.Outcome{}, res, err
	}
	if refusal, err := s.claim(ctx, req.Caller, req.Key, req.Hash, source); err != nil || refusal.Status != 0 {
		return refusal, res, err
	}
	out, err := s.fronts[source].Reserve(ctx, step, r)
	if err != nil || out.Status != http.StatusCreated {
		return out, res, err
	}
	driveCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if res, err = s.driver.Complete(driveCtx, out.Transaction); err == nil {
		return out, res, nil
	}
	// Reserved, and durably on its way: the resumer of any replica takes it on from here.
	if ctx.Err() != nil {
		return out, res, ctx.Err()
	}
	res.Transfer, err = st.PendingTransfer(ctx, out.Transaction)
	return out, res, err
}

// Driver is the driver of transfers between shards, for the service's resumer and for
// cluster verification.
func (s *Set) Driver() *crossshard.Driver { return s.driver }

// Resolve posts (amount, or all when 0), voids or expires a pending transfer on its shard.
func (s *Set) Resolve(ctx context.Context, req StepRequest, pending ledger.TransactionID, how ledger.Resolution, amount int64) (ledger.Outcome, error) {
	if _, err := s.transactionShard(pending); err != nil {
		return ledger.Outcome{}, err
	}
	step, err := s.step(req, pending.Shard())
	if err != nil {
		return ledger.Outcome{}, err
	}
	if refusal, err := s.claim(ctx, req.Caller, req.Key, req.Hash, pending.Shard()); err != nil || refusal.Status != 0 {
		return refusal, err
	}
	return s.fronts[pending.Shard()].Resolve(ctx, step, pending, how, amount)
}

// Reverse reverses a transaction on its shard with a new, linked transaction.
func (s *Set) Reverse(ctx context.Context, req StepRequest, original ledger.TransactionID) (ledger.Outcome, error) {
	st, err := s.transactionShard(original)
	if err != nil {
		return ledger.Outcome{}, err
	}
	step, err := s.step(req, original.Shard())
	if err != nil {
		return ledger.Outcome{}, err
	}
	if refusal, err := s.claim(ctx, req.Caller, req.Key, req.Hash, original.Shard()); err != nil || refusal.Status != 0 {
		return refusal, err
	}
	return st.Reverse(ctx, step, original)
}

// PendingTransfer reads a pending transfer from its shard.
func (s *Set) PendingTransfer(ctx context.Context, id ledger.TransactionID) (ledger.PendingTransfer, error) {
	st, err := s.transactionShard(id)
	if err != nil {
		return ledger.PendingTransfer{}, ledger.Errorf(ledger.CodeTransferNotFound, "no pending transfer %s", id)
	}
	return st.PendingTransfer(ctx, id)
}

func (s *Set) transactionShard(id ledger.TransactionID) (*store.Store, error) {
	if id.Shard() >= len(s.shards) {
		return nil, ledger.Errorf(ledger.CodeTransactionNotFound, "transaction %s does not exist", id)
	}
	return s.shards[id.Shard()], nil
}

// ExpiryCaller is the caller the service's sweep expires pending transfers as.
const ExpiryCaller = "tally:expiry"

// expiryRetry is how long an expiry the ledger refused (its source frozen, say) waits
// before the sweep tries it again under a new key.
const expiryRetry = time.Minute

// ExpireDue expires up to limit pending transfers per shard whose time is up, and returns
// how many it expired. Any replica may run it at any time: each expiry's key is the
// transfer and the minute, so replicas sweeping together replay one another's outcome,
// and a transfer found resolved meanwhile is left as it is.
func (s *Set) ExpireDue(ctx context.Context, limit int) (int, error) {
	now := s.now().UTC()
	expired := 0
	var errs []error
	for i, st := range s.shards {
		n, err := s.expireDue(ctx, i, st, now, limit)
		expired += n
		if err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", i, err)) // the other shards still sweep
		}
	}
	return expired, errors.Join(errs...)
}

func (s *Set) expireDue(ctx context.Context, shard int, st *store.Store, now time.Time, limit int) (int, error) {
	ids, err := st.ExpiredTransfers(ctx, now, limit)
	if err != nil {
		return 0, err
	}
	expired := 0
	for _, id := range ids {
		key := "expire:" + id.String() + ":" + strconv.FormatInt(now.Truncate(expiryRetry).Unix(), 10)
		step, err := s.step(StepRequest{Caller: ExpiryCaller, Key: key, Hash: expiryHash(id)}, shard)
		if err != nil {
			return expired, err
		}
		out, err := s.fronts[shard].Resolve(ctx, step, id, ledger.ResolveExpire, 0)
		if err != nil {
			return expired, err
		}
		if out.Status == http.StatusCreated && !out.Replayed {
			expired++
		}
	}
	return expired, nil
}

// expiryHash binds an expiry key to its transfer.
func expiryHash(id ledger.TransactionID) (h [32]byte) {
	copy(h[:], "expire")
	copy(h[16:], id[:])
	return h
}
