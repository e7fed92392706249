// Package httpapi is the ledger's HTTP/JSON API. Amounts cross it as decimal strings and
// are integers of minor units everywhere behind it; every error is an RFC 9457 problem
// document with a stable code.
package httpapi

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/idemcache"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/shardset"
)

// Page sizes for every list endpoint.
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

// retryAfterSeconds is the Retry-After of a 503: about the time a shard takes to fail
// over, so a client that honours it tries again once a new primary may serve.
const retryAfterSeconds = "2"

// externalAccount is how a request names the asset's external account, through which
// money enters (deposits) and leaves (withdrawals) the ledger.
const externalAccount = "external"

// API serves the ledger over HTTP.
type API struct {
	set           *shardset.Set
	auth          *auth.Authenticator
	metrics       *Metrics
	log           *slog.Logger
	maxConcurrent int
	limiter       *ratelimit.Limiter // nil: no rate limits
	cache         *idemcache.Cache   // nil: every replay is answered by PostgreSQL
}

// New returns the API over the shard set. authn may be nil for an open API whose every
// caller is auth.AnonymousCaller, an admin (local development only).
func New(set *shardset.Set, authn *auth.Authenticator, metrics *Metrics, log *slog.Logger) *API {
	return &API{set: set, auth: authn, metrics: metrics, log: log, maxConcurrent: DefaultMaxConcurrentRequests}
}

// WithRateLimiter limits each caller's requests: writes (every POST) and reads (GETs)
// each have their own allowance.
func (a *API) WithRateLimiter(l *ratelimit.Limiter) *API {
	a.limiter = l
	return a
}

// WithMaxConcurrentRequests sets the bound on requests served at once (at least 1).
func (a *API) WithMaxConcurrentRequests(n int) *API {
	a.maxConcurrent = max(n, 1)
	return a
}

// Handler returns the routes.
func (a *API) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, rt := range a.routes() {
		mux.Handle(rt.pattern, a.instrument(rt.pattern, rt.access, rt.handle))
	}
	return a.limit(problemsForMux(mux))
}

type route struct {
	pattern string
	access  access
	handle  func(http.ResponseWriter, *http.Request) error
}

// routes is the route table, each with the least role it needs (authorize.go): a user
// reads and moves money only with its own accounts; an operator also deposits,
// withdraws, freezes, reverses and uses any account; an admin also registers assets
// and closes accounts.
func (a *API) routes() []route {
	return []route{
		{"POST /v1/assets", admins, a.registerAsset},
		{"GET /v1/assets", users, a.listAssets},
		{"GET /v1/assets/{code}", users, a.getAsset},
		{"POST /v1/accounts", users, a.createAccount}, // a user: for itself, with no overdraft
		{"GET /v1/accounts", users, a.listAccounts},   // a user: its own
		{"GET /v1/accounts/{id}", users, a.getAccount},
		{"POST /v1/accounts/{id}/freeze", operators, a.setStatus(ledger.StatusFrozen)},
		{"POST /v1/accounts/{id}/unfreeze", operators, a.setStatus(ledger.StatusActive)},
		{"POST /v1/accounts/{id}/close", admins, a.setStatus(ledger.StatusClosed)},
		{"GET /v1/accounts/{id}/balance", users, a.getBalance},
		{"GET /v1/accounts/{id}/entries", users, a.listEntries},
		{"POST /v1/transfers", users, a.postTransfer}, // a user: between its own accounts
		{"POST /v1/transactions", users, a.postTransaction},
		{"GET /v1/transactions/{id}", users, a.getTransaction}, // a user: one touching its accounts
		{"POST /v1/transactions/{id}/reverse", operators, a.reverseTransaction},
		{"GET /v1/transfers/{id}", users, a.getPendingTransfer},
		{"POST /v1/transfers/{id}/post", users, a.resolvePendingTransfer(ledger.ResolvePost)}, // a user: between its own accounts
		{"POST /v1/transfers/{id}/void", users, a.resolvePendingTransfer(ledger.ResolveVoid)},
	}
}

