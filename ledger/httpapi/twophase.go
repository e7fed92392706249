package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
	"github.com/tallyhq/tally/ledger/shardset"
)

// MaxTimeoutSeconds bounds a pending transfer's timeout: a year.
const MaxTimeoutSeconds = 366 * 24 * 60 * 60

// reserve answers POST /v1/transfers with "pending": true.
func (a *API) reserve(w http.ResponseWriter, r *http.Request, req transferRequest) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	if req.TimeoutSeconds < 0 || req.TimeoutSeconds > MaxTimeoutSeconds {
		return ledger.Errorf(ledger.CodeInvalidRequest, "timeout_seconds must be 1 to %d, or left out for none", MaxTimeoutSeconds)
	}
	meta, err := metadata.Canonical(req.Metadata)
	if err != nil {
		return err
	}
	p, err := a.parsePosting(r.Context(), 0, req.postingRequest)
	if err != nil {
		return err
	}
	if err := a.mayMove(r.Context(), []shardset.PostingRequest{p}); err != nil {
		return err
	}
	canon, err := document.Marshal(struct {
		Kind     string
		Posting  shardset.PostingRequest
		Timeout  int64
		Metadata json.RawMessage
	}{"pending-transfer", p, req.TimeoutSeconds, meta})
	if err != nil {
		return err
	}
	step := shardset.StepRequest{Caller: callerOf(r.Context()).Name, Key: key, Hash: sha256.Sum256(canon), Metadata: meta}
	started := time.Now()
	side := a.lookupBeside(r, key, step.Hash)
	if a.replayedFirst(w, "pending_transfer", side) {
		return nil
	}
	out, err := a.set.Reserve(side.ctx, step, p, time.Duration(req.TimeoutSeconds)*time.Second)
	if a.cachedReplay(w, "pending_transfer", side, err) {
		return nil
	}
	// The answer, first or replayed, is the transfer as it was made: its state now is
	// what GET /v1/transfers/{id} is for.
	return a.writeStep(w, r, "pending_transfer", step, started, out, err, func(ctx context.Context) ([]byte, error) {
		pt, err := a.set.PendingTransfer(ctx, out.Transaction)
		if err != nil {
			return nil, err
		}
		pt.State, pt.PostedAmount, pt.ResolvedBy, pt.ResolvedAt = ledger.StatePending, 0, ledger.TransactionID{}, time.Time{}
		return a.renderPendingTransfer(ctx, pt)
	})
}

// resolvePendingTransfer answers POST /v1/transfers/{id}/post and /void.
func (a *API) resolvePendingTransfer(how ledger.Resolution) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := ledger.ParseTransactionID(r.PathValue("id"))
		if err != nil {
			return ledger.Errorf(ledger.CodeInvalidID, "%v", err)
		}
		key, err := idempotencyKey(r)
		if err != nil {
			return err
		}
		var req struct {
			Amount   string          `json:"amount"`
			Metadata json.RawMessage `json:"metadata"`
		}
		if err := decodeOptionalJSON(r, &req); err != nil {
			return err
		}
		meta, err := metadata.Canonical(req.Metadata)
		if err != nil {
			return err
		}
		pt, err := a.set.PendingTransfer(r.Context(), id)
		if err != nil {
			return err
		}
		if err := a.maySeePending(r.Context(), pt, true); err != nil {
			return err
		}
		var amount int64
		if req.Amount != "" {
			if how != ledger.ResolvePost {
				return ledger.Errorf(ledger.CodeInvalidRequest, "a void returns the whole amount; amount applies to post only")
			}
			asset, err := a.asset(r.Context(), pt.Asset)
			if err != nil {
				return err
			}
			if amount, err = money.Parse(req.Amount, asset.Scale); err != nil {
				return ledger.Errorf(ledger.CodeInvalidAmount, "amount: %v", err)
			}
			if amount <= 0 {
				return ledger.Errorf(ledger.CodeInvalidAmount, "amount must be positive, got %q", req.Amount)
			}
		}
		canon, err := document.Marshal(struct {
			Kind     ledger.Resolution
			Pending  ledger.TransactionID
			Amount   int64
			Metadata json.RawMessage
		}{how, id, amount, meta})
		if err != nil {
			return err
		}
		step := shardset.StepRequest{Caller: callerOf(r.Context()).Name, Key: key, Hash: sha256.Sum256(canon), Metadata: meta}
		started := time.Now()
		side := a.lookupBeside(r, key, step.Hash)
		if a.replayedFirst(w, string(how), side) {
			return nil
		}
		out, err := a.set.Resolve(side.ctx, step, id, how, amount)
		if a.cachedReplay(w, string(how), side, err) {
			return nil
		}
		// Once resolved a transfer never changes again, so its state now is the answer
		// to this request and to every replay of it.
		return a.writeStep(w, r, string(how), step, started, out, err, func(ctx context.Context) ([]byte, error) {
			pt, err := a.set.PendingTransfer(ctx, id)
			if err != nil {
				return nil, err
			}
			return a.renderPendingTransfer(ctx, pt)
		})
	}
}

