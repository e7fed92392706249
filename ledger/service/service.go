// Package service is the ledger's operations, the same behind every API: validation,
// authorization, idempotency and rendering live here once, and ledger/httpapi and
// ledger/grpcapi only carry requests in and answers out. An operation answers with the
// JSON document the HTTP API sends (package document), its status, and whether it
// replays an earlier request, so a write retried over either API answers the same.
package service

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/idemcache"
	"github.com/tallyhq/tally/ledger/shardset"
)

// Page sizes for every list.
const (
	DefaultPageSize = 50
	MaxPageSize     = 200
)

// ExternalAccount is how a request names the asset's external account, through which
// money enters (deposits) and leaves (withdrawals) the ledger.
const ExternalAccount = "external"

// Service runs the ledger's operations over a shard set.
type Service struct {
	set     *shardset.Set
	metrics *Metrics
	log     *slog.Logger
	cache   *idemcache.Cache // nil: every replay is answered by PostgreSQL
}

// New returns the operations over the shard set.
func New(set *shardset.Set, metrics *Metrics, log *slog.Logger) *Service {
	return &Service{set: set, metrics: metrics, log: log}
}

// WithIdempotencyCache answers replays of completed writes from the cache when it holds
// their answers, and keeps every first answer there (idemcache says why that is safe).
func (s *Service) WithIdempotencyCache(c *idemcache.Cache) *Service {
	s.cache = c
	return s
}

// Answer is an operation's answer: an HTTP status and its JSON document (a problem
// document from 400 on: a refusal the ledger recorded under the idempotency key).
type Answer struct {
	Status   int
	Body     []byte
	Replayed bool   // the recorded answer of an earlier request with the same key
	Location string // where to follow a transfer still in flight (202)
}

// Refused reports whether the answer is a recorded refusal (its Body a problem).
func (a Answer) Refused() bool { return a.Status >= 300 }

// ContentType is the answer's media type.
func (a Answer) ContentType() string {
	if a.Refused() {
		return "application/problem+json"
	}
	return "application/json"
}

func answer(status int, v any) (Answer, error) {
	body, err := document.Marshal(v)
	if err != nil {
		return Answer{}, err
	}
	return Answer{Status: status, Body: body}, nil
}

func ok(v any) (Answer, error) { return answer(http.StatusOK, v) }

// Metrics are the operations' Prometheus series.
type Metrics struct {
	transactions *prometheus.CounterVec
}

// NewMetrics creates the series and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{transactions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tally_transactions_total",
		Help: "Transfer and transaction requests by kind, outcome (applied, replayed, rejected, in_flight, error) and problem code.",
	}, []string{"kind", "outcome", "code"})}
	reg.MustRegister(m.transactions)
	return m
}

func (m *Metrics) observeTransaction(kind, outcome string, code ledger.Code) {
	if m == nil {
		return
	}
	m.transactions.WithLabelValues(kind, outcome, string(code)).Inc()
}

// Access is the least role an operation needs.
type Access int

const (
	// Users is every caller; a user only with its own accounts, an operator or an admin
	// with any.
	Users Access = iota
	// Operators is operators and admins.
	Operators
	// Admins is admins only.
	Admins
)

// Allows reports whether the caller has the role.
func (r Access) Allows(c auth.Caller) bool {
	switch r {
	case Users:
		return len(c.Roles) > 0
	case Operators:
		return c.Operates()
	default:
		return c.Has(auth.RoleAdmin)
	}
}

func (r Access) String() string {
	return [...]string{"user", "operator", "admin"}[r]
}

// Op names an operation, for the APIs' tables of what each route or method runs.
type Op string

// The operations.
const (
	OpRegisterAsset      Op = "RegisterAsset"
	OpListAssets         Op = "ListAssets"
	OpGetAsset           Op = "GetAsset"
	OpCreateAccount      Op = "CreateAccount" // a user: for itself, with no overdraft
	OpListAccounts       Op = "ListAccounts"  // a user: its own
	OpGetAccount         Op = "GetAccount"
	OpFreezeAccount      Op = "FreezeAccount"
	OpUnfreezeAccount    Op = "UnfreezeAccount"
	OpCloseAccount       Op = "CloseAccount"
	OpGetBalance         Op = "GetBalance"
	OpListEntries        Op = "ListEntries"
	OpFollowEntries      Op = "FollowEntries"
	OpTransfer           Op = "Transfer"        // a user: between its own accounts
	OpPostTransaction    Op = "PostTransaction" // a user: between its own accounts
	OpGetTransaction     Op = "GetTransaction"  // a user: one touching its accounts
	OpReverseTransaction Op = "ReverseTransaction"
	OpGetPendingTransfer Op = "GetPendingTransfer"
	OpPostPending        Op = "PostPendingTransfer" // a user: between its own accounts
	OpVoidPending        Op = "VoidPendingTransfer"
)

// Ops is every operation.
func Ops() []Op {
	return []Op{OpRegisterAsset, OpListAssets, OpGetAsset, OpCreateAccount, OpListAccounts, OpGetAccount,
		OpFreezeAccount, OpUnfreezeAccount, OpCloseAccount, OpGetBalance, OpListEntries, OpFollowEntries,
		OpTransfer, OpPostTransaction, OpGetTransaction, OpReverseTransaction, OpGetPendingTransfer,
		OpPostPending, OpVoidPending}
}

// Reads reports whether the operation only reads (rate limits count reads and writes
// apart).
func (op Op) Reads() bool {
	switch op {
	case OpListAssets, OpGetAsset, OpListAccounts, OpGetAccount, OpGetBalance, OpListEntries, OpFollowEntries,
		OpGetTransaction, OpGetPendingTransfer:
		return true
	}
	return false
}

// Needs is the least role the operation needs: a user reads and moves money only with
// its own accounts (the operation checks which); an operator also deposits, withdraws,
// freezes, reverses and uses any account; an admin also registers assets and closes
// accounts. A role an operation needs and the caller lacks answers 403; another owner's
// account, transaction or transfer answers 404 exactly as one that does not exist, so a
// user learns nothing of what it may not see.
func (op Op) Needs() Access {
	switch op {
	case OpRegisterAsset, OpCloseAccount:
		return Admins
	case OpFreezeAccount, OpUnfreezeAccount, OpReverseTransaction:
		return Operators
	default:
		return Users
	}
}