// Routes lists every route's pattern and the least role it needs.
func (a *API) Routes() map[string]string {
	out := map[string]string{}
	for _, rt := range a.routes() {
		out[rt.pattern] = rt.access.String()
	}
	return out
}

// instrument authenticates, authorizes the route, times, counts, and turns returned
// errors into problems.
func (a *API) instrument(route string, need access, h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		caller, err := a.auth.Authenticate(r)
		if err == nil && !need.allows(caller) {
			err = ledger.Errorf(ledger.CodeForbidden, "%s %s needs the %s role", r.Method, route[strings.Index(route, " ")+1:], need)
		}
		if err == nil {
			err = a.rateLimit(sw, r, caller)
		}
		if err == nil {
			r = r.WithContext(context.WithValue(r.Context(), callerKey{}, caller))
			err = h(sw, r)
		}
		if err != nil {
			a.writeError(sw, r, err)
		}
		a.metrics.observeRequest(route, sw.status, time.Since(start))
	})
}

func (a *API) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var le *ledger.Error
	if !errors.As(err, &le) {
		if errors.Is(err, context.Canceled) {
			return // the client went away; nobody to answer
		}
		if errors.Is(err, context.DeadlineExceeded) {
			w.Header().Set("Retry-After", retryAfterSeconds)
			writeProblem(w, ledger.Errorf(ledger.CodeUnavailable, "the request took longer than %s; "+
				"a retry with the same Idempotency-Key applies it at most once and answers its outcome", RequestTimeout).Problem())
			return
		}
		a.log.ErrorContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		le = ledger.Errorf(ledger.CodeInternal, "the request failed on the server; a retry with the same Idempotency-Key is safe: "+
			"it applies the request at most once and answers its outcome")
	} else if le.Code == ledger.CodeUnavailable {
		a.log.WarnContext(r.Context(), "database unavailable", "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", retryAfterSeconds)
	}
	writeProblem(w, le.Problem())
}

func writeProblem(w http.ResponseWriter, p ledger.Problem) {
	body, _ := document.Marshal(p)
	writeRaw(w, p.Status, "application/problem+json", body)
}

func writeRaw(w http.ResponseWriter, status int, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := document.Marshal(v)
	if err != nil {
		return err
	}
	writeRaw(w, status, "application/json", body)
	return nil
}

// --- assets ---

type registerAssetRequest struct {
	Code  string `json:"code"`
	Scale *int   `json:"scale"`
}

func (a *API) registerAsset(w http.ResponseWriter, r *http.Request) error {
	var req registerAssetRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if !validAssetCode(req.Code) {
		return ledger.Errorf(ledger.CodeInvalidRequest, "code %q must be 2 to 16 characters of A-Z, 0-9 and _, starting with a letter", truncate(req.Code))
	}
	if req.Scale == nil || *req.Scale < 0 || *req.Scale > money.MaxScale {
		return ledger.Errorf(ledger.CodeInvalidRequest, "scale must be a whole number from 0 to %d", money.MaxScale)
	}
	asset, created, err := a.set.RegisterAsset(r.Context(), req.Code, *req.Scale)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	v, err := viewAsset(asset)
	if err != nil {
		return err
	}
	return writeJSON(w, status, v)
}

