package service

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
	"github.com/tallyhq/tally/ledger/shardset"
)

// Posting is one movement as a request names it: account ids (or "external"), an amount
// in the asset's units.
type Posting struct {
	FromAccount string
	ToAccount   string
	Amount      string
	Asset       string
}

// Transfer is a transfer as a request names it.
type Transfer struct {
	Posting
	Metadata json.RawMessage
	// Pending reserves the amount now, to post or void later; TimeoutSeconds, with it,
	// voids it by itself after that long.
	Pending        bool
	TimeoutSeconds int64
}

// MaxTimeoutSeconds bounds a pending transfer's timeout: a year.
const MaxTimeoutSeconds = 366 * 24 * 60 * 60

// Transfer moves money between two accounts under the caller's idempotency key (a user:
// between its own accounts): posted at once, reserved (Pending), or, between accounts
// on two shards, through the cross-shard protocol.
func (s *Service) Transfer(ctx context.Context, c auth.Caller, key string, req Transfer) (Answer, error) {
	if req.Pending {
		return s.reserve(ctx, c, key, req)
	}
	if req.TimeoutSeconds != 0 {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "timeout_seconds applies to pending transfers only; add \"pending\": true")
	}
	return s.post(ctx, c, key, "transfer", []Posting{req.Posting}, req.Metadata)
}

// PostTransaction posts 1 to ledger.MaxPostings postings at once, all or none, under the
// caller's idempotency key (a user: between its own accounts).
func (s *Service) PostTransaction(ctx context.Context, c auth.Caller, key string, postings []Posting, meta json.RawMessage) (Answer, error) {
	if len(postings) == 0 || len(postings) > ledger.MaxPostings {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "postings must hold 1 to %d postings", ledger.MaxPostings)
	}
	return s.post(ctx, c, key, "transaction", postings, meta)
}

// canonicalRequest is what an idempotency key is bound to: the request after parsing,
// so spelling (whitespace, "12.3" against "12.30", key order in metadata) does not matter.
type canonicalRequest struct {
	Kind     string
	Postings []shardset.PostingRequest
	Metadata json.RawMessage
}

