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

// Kind tells customer accounts from the per-asset external account.
type Kind string

// Account kinds.
const (
	KindStandard Kind = "standard"
	KindExternal Kind = "external"
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

// Balance is an account's posted balance; Version counts the transactions that moved it.
type Balance struct {
	AccountID AccountID
	Asset     string
	Scale     int
	Posted    int64
	Version   int64
}

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
}
