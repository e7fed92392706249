// Package ledger holds the domain of a double-entry ledger: accounts, assets, postings,
// transactions and their entries, ids that carry their shard, and the stable error codes.
// Storage lives in ledger/store, routing across shards in ledger/shardset, and the
// HTTP API in ledger/httpapi.
package ledger

import (
	"encoding/json"
	"math"
	"time"
)

// Limits on everything a caller sends.
const (
	MaxPostings       = 64   // postings in one transaction; tally.post_batch checks the same
	MaxMetadataBytes  = 4096 // metadata object, as JSON
	MaxOwnerLength    = 200
	MaxIdempotencyKey = 255
	MaxCallerLength   = 200
)

// NoFloor is the floor of an account that may go negative without limit: the external
// accounts through which money enters and leaves the ledger.
const NoFloor int64 = math.MinInt64

// Status is an account's lifecycle state.
type Status string

// Account states: active accounts move money; frozen ones move none until unfrozen;
// closed ones never again.
const (
	StatusActive Status = "active"
	StatusFrozen Status = "frozen"
	StatusClosed Status = "closed"
)

// Kind tells customer accounts from the per-asset system accounts.
type Kind string

// Account kinds: customers' accounts; the asset's external account, through which money
// enters and leaves the ledger; its holding account, which holds what pending transfers
// reserved until they are resolved; and its clearing accounts, one per other shard.
const (
	KindStandard Kind = "standard"
	KindExternal Kind = "external"
	KindHolding  Kind = "holding"
	KindClearing Kind = "clearing" // one per asset and peer shard: see ledger/crossshard
)

// Asset is a currency or other unit, counted in integer minor units at a fixed scale.
type Asset struct {
	Code  string
	Scale int
	// ExternalAccounts holds the asset's external account on each shard, by shard index.
	ExternalAccounts []AccountID
}

// Account is an account's identity and settings.
type Account struct {
	ID           AccountID
	Kind         Kind
	Owner        string
	Asset        string
	Scale        int
	Status       Status
	BalanceFloor int64 // NoFloor for none
	// BalanceSlots is how many rows hold the balance (1 to MaxBalanceSlots): more than one
	// lets batches credit a hot account side by side; such an account has floor 0.
	BalanceSlots int
	Metadata     json.RawMessage
	CreatedAt    time.Time
}

// MaxBalanceSlots bounds an account's balance slots; the schema checks the same.
const MaxBalanceSlots = 64

// Balance is an account's balance. Available is what the journal holds for it, all it
// may spend; Reserved is what its pending transfers hold back from it (already out of
// Available), and Incoming what pending transfers would bring it. Its posted balance is
// Available + Reserved. Version counts the transactions that moved it.
type Balance struct {
	AccountID AccountID
	Asset     string
	Scale     int
	Available int64
	Reserved  int64
	Incoming  int64
	Version   int64
}

// Posted is the balance before pending transfers: what the account holds, reserved or not.
func (b Balance) Posted() int64 { return b.Available + b.Reserved }

// Posting moves Amount (minor units, positive) of Asset from one account to another.
type Posting struct {
	From   AccountID
	To     AccountID
	Amount int64
	Asset  string
}

// Transaction is an atomic set of postings.
type Transaction struct {
	ID        TransactionID
	Postings  []Posting
	Metadata  json.RawMessage
	CreatedAt time.Time
	Reverses  TransactionID // the transaction this one reverses; zero for none
}

// Entry is one leg of a posting as the journal holds it: a signed amount on one account,
// and that account's balance just after it.
type Entry struct {
	ID            int64
	TransactionID TransactionID
	Posting       int
	AccountID     AccountID
	Asset         string
	Amount        int64
	BalanceAfter  int64 // the running balance of the entry's slot
	Slot          int   // 0 for an account of one slot, else 1 to its BalanceSlots
	CreatedAt     time.Time
}

// Outcome is the recorded result of an idempotent request: exactly what was answered.
type Outcome struct {
	Status   int
	Body     []byte
	Replayed bool
	// ReplayOf is, for a replayed 201 whose record keeps no body, the transaction first
	// posted under the key: its response is rendered again from the journal, and Body is
	// nil until then.
	ReplayOf TransactionID
	// Transaction is, for a 201 of a two-phase step or a reversal, the transaction the key
	// stands for, written now or replayed; its response is rendered from the journal.
	Transaction TransactionID
}

// PendingState is where a pending transfer stands: pending until posted, voided or
// expired, each of which is final.
type PendingState string

// Pending transfer states.
const (
	StatePending PendingState = "pending"
	StatePosted  PendingState = "posted"
	StateVoided  PendingState = "voided"
	StateExpired PendingState = "expired"
)

// PendingTransfer is a two-phase transfer: Amount was reserved from From for To by the
// transaction ID, and is then posted (PostedAmount of it to To, the rest back to From),
// voided, or expired at ExpiresAt (back to From) by the transaction ResolvedBy.
type PendingTransfer struct {
	ID           TransactionID
	From, To     AccountID
	Asset        string
	Amount       int64
	ExpiresAt    time.Time // zero: never
	State        PendingState
	PostedAmount int64
	ResolvedBy   TransactionID // zero while pending
	ResolvedAt   time.Time
	// Remote is, for a transfer to another shard, the account there; To is then this
	// shard's clearing account for that shard.
	Remote    AccountID
	Metadata  json.RawMessage
	CreatedAt time.Time
}

// Resolution is what to do with a pending transfer.
type Resolution string

// Resolutions: post it (all, or part and the rest back), void it, or expire it (the
// service's sweep, once its time is up).
const (
	ResolvePost   Resolution = "post"
	ResolveVoid   Resolution = "void"
	ResolveExpire Resolution = "expire"
	// For a transfer to another shard, once the destination has answered: all of it to
	// the clearing account (applied there), or all back (refused there).
	ResolveSettle Resolution = "settle"
	ResolveReturn Resolution = "return"
)