func validAssetCode(s string) bool {
	if len(s) < 2 || len(s) > 16 || s[0] < 'A' || s[0] > 'Z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		c := s[i]
		if !(c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func (a *API) listAssets(w http.ResponseWriter, r *http.Request) error {
	assets, err := a.set.Assets(r.Context())
	if err != nil {
		return err
	}
	views := make([]assetView, 0, len(assets))
	for _, as := range assets {
		v, err := viewAsset(as)
		if err != nil {
			return err
		}
		views = append(views, v)
	}
	return writeJSON(w, http.StatusOK, page[assetView]{Data: views})
}

func (a *API) getAsset(w http.ResponseWriter, r *http.Request) error {
	code := r.PathValue("code")
	if !validAssetCode(code) {
		return ledger.Errorf(ledger.CodeAssetNotFound, "asset %s is not registered", truncate(code))
	}
	asset, err := a.set.Asset(r.Context(), code)
	if err != nil {
		return err
	}
	v, err := viewAsset(asset)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, v)
}

// --- accounts ---

type createAccountRequest struct {
	Owner        string          `json:"owner"`
	Asset        string          `json:"asset"`
	BalanceFloor *string         `json:"balance_floor"`
	BalanceSlots *int            `json:"balance_slots"`
	Metadata     json.RawMessage `json:"metadata"`
	// Shard places the account on that shard; without it the account goes where the
	// owner's accounts are (shardset.Place).
	Shard *int `json:"shard"`
}

func (a *API) createAccount(w http.ResponseWriter, r *http.Request) error {
	var req createAccountRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if err := validOwner(req.Owner); err != nil {
		return err
	}
	if c := callerOf(r.Context()); !owns(c, req.Owner) {
		return ledger.Errorf(ledger.CodeForbidden, "a user opens accounts for itself only: owner must be %q", c.Owner)
	}
	asset, err := a.asset(r.Context(), req.Asset)
	if err != nil {
		return err
	}
	floor := int64(0)
	if req.BalanceFloor != nil {
		floor, err = money.Parse(*req.BalanceFloor, asset.Scale)
		if err != nil {
			return ledger.Errorf(ledger.CodeInvalidAmount, "balance_floor: %v", err)
		}
		if floor > 0 || floor == ledger.NoFloor {
			return ledger.Errorf(ledger.CodeInvalidAmount, "balance_floor must be zero or negative, and above the smallest amount")
		}
		if floor < 0 && !callerOf(r.Context()).Operates() {
			return ledger.Errorf(ledger.CodeForbidden, "an overdraft (balance_floor below zero) needs the operator role")
		}
	}
	slots := 1
	if req.BalanceSlots != nil {
		slots = *req.BalanceSlots
		if slots < 1 || slots > ledger.MaxBalanceSlots {
			return ledger.Errorf(ledger.CodeInvalidRequest, "balance_slots must be 1 to %d", ledger.MaxBalanceSlots)
		}
		if slots > 1 && floor != 0 {
			return ledger.Errorf(ledger.CodeInvalidRequest, "an account with more than one balance slot cannot have a balance_floor below zero")
		}
	}
	meta, err := metadata.Canonical(req.Metadata)
	if err != nil {
		return err
	}
	acc, err := a.set.CreateAccount(r.Context(), ledger.Account{Owner: req.Owner, Asset: asset.Code, BalanceFloor: floor, BalanceSlots: slots, Metadata: meta}, req.Shard)
	if err != nil {
		return err
	}
	return a.writeAccount(w, http.StatusCreated, acc)
}

// validOwnerText checks an owner as PostgreSQL's text stores it and as people read it:
// UTF-8 without control characters (NUL among them), trimmed, within the length limit.
func validOwnerText(owner string) error {
	if owner == "" || len(owner) > ledger.MaxOwnerLength || strings.TrimSpace(owner) != owner || !utf8.ValidString(owner) ||
		strings.ContainsFunc(owner, unicode.IsControl) {
		return ledger.Errorf(ledger.CodeInvalidRequest,
			"owner must be 1 to %d bytes of UTF-8 with no control characters and no leading or trailing space", ledger.MaxOwnerLength)
	}
	return nil
}

// validOwner is validOwnerText for a new account, whose owner may not take the prefix
// reserved for the ledger's own accounts.
func validOwner(owner string) error {
	if err := validOwnerText(owner); err != nil {
		return err
	}
	if strings.HasPrefix(owner, "tally:") {
		return ledger.Errorf(ledger.CodeInvalidRequest, "owners starting with \"tally:\" are reserved")
	}
	return nil
}

func (a *API) asset(ctx context.Context, code string) (ledger.Asset, error) {
	if !validAssetCode(code) {
		return ledger.Asset{}, ledger.Errorf(ledger.CodeInvalidRequest, "asset %q is not a valid asset code", truncate(code))
	}
	return a.set.Asset(ctx, code)
}

func (a *API) writeAccount(w http.ResponseWriter, status int, acc ledger.Account) error {
	v, err := viewAccount(acc)
	if err != nil {
		return err
	}
	return writeJSON(w, status, v)
}

func (a *API) listAccounts(w http.ResponseWriter, r *http.Request) error {
	q, err := query(r)
	if err != nil {
		return err
	}
	c := callerOf(r.Context())
	owner := q.Get("owner")
	if owner == "" && !c.Operates() {
		owner = c.Owner
	}
	if owner == "" {
		return ledger.Errorf(ledger.CodeInvalidRequest, "query parameter owner is required")
	}
	if err := validOwnerText(owner); err != nil {
		return err
	}
	if !owns(c, owner) {
		return ledger.Errorf(ledger.CodeForbidden, "a user lists its own accounts only: owner must be %q or left out", c.Owner)
	}
	limit, err := pageSize(q.Get("limit"))
	if err != nil {
		return err
	}
	var after ledger.AccountID
	if c := q.Get("cursor"); c != "" {
		key, err := decodeCursor(c)
		if err == nil {
			after, err = ledger.ParseAccountID(key)
		}
		if err != nil {
			return ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", truncate(c))
		}
	}
	accounts, err := a.set.AccountsByOwner(r.Context(), owner, after, limit+1)
	if err != nil {
		return err
	}
	var p page[accountView]
	if len(accounts) > limit {
		accounts = accounts[:limit]
		p.NextCursor = encodeCursor(accounts[limit-1].ID.String())
	}
	p.Data = make([]accountView, 0, len(accounts))
	for _, acc := range accounts {
		v, err := viewAccount(acc)
		if err != nil {
			return err
		}
		p.Data = append(p.Data, v)
	}
	return writeJSON(w, http.StatusOK, p)
}

// query parses the query string strictly: a malformed one is an error, not ignored.
func query(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, ledger.Errorf(ledger.CodeInvalidRequest, "malformed query string: %v", err)
	}
	return q, nil
}

