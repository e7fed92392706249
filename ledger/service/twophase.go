package service

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
	"github.com/tallyhq/tally/ledger/shardset"
)

// reserve makes a pending transfer (Transfer with Pending).
func (s *Service) reserve(ctx context.Context, c auth.Caller, key string, req Transfer) (Answer, error) {
	if err := checkKey(key); err != nil {
		return Answer{}, err
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxTimeoutSeconds {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "timeout_seconds must be 1 to %d, or left out for none", MaxTimeoutSeconds)
	}
	meta, err := metadata.Canonical(req.Metadata)
	if err != nil {
		return Answer{}, err
	}
	p, err := s.parsePosting(ctx, 0, req.Posting)
	if err != nil {
		return Answer{}, err
	}
	if err := s.mayMove(ctx, c, []shardset.PostingRequest{p}); err != nil {
		return Answer{}, err
	}
	w, a, done, err := s.begin(ctx, c, "pending_transfer", key, struct {
		Kind     string
		Posting  shardset.PostingRequest
		Timeout  int64
		Metadata json.RawMessage
	}{"pending-transfer", p, req.TimeoutSeconds, meta})
	if err != nil || done {
		return a, err
	}
	out, err := s.set.Reserve(w.side.ctx, w.step(meta), p, time.Duration(req.TimeoutSeconds)*time.Second)
	// The answer, first or replayed, is the transfer as it was made: its state now is
	// what GetPendingTransfer is for.
	return s.finish(ctx, w, out, err, func(ctx context.Context) ([]byte, error) {
		pt, err := s.set.PendingTransfer(ctx, out.Transaction)
		if err != nil {
			return nil, err
		}
		pt.State, pt.PostedAmount, pt.ResolvedBy, pt.ResolvedAt = ledger.StatePending, 0, ledger.TransactionID{}, time.Time{}
		return s.renderPendingTransfer(ctx, pt)
	})
}

// ResolvePending posts (all of it, or amount, if not "") or voids a pending transfer
// under the caller's idempotency key (a user: one between its own accounts).
func (s *Service) ResolvePending(ctx context.Context, c auth.Caller, key, id string, how ledger.Resolution, amount string, rawMeta json.RawMessage) (Answer, error) {
	tid, meta, err := stepOn(id, key, rawMeta)
	if err != nil {
		return Answer{}, err
	}
	pt, err := s.set.PendingTransfer(ctx, tid)
	if err != nil {
		return Answer{}, err
	}
	if err := s.maySeePending(ctx, c, pt, true); err != nil {
		return Answer{}, err
	}
	var minor int64
	if amount != "" {
		if how != ledger.ResolvePost {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "a void returns the whole amount; amount applies to post only")
		}
		asset, err := s.asset(ctx, pt.Asset)
		if err != nil {
			return Answer{}, err
		}
		if minor, err = money.Parse(amount, asset.Scale); err != nil {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidAmount, "amount: %v", err)
		}
		if minor <= 0 {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidAmount, "amount must be positive, got %q", amount)
		}
	}
	w, a, done, err := s.begin(ctx, c, string(how), key, struct {
		Kind     ledger.Resolution
		Pending  ledger.TransactionID
		Amount   int64
		Metadata json.RawMessage
	}{how, tid, minor, meta})
	if err != nil || done {
		return a, err
	}
	out, err := s.set.Resolve(w.side.ctx, w.step(meta), tid, how, minor)
	// Once resolved a transfer never changes again, so its state now is the answer to
	// this request and to every replay of it.
	return s.finish(ctx, w, out, err, func(ctx context.Context) ([]byte, error) {
		pt, err := s.set.PendingTransfer(ctx, tid)
		if err != nil {
			return nil, err
		}
		return s.renderPendingTransfer(ctx, pt)
	})
}

// ReverseTransaction posts the reversal of a transaction under the caller's
// idempotency key, and answers it.
func (s *Service) ReverseTransaction(ctx context.Context, c auth.Caller, key, id string, rawMeta json.RawMessage) (Answer, error) {
	tid, meta, err := stepOn(id, key, rawMeta)
	if err != nil {
		return Answer{}, err
	}
	w, a, done, err := s.begin(ctx, c, "reversal", key, struct {
		Kind     string
		Original ledger.TransactionID
		Metadata json.RawMessage
	}{"reverse", tid, meta})
	if err != nil || done {
		return a, err
	}
	out, err := s.set.Reverse(w.side.ctx, w.step(meta), tid)
	return s.finish(ctx, w, out, err, func(ctx context.Context) ([]byte, error) {
		tx, err := s.set.Transaction(ctx, out.Transaction)
		if err != nil {
			return nil, err
		}
		return s.renderTransaction(ctx, tx)
	})
}

// stepOn checks a write on an existing transaction or transfer: its id, the idempotency
// key, the metadata (made canonical).
func stepOn(id, key string, rawMeta json.RawMessage) (ledger.TransactionID, json.RawMessage, error) {
	tid, err := transactionID(id)
	if err != nil {
		return tid, nil, err
	}
	if err := checkKey(key); err != nil {
		return tid, nil, err
	}
	meta, err := metadata.Canonical(rawMeta)
	return tid, meta, err
}

// GetPendingTransfer answers a pending transfer as it stands (a user: one touching its
// accounts).
func (s *Service) GetPendingTransfer(ctx context.Context, c auth.Caller, id string) (Answer, error) {
	tid, err := transactionID(id)
	if err != nil {
		return Answer{}, err
	}
	pt, err := s.set.PendingTransfer(ctx, tid)
	if err != nil {
		return Answer{}, err
	}
	if err := s.maySeePending(ctx, c, pt, false); err != nil {
		return Answer{}, err
	}
	body, err := s.renderPendingTransfer(ctx, pt)
	if err != nil {
		return Answer{}, err
	}
	return Answer{Status: http.StatusOK, Body: body}, nil
}

func (s *Service) renderPendingTransfer(ctx context.Context, pt ledger.PendingTransfer) ([]byte, error) {
	asset, err := s.set.Asset(ctx, pt.Asset)
	if err != nil {
		return nil, err
	}
	v, err := document.PendingTransferOf(pt, asset.Scale)
	if err != nil {
		return nil, err
	}
	return document.Marshal(v)
}