// checkKey checks an idempotency key, which every write needs.
func checkKey(key string) error {
	if key == "" {
		return ledger.Errorf(ledger.CodeIdempotencyKeyRequired, "send an idempotency key (over HTTP the Idempotency-Key header, over gRPC idempotency_key), for example a UUID, so the request can be retried safely")
	}
	if len(key) > ledger.MaxIdempotencyKey || !printableASCII(key) {
		return ledger.Errorf(ledger.CodeInvalidRequest, "the idempotency key (Idempotency-Key) must be 1 to %d printable ASCII characters", ledger.MaxIdempotencyKey)
	}
	return nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// write is one write on its way: what its answer is kept under, and the cache's lookup
// beside it.
type write struct {
	kind    string // the metric's kind
	caller  string
	key     string
	hash    [32]byte
	started time.Time
	side    *sideLookup
}

// begin starts a write bound to canon (the request after parsing); it answers at once
// when the cache holds the answer already.
func (s *Service) begin(ctx context.Context, c auth.Caller, kind, key string, canon any) (*write, Answer, bool, error) {
	b, err := document.Marshal(canon)
	if err != nil {
		return nil, Answer{}, false, err
	}
	w := &write{kind: kind, caller: c.Name, key: key, hash: sha256.Sum256(b), started: time.Now()}
	w.side = s.lookupBeside(ctx, c.Name, key, w.hash)
	a, done := s.replayedFirst(kind, w.side)
	return w, a, done, nil
}

// step is the write's request to the shard set.
func (w *write) step(meta json.RawMessage) shardset.StepRequest {
	return shardset.StepRequest{Caller: w.caller, Key: w.key, Hash: w.hash, Metadata: meta}
}

// finish answers a write with PostgreSQL's outcome: a refusal's recorded problem as it
// is; an applied write's body, or render's (from the journal, so a replay answers the
// same). A first answer is kept for replays.
func (s *Service) finish(ctx context.Context, w *write, out ledger.Outcome, err error, render func(context.Context) ([]byte, error)) (Answer, error) {
	if a, ok := s.cachedReplay(w.kind, w.side, err); ok {
		return a, nil
	}
	if err != nil {
		s.metrics.observeTransaction(w.kind, "error", ledger.CodeOf(err))
		return Answer{}, err
	}
	a := Answer{Status: out.Status, Body: out.Body, Replayed: out.Replayed}
	outcome, code := "applied", ledger.Code("")
	switch {
	case out.Replayed:
		outcome = "replayed"
	case a.Refused():
		outcome, code = "rejected", problemCodeOf(out.Body)
	}
	s.metrics.observeTransaction(w.kind, outcome, code)
	if !a.Refused() && render != nil {
		if a.Body, err = render(ctx); err != nil {
			return Answer{}, err
		}
	}
	if !a.Replayed {
		s.remember(w.caller, w.key, w.hash, w.started, a)
	}
	return a, nil
}

func (s *Service) post(ctx context.Context, c auth.Caller, key, kind string, postings []Posting, rawMeta json.RawMessage) (Answer, error) {
	if err := checkKey(key); err != nil {
		return Answer{}, err
	}
	meta, err := metadata.Canonical(rawMeta)
	if err != nil {
		return Answer{}, err
	}
	req := shardset.TransactionRequest{Caller: c.Name, Key: key, Metadata: meta}
	for i, p := range postings {
		pr, err := s.parsePosting(ctx, i, p)
		if err != nil {
			return Answer{}, err
		}
		req.Postings = append(req.Postings, pr)
	}
	if err := s.mayMove(ctx, c, req.Postings); err != nil {
		return Answer{}, err
	}
	w, a, done, err := s.begin(ctx, c, kind, key, canonicalRequest{Kind: kind, Postings: req.Postings, Metadata: meta})
	if err != nil || done {
		return a, err
	}
	req.Hash = w.hash
	if p := req.Postings[0]; kind == "transfer" && !p.From.External && !p.To.External && p.From.ID.Shard() != p.To.ID.Shard() {
		return s.transferAcross(ctx, w, w.step(meta), p)
	}
	out, err := s.set.Post(w.side.ctx, req, s.renderTransaction)
	return s.finish(ctx, w, out, err, nil)
}

func (s *Service) parsePosting(ctx context.Context, i int, p Posting) (shardset.PostingRequest, error) {
	var out shardset.PostingRequest
	asset, err := s.asset(ctx, p.Asset)
	if err != nil {
		return out, prefixPosting(i, err)
	}
	out.Asset = asset.Code
	if out.From, err = parseAccountRef("from_account", p.FromAccount); err != nil {
		return out, prefixPosting(i, err)
	}
	if out.To, err = parseAccountRef("to_account", p.ToAccount); err != nil {
		return out, prefixPosting(i, err)
	}
	if out.From == out.To {
		return out, prefixPosting(i, ledger.Errorf(ledger.CodeSameAccount, "from_account and to_account are the same account"))
	}
	if out.Amount, err = money.Parse(p.Amount, asset.Scale); err != nil {
		return out, prefixPosting(i, ledger.Errorf(ledger.CodeInvalidAmount, "amount: %v", err))
	}
	if out.Amount <= 0 {
		return out, prefixPosting(i, ledger.Errorf(ledger.CodeInvalidAmount, "amount must be positive, got %q", p.Amount))
	}
	return out, nil
}

func prefixPosting(i int, err error) error {
	var le *ledger.Error
	if errors.As(err, &le) {
		return &ledger.Error{Code: le.Code, Detail: "posting " + strconv.Itoa(i) + ": " + le.Detail}
	}
	return err
}

func parseAccountRef(field, s string) (shardset.Account, error) {
	if s == ExternalAccount {
		return shardset.Account{External: true}, nil
	}
	if s == "" {
		return shardset.Account{}, ledger.Errorf(ledger.CodeInvalidRequest, "%s is required: an account id, or %q", field, ExternalAccount)
	}
	id, err := ledger.ParseAccountID(s)
	if err != nil {
		return shardset.Account{}, ledger.Errorf(ledger.CodeInvalidID, "%s: %v", field, err)
	}
	return shardset.Account{ID: id}, nil
}

// renderTransaction is the one rendering of a transaction, used for the answer to its
// write (rendered before the write), for its replays and for GetTransaction, from the
// journal: the same bytes each time.
func (s *Service) renderTransaction(ctx context.Context, tx ledger.Transaction) ([]byte, error) {
	v, err := document.TransactionOf(tx, func(code string) (int, error) {
		asset, err := s.set.Asset(ctx, code)
		return asset.Scale, err
	})
	if err != nil {
		return nil, err
	}
	return document.Marshal(v)
}

// GetTransaction answers a transaction (a user: one touching its accounts).
func (s *Service) GetTransaction(ctx context.Context, c auth.Caller, id string) (Answer, error) {
	tid, err := transactionID(id)
	if err != nil {
		return Answer{}, err
	}
	tx, err := s.set.Transaction(ctx, tid)
	if err != nil {
		return Answer{}, err
	}
	if err := s.maySeeTransaction(ctx, c, tx); err != nil {
		return Answer{}, err
	}
	body, err := s.renderTransaction(ctx, tx)
	if err != nil {
		return Answer{}, err
	}
	return Answer{Status: http.StatusOK, Body: body}, nil
}

// crossShardWait bounds how long a request waits for its transfer between shards to end
// before it is answered 202: the transfer then ends in the background.
const crossShardWait = 5 * time.Second

// transferAcross answers a transfer whose accounts live on two shards: 201 with the
// transfer once settled; the destination's refusal once returned (the money is back); or
// 202 with a Location to poll while it is still in flight. A replay answers the same once
// the transfer has ended, and drives it on if it has not.
func (s *Service) transferAcross(ctx context.Context, w *write, step shardset.StepRequest, p shardset.PostingRequest) (Answer, error) {
	out, res, err := s.set.TransferAcross(w.side.ctx, step, p, crossShardWait)
	if a, ok := s.cachedReplay(w.kind, w.side, err); ok {
		return a, nil
	}
	if err != nil {
		s.metrics.observeTransaction(w.kind, "error", ledger.CodeOf(err))
		return Answer{}, err
	}
	outcome := "applied"
	if out.Replayed {
		outcome = "replayed"
	}
	var a Answer
	switch {
	case out.Status >= 300:
		a = Answer{Status: out.Status, Body: out.Body, Replayed: out.Replayed}
		s.metrics.observeTransaction(w.kind, "rejected", problemCodeOf(out.Body))
	case res.Transfer.State == ledger.StateVoided:
		var prob ledger.Problem
		if err := json.Unmarshal(res.Refusal, &prob); err != nil || prob.Status < 400 {
			return Answer{}, fmt.Errorf("service: transfer %s was refused by its destination with %q", res.Transfer.ID, res.Refusal)
		}
		a = Answer{Status: prob.Status, Body: res.Refusal, Replayed: out.Replayed}
		s.metrics.observeTransaction(w.kind, "rejected", prob.Code)
	default:
		body, err := s.renderPendingTransfer(ctx, res.Transfer)
		if err != nil {
			return Answer{}, err
		}
		a = Answer{Status: http.StatusCreated, Body: body, Replayed: out.Replayed}
		if res.Transfer.State == ledger.StatePending {
			a.Status, a.Location, outcome = http.StatusAccepted, "/v1/transfers/"+res.Transfer.ID.String(), "in_flight"
		}
		s.metrics.observeTransaction(w.kind, outcome, "")
	}
	if !out.Replayed && a.Status != http.StatusAccepted { // a 202's answer is yet to come
		s.remember(w.caller, w.key, w.hash, w.started, a)
	}
	return a, nil
}