func pageSize(s string) (int, error) {
	if s == "" {
		return DefaultPageSize, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxPageSize {
		return 0, ledger.Errorf(ledger.CodeInvalidRequest, "limit must be a whole number from 1 to %d", MaxPageSize)
	}
	return n, nil
}

func accountIDFromPath(r *http.Request) (ledger.AccountID, error) {
	id, err := ledger.ParseAccountID(r.PathValue("id"))
	if err != nil {
		return id, ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	return id, nil
}

func (a *API) getAccount(w http.ResponseWriter, r *http.Request) error {
	id, err := accountIDFromPath(r)
	if err != nil {
		return err
	}
	acc, err := a.set.Account(r.Context(), id)
	if err != nil {
		return err
	}
	if !owns(callerOf(r.Context()), acc.Owner) {
		return ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
	}
	return a.writeAccount(w, http.StatusOK, acc)
}

func (a *API) setStatus(status ledger.Status) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := accountIDFromPath(r)
		if err != nil {
			return err
		}
		acc, err := a.set.SetStatus(r.Context(), id, status)
		if err != nil {
			return err
		}
		return a.writeAccount(w, http.StatusOK, acc)
	}
}

func (a *API) getBalance(w http.ResponseWriter, r *http.Request) error {
	id, err := accountIDFromPath(r)
	if err != nil {
		return err
	}
	if err := a.mayUse(r.Context(), id); err != nil {
		return err
	}
	b, err := a.set.Balance(r.Context(), id)
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, viewBalance(b))
}

