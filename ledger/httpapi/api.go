// Package httpapi is the ledger's HTTP/JSON API: it carries requests to the operations
// (ledger/service) and their answers back. Amounts cross it as decimal strings and are
// integers of minor units everywhere behind it; every error is an RFC 9457 problem
// document with a stable code.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/service"
)

// retryAfterSeconds is the Retry-After of a 503: about the time a shard takes to fail
// over, so a client that honours it tries again once a new primary may serve.
const retryAfterSeconds = "2"

// API serves the ledger over HTTP.
type API struct {
	svc           *service.Service
	auth          *auth.Authenticator
	metrics       *Metrics
	log           *slog.Logger
	maxConcurrent int
	limiter       *ratelimit.Limiter // nil: no rate limits
}

// New returns the API over the operations. authn may be nil for an open API whose every
// caller is auth.AnonymousCaller, an admin (local development only).
func New(svc *service.Service, authn *auth.Authenticator, metrics *Metrics, log *slog.Logger) *API {
	return &API{svc: svc, auth: authn, metrics: metrics, log: log, maxConcurrent: DefaultMaxConcurrentRequests}
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
		mux.Handle(rt.pattern, a.instrument(rt.pattern, rt.op, rt.handle))
	}
	return a.limit(problemsForMux(mux))
}

// handler serves one route for an authenticated, authorized caller.
type handler func(w http.ResponseWriter, r *http.Request, c auth.Caller) error

type route struct {
	pattern string
	op      service.Op
	handle  handler
}

// routes is the route table: each route runs one operation (which says the least role
// it needs).
func (a *API) routes() []route {
	return []route{
		{"POST /v1/assets", service.OpRegisterAsset, a.registerAsset},
		{"GET /v1/assets", service.OpListAssets, a.listAssets},
		{"GET /v1/assets/{code}", service.OpGetAsset, a.getAsset},
		{"POST /v1/accounts", service.OpCreateAccount, a.createAccount},
		{"GET /v1/accounts", service.OpListAccounts, a.listAccounts},
		{"GET /v1/accounts/{id}", service.OpGetAccount, a.getAccount},
		{"POST /v1/accounts/{id}/freeze", service.OpFreezeAccount, a.setStatus(ledger.StatusFrozen)},
		{"POST /v1/accounts/{id}/unfreeze", service.OpUnfreezeAccount, a.setStatus(ledger.StatusActive)},
		{"POST /v1/accounts/{id}/close", service.OpCloseAccount, a.setStatus(ledger.StatusClosed)},
		{"GET /v1/accounts/{id}/balance", service.OpGetBalance, a.getBalance},
		{"GET /v1/accounts/{id}/entries", service.OpListEntries, a.listEntries},
		{"POST /v1/transfers", service.OpTransfer, a.postTransfer},
		{"POST /v1/transactions", service.OpPostTransaction, a.postTransaction},
		{"GET /v1/transactions/{id}", service.OpGetTransaction, a.getTransaction},
		{"POST /v1/transactions/{id}/reverse", service.OpReverseTransaction, a.reverseTransaction},
		{"GET /v1/transfers/{id}", service.OpGetPendingTransfer, a.getPendingTransfer},
		{"POST /v1/transfers/{id}/post", service.OpPostPending, a.resolvePendingTransfer(ledger.ResolvePost)},
		{"POST /v1/transfers/{id}/void", service.OpVoidPending, a.resolvePendingTransfer(ledger.ResolveVoid)},
	}
}

// Routes lists every route's pattern and the least role it needs.
func (a *API) Routes() map[string]string {
	out := map[string]string{}
	for _, rt := range a.routes() {
		out[rt.pattern] = rt.op.Needs().String()
	}
	return out
}

// instrument authenticates, authorizes the route, times, counts, and turns returned
// errors into problems.
func (a *API) instrument(route string, op service.Op, h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		caller, err := a.auth.Authenticate(r)
		if need := op.Needs(); err == nil && !need.Allows(caller) {
			err = ledger.Errorf(ledger.CodeForbidden, "%s %s needs the %s role", r.Method, route[strings.Index(route, " ")+1:], need)
		}
		if err == nil {
			err = a.rateLimit(sw, r, caller)
		}
		if err == nil {
			err = h(sw, r, caller)
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

// write sends an operation's answer, or returns its error for instrument to send.
func write(w http.ResponseWriter, ans service.Answer, err error) error {
	if err != nil {
		return err
	}
	if ans.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	if ans.Location != "" {
		w.Header().Set("Location", ans.Location)
	}
	writeRaw(w, ans.Status, ans.ContentType(), ans.Body)
	return nil
}

// idempotencyKey is the request's Idempotency-Key header, which every write needs.
func idempotencyKey(r *http.Request) string { return r.Header.Get("Idempotency-Key") }

// query parses the query string strictly: a malformed one is an error, not ignored.
func query(r *http.Request) (url.Values, error) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, ledger.Errorf(ledger.CodeInvalidRequest, "malformed query string: %v", err)
	}
	return q, nil
}

// page is a list's limit (0: the default) and cursor from the query string.
func page(r *http.Request) (limit int, cursor string, err error) {
	q, err := query(r)
	if err != nil {
		return 0, "", err
	}
	if s := q.Get("limit"); s != "" {
		if limit, err = strconv.Atoi(s); err != nil || limit == 0 {
			limit = service.InvalidPageSize
		}
	}
	return limit, q.Get("cursor"), nil
}