// reverseTransaction answers POST /v1/transactions/{id}/reverse with the reversal.
func (a *API) reverseTransaction(w http.ResponseWriter, r *http.Request) error {
	id, err := ledger.ParseTransactionID(r.PathValue("id"))
	if err != nil {
		return ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	var req struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := decodeOptionalJSON(r, &req); err != nil {
		return err
	}
	meta, err := metadata.Canonical(req.Metadata)
	if err != nil {
		return err
	}
	canon, err := document.Marshal(struct {
		Kind     string
		Original ledger.TransactionID
		Metadata json.RawMessage
	}{"reverse", id, meta})
	if err != nil {
		return err
	}
	step := shardset.StepRequest{Caller: callerOf(r.Context()).Name, Key: key, Hash: sha256.Sum256(canon), Metadata: meta}
	started := time.Now()
	side := a.lookupBeside(r, key, step.Hash)
	if a.replayedFirst(w, "reversal", side) {
		return nil
	}
	out, err := a.set.Reverse(side.ctx, step, id)
	if a.cachedReplay(w, "reversal", side, err) {
		return nil
	}
	return a.writeStep(w, r, "reversal", step, started, out, err, func(ctx context.Context) ([]byte, error) {
		tx, err := a.set.Transaction(ctx, out.Transaction)
		if err != nil {
			return nil, err
		}
		return a.renderTransaction(ctx, tx)
	})
}

// getPendingTransfer answers GET /v1/transfers/{id}: a pending transfer as it stands.
func (a *API) getPendingTransfer(w http.ResponseWriter, r *http.Request) error {
	id, err := ledger.ParseTransactionID(r.PathValue("id"))
	if err != nil {
		return ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	pt, err := a.set.PendingTransfer(r.Context(), id)
	if err != nil {
		return err
	}
	if err := a.maySeePending(r.Context(), pt, false); err != nil {
		return err
	}
	body, err := a.renderPendingTransfer(r.Context(), pt)
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, "application/json", body)
	return nil
}

// writeStep answers a two-phase step or a reversal: a refusal's recorded problem as it
// is, a 201 rendered from the journal (so a replay answers the same). A first answer is
// kept for replays.
func (a *API) writeStep(w http.ResponseWriter, r *http.Request, kind string, step shardset.StepRequest, started time.Time,
	out ledger.Outcome, err error, render func(context.Context) ([]byte, error)) error {
	if err != nil {
		a.metrics.observeTransaction(kind, "error", ledger.CodeOf(err))
		return err
	}
	outcome, code := "applied", ledger.Code("")
	switch {
	case out.Replayed:
		outcome = "replayed"
		w.Header().Set("Idempotent-Replayed", "true")
	case out.Status >= 300:
		outcome = "rejected"
		code = problemCodeOf(out.Body)
	}
	a.metrics.observeTransaction(kind, outcome, code)
	body := out.Body
	if out.Status < 300 {
		if body, err = render(r.Context()); err != nil {
			return err
		}
	}
	writeRaw(w, out.Status, contentTypeOf(out.Status), body)
	if !out.Replayed {
		a.remember(r, step.Key, step.Hash, started, out.Status, body)
	}
	return nil
}

func (a *API) renderPendingTransfer(ctx context.Context, pt ledger.PendingTransfer) ([]byte, error) {
	asset, err := a.set.Asset(ctx, pt.Asset)
	if err != nil {
		return nil, err
	}
	meta, err := metadata.Canonical(pt.Metadata)
	if err != nil {
		return nil, err
	}
	v := pendingTransferView{ID: pt.ID, FromAccount: pt.From, ToAccount: pt.To, Amount: money.Format(pt.Amount, asset.Scale),
		Asset: pt.Asset, State: pt.State, Metadata: meta, CreatedAt: pt.CreatedAt.UTC()}
	if pt.Remote != (ledger.AccountID{}) {
		v.ToAccount = pt.Remote // not this shard's clearing account, which stands in for it
	}
	if pt.State == ledger.StatePosted {
		v.PostedAmount = money.Format(pt.PostedAmount, asset.Scale)
	}
	if !pt.ExpiresAt.IsZero() {
		t := pt.ExpiresAt.UTC()
		v.ExpiresAt = &t
	}
	if pt.ResolvedBy != (ledger.TransactionID{}) {
		t := pt.ResolvedAt.UTC()
		v.ResolvedBy, v.ResolvedAt = &pt.ResolvedBy, &t
	}
	return document.Marshal(v)
}

// decodeOptionalJSON is decodeJSON for requests whose every field is optional: an empty
// body is an empty object.
func decodeOptionalJSON(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return ledger.Errorf(ledger.CodeInvalidRequest, "reading the body: %v", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	return decodeJSON(r, v)
}

// crossShardWait bounds how long a request waits for its transfer between shards to end
// before it is answered 202: the transfer then ends in the background.
const crossShardWait = 5 * time.Second

// transferAcross answers a transfer whose accounts live on two shards: 201 with the
// transfer once settled; the destination's refusal once returned (the money is back); or
// 202 with a Location to poll while it is still in flight. A replay answers the same once
// the transfer has ended, and drives it on if it has not.
func (a *API) transferAcross(w http.ResponseWriter, r *http.Request, step shardset.StepRequest, p shardset.PostingRequest, started time.Time, side *sideLookup) error {
	out, res, err := a.set.TransferAcross(side.ctx, step, p, crossShardWait)
	if a.cachedReplay(w, "transfer", side, err) {
		return nil
	}
	if err != nil {
		a.metrics.observeTransaction("transfer", "error", ledger.CodeOf(err))
		return err
	}
	outcome, code := "applied", ledger.Code("")
	if out.Replayed {
		outcome = "replayed"
		w.Header().Set("Idempotent-Replayed", "true")
	}
	switch {
	case out.Status >= 300:
		code = problemCodeOf(out.Body)
		a.metrics.observeTransaction("transfer", "rejected", code)
		writeRaw(w, out.Status, "application/problem+json", out.Body)
		if !out.Replayed {
			a.remember(r, step.Key, step.Hash, started, out.Status, out.Body)
		}
		return nil
	case res.Transfer.State == ledger.StateVoided:
		var prob ledger.Problem
		if err := json.Unmarshal(res.Refusal, &prob); err != nil || prob.Status < 400 {
			return fmt.Errorf("httpapi: transfer %s was refused by its destination with %q", res.Transfer.ID, res.Refusal)
		}
		a.metrics.observeTransaction("transfer", "rejected", prob.Code)
		writeRaw(w, prob.Status, "application/problem+json", res.Refusal)
		if !out.Replayed {
			a.remember(r, step.Key, step.Hash, started, prob.Status, res.Refusal)
		}
		return nil
	}
	body, err := a.renderPendingTransfer(r.Context(), res.Transfer)
	if err != nil {
		return err
	}
	status := http.StatusCreated
	if res.Transfer.State == ledger.StatePending {
		status = http.StatusAccepted
		outcome = "in_flight"
		w.Header().Set("Location", "/v1/transfers/"+res.Transfer.ID.String())
	}
	a.metrics.observeTransaction("transfer", outcome, code)
	writeRaw(w, status, "application/json", body)
	if status == http.StatusCreated && !out.Replayed {
		a.remember(r, step.Key, step.Hash, started, status, body) // settled: a 202's answer is yet to come
	}
	return nil
}