func (a *API) listEntries(w http.ResponseWriter, r *http.Request) error {
	id, err := accountIDFromPath(r)
	if err != nil {
		return err
	}
	if err := a.mayUse(r.Context(), id); err != nil {
		return err
	}
	q, err := query(r)
	if err != nil {
		return err
	}
	limit, err := pageSize(q.Get("limit"))
	if err != nil {
		return err
	}
	var before int64
	if c := q.Get("cursor"); c != "" {
		if before, err = decodeEntryCursor(c); err != nil {
			return err
		}
	}
	entries, err := a.set.Entries(r.Context(), id, before, limit+1)
	if err != nil {
		return err
	}
	var p page[entryView]
	if len(entries) > limit {
		entries = entries[:limit]
		p.NextCursor = encodeCursor(strconv.FormatInt(entries[limit-1].ID, 10))
	}
	p.Data = make([]entryView, 0, len(entries))
	for _, e := range entries {
		asset, err := a.set.Asset(r.Context(), e.Asset)
		if err != nil {
			return err
		}
		p.Data = append(p.Data, entryView{
			ID: strconv.FormatInt(e.ID, 10), TransactionID: e.TransactionID, Posting: e.Posting, AccountID: e.AccountID,
			Asset: e.Asset, Amount: money.Format(e.Amount, asset.Scale), BalanceAfter: money.Format(e.BalanceAfter, asset.Scale), Slot: e.Slot,
			CreatedAt: e.CreatedAt.UTC(),
		})
	}
	return writeJSON(w, http.StatusOK, p)
}

// --- transactions: the transfer path ---

type postingRequest struct {
	FromAccount string `json:"from_account"`
	ToAccount   string `json:"to_account"`
	Amount      string `json:"amount"`
	Asset       string `json:"asset"`
}

type transferRequest struct {
	postingRequest
	Metadata json.RawMessage `json:"metadata"`
	// Pending reserves the amount now, to post or void later (see twophase.go);
	// TimeoutSeconds, with it, voids it by itself after that long.
	Pending        bool  `json:"pending"`
	TimeoutSeconds int64 `json:"timeout_seconds"`
}

type transactionRequest struct {
	Postings []postingRequest `json:"postings"`
	Metadata json.RawMessage  `json:"metadata"`
}

func (a *API) postTransfer(w http.ResponseWriter, r *http.Request) error {
	var req transferRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if req.Pending {
		return a.reserve(w, r, req)
	}
	if req.TimeoutSeconds != 0 {
		return ledger.Errorf(ledger.CodeInvalidRequest, "timeout_seconds applies to pending transfers only; add \"pending\": true")
	}
	return a.post(w, r, "transfer", []postingRequest{req.postingRequest}, req.Metadata)
}

func (a *API) postTransaction(w http.ResponseWriter, r *http.Request) error {
	var req transactionRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	if len(req.Postings) == 0 || len(req.Postings) > ledger.MaxPostings {
		return ledger.Errorf(ledger.CodeInvalidRequest, "postings must hold 1 to %d postings", ledger.MaxPostings)
	}
	return a.post(w, r, "transaction", req.Postings, req.Metadata)
}

// canonicalRequest is what an idempotency key is bound to: the request after parsing,
// so spelling (whitespace, "12.3" against "12.30", key order in metadata) does not matter.
type canonicalRequest struct {
	Kind     string
	Postings []shardset.PostingRequest
	Metadata json.RawMessage
}