// --- assets ---

func (a *API) registerAsset(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	var req struct {
		Code  string `json:"code"`
		Scale *int   `json:"scale"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	ans, err := a.svc.RegisterAsset(r.Context(), c, req.Code, req.Scale)
	return write(w, ans, err)
}

func (a *API) listAssets(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	ans, err := a.svc.ListAssets(r.Context(), c)
	return write(w, ans, err)
}

func (a *API) getAsset(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	ans, err := a.svc.GetAsset(r.Context(), c, r.PathValue("code"))
	return write(w, ans, err)
}

// --- accounts ---

func (a *API) createAccount(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	var req struct {
		Owner        string          `json:"owner"`
		Asset        string          `json:"asset"`
		BalanceFloor *string         `json:"balance_floor"`
		BalanceSlots *int            `json:"balance_slots"`
		Metadata     json.RawMessage `json:"metadata"`
		Shard        *int            `json:"shard"`
	}
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	ans, err := a.svc.CreateAccount(r.Context(), c, service.NewAccount{Owner: req.Owner, Asset: req.Asset,
		BalanceFloor: req.BalanceFloor, BalanceSlots: req.BalanceSlots, Metadata: req.Metadata, Shard: req.Shard})
	return write(w, ans, err)
}

func (a *API) listAccounts(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	q, err := query(r)
	if err != nil {
		return err
	}
	limit, cursor, err := page(r)
	if err != nil {
		return err
	}
	ans, err := a.svc.ListAccounts(r.Context(), c, q.Get("owner"), limit, cursor)
	return write(w, ans, err)
}

func (a *API) getAccount(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	ans, err := a.svc.GetAccount(r.Context(), c, r.PathValue("id"))
	return write(w, ans, err)
}

func (a *API) setStatus(status ledger.Status) handler {
	return func(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
		ans, err := a.svc.SetStatus(r.Context(), c, r.PathValue("id"), status)
		return write(w, ans, err)
	}
}

func (a *API) getBalance(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	if at := r.URL.Query(); at.Has("at") {
		ans, err := a.svc.GetBalanceAt(r.Context(), c, r.PathValue("id"), at.Get("at"))
		return write(w, ans, err)
	}
	ans, err := a.svc.GetBalance(r.Context(), c, r.PathValue("id"))
	return write(w, ans, err)
}

func (a *API) listEntries(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	limit, cursor, err := page(r)
	if err != nil {
		return err
	}
	ans, err := a.svc.ListEntries(r.Context(), c, r.PathValue("id"), limit, cursor)
	return write(w, ans, err)
}

// --- transactions: the transfer path ---

type postingRequest struct {
	FromAccount string `json:"from_account"`
	ToAccount   string `json:"to_account"`
	Amount      string `json:"amount"`
	Asset       string `json:"asset"`
}

func (p postingRequest) posting() service.Posting {
	return service.Posting{FromAccount: p.FromAccount, ToAccount: p.ToAccount, Amount: p.Amount, Asset: p.Asset}
}

type transferRequest struct {
	postingRequest
	Metadata       json.RawMessage `json:"metadata"`
	Pending        bool            `json:"pending"`
	TimeoutSeconds int64           `json:"timeout_seconds"`
}

type transactionRequest struct {
	Postings []postingRequest `json:"postings"`
	Metadata json.RawMessage  `json:"metadata"`
}

func (a *API) postTransfer(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	var req transferRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	ans, err := a.svc.Transfer(r.Context(), c, idempotencyKey(r), service.Transfer{Posting: req.posting(),
		Metadata: req.Metadata, Pending: req.Pending, TimeoutSeconds: req.TimeoutSeconds})
	return write(w, ans, err)
}

func (a *API) postTransaction(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	var req transactionRequest
	if err := decodeJSON(r, &req); err != nil {
		return err
	}
	postings := make([]service.Posting, len(req.Postings))
	for i, p := range req.Postings {
		postings[i] = p.posting()
	}
	ans, err := a.svc.PostTransaction(r.Context(), c, idempotencyKey(r), postings, req.Metadata)
	return write(w, ans, err)
}

func (a *API) getTransaction(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	ans, err := a.svc.GetTransaction(r.Context(), c, r.PathValue("id"))
	return write(w, ans, err)
}

func (a *API) reverseTransaction(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	var req struct {
		Metadata json.RawMessage `json:"metadata"`
	}
	if err := decodeOptionalJSON(r, &req); err != nil {
		return err
	}
	ans, err := a.svc.ReverseTransaction(r.Context(), c, idempotencyKey(r), r.PathValue("id"), req.Metadata)
	return write(w, ans, err)
}

func (a *API) getPendingTransfer(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
	ans, err := a.svc.GetPendingTransfer(r.Context(), c, r.PathValue("id"))
	return write(w, ans, err)
}

func (a *API) resolvePendingTransfer(how ledger.Resolution) handler {
	return func(w http.ResponseWriter, r *http.Request, c auth.Caller) error {
		var req struct {
			Amount   string          `json:"amount"`
			Metadata json.RawMessage `json:"metadata"`
		}
		if err := decodeOptionalJSON(r, &req); err != nil {
			return err
		}
		ans, err := a.svc.ResolvePending(r.Context(), c, idempotencyKey(r), r.PathValue("id"), how, req.Amount, req.Metadata)
		return write(w, ans, err)
	}
}