// idempotencyKey is the request's Idempotency-Key header, which every write needs.
func idempotencyKey(r *http.Request) (string, error) {
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		return "", ledger.Errorf(ledger.CodeIdempotencyKeyRequired, "send an Idempotency-Key header (for example a UUID) so the request can be retried safely")
	}
	if len(key) > ledger.MaxIdempotencyKey || !printableASCII(key) {
		return "", ledger.Errorf(ledger.CodeInvalidRequest, "Idempotency-Key must be 1 to %d printable ASCII characters", ledger.MaxIdempotencyKey)
	}
	return key, nil
}

func (a *API) post(w http.ResponseWriter, r *http.Request, kind string, postings []postingRequest, rawMeta json.RawMessage) error {
	key, err := idempotencyKey(r)
	if err != nil {
		return err
	}
	meta, err := metadata.Canonical(rawMeta)
	if err != nil {
		return err
	}
	req := shardset.TransactionRequest{Caller: callerOf(r.Context()).Name, Key: key, Metadata: meta}
	for i, p := range postings {
		pr, err := a.parsePosting(r.Context(), i, p)
		if err != nil {
			return err
		}
		req.Postings = append(req.Postings, pr)
	}
	if err := a.mayMove(r.Context(), req.Postings); err != nil {
		return err
	}
	canon, err := document.Marshal(canonicalRequest{Kind: kind, Postings: req.Postings, Metadata: meta})
	if err != nil {
		return err
	}
	req.Hash = sha256.Sum256(canon)
	started := time.Now()
	side := a.lookupBeside(r, key, req.Hash)
	if a.replayedFirst(w, kind, side) {
		return nil
	}
	if p := req.Postings[0]; kind == "transfer" && !p.From.External && !p.To.External && p.From.ID.Shard() != p.To.ID.Shard() {
		return a.transferAcross(w, r, shardset.StepRequest{Caller: req.Caller, Key: key, Hash: req.Hash, Metadata: meta}, p, started, side)
	}
	out, err := a.set.Post(side.ctx, req, a.renderTransaction)
	if a.cachedReplay(w, kind, side, err) {
		return nil
	}
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
	writeRaw(w, out.Status, contentTypeOf(out.Status), out.Body)
	if !out.Replayed {
		a.remember(r, key, req.Hash, started, out.Status, out.Body)
	}
	return nil
}

func problemCodeOf(body []byte) ledger.Code {
	var p ledger.Problem
	_ = json.Unmarshal(body, &p)
	return p.Code
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func (a *API) parsePosting(ctx context.Context, i int, p postingRequest) (shardset.PostingRequest, error) {
	var out shardset.PostingRequest
	asset, err := a.asset(ctx, p.Asset)
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
	if s == externalAccount {
		return shardset.Account{External: true}, nil
	}
	if s == "" {
		return shardset.Account{}, ledger.Errorf(ledger.CodeInvalidRequest, "%s is required: an account id, or %q", field, externalAccount)
	}
	id, err := ledger.ParseAccountID(s)
	if err != nil {
		return shardset.Account{}, ledger.Errorf(ledger.CodeInvalidID, "%s: %v", field, err)
	}
	return shardset.Account{ID: id}, nil
}

// renderTransaction is the one rendering of a transaction, used for the POST response
// (rendered before the write), for its replays and for GET, from the journal: the same
// bytes each time.
func (a *API) renderTransaction(ctx context.Context, tx ledger.Transaction) ([]byte, error) {
	return document.Transaction(tx, func(code string) (int, error) {
		asset, err := a.set.Asset(ctx, code)
		return asset.Scale, err
	})
}

func (a *API) getTransaction(w http.ResponseWriter, r *http.Request) error {
	id, err := ledger.ParseTransactionID(r.PathValue("id"))
	if err != nil {
		return ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	tx, err := a.set.Transaction(r.Context(), id)
	if err != nil {
		return err
	}
	if err := a.maySeeTransaction(r.Context(), tx); err != nil {
		return err
	}
	body, err := a.renderTransaction(r.Context(), tx)
	if err != nil {
		return err
	}
	writeRaw(w, http.StatusOK, "application/json", body)
	return nil
}
