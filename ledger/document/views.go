package document

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
)

// The documents below are what the APIs answer with. Amounts are decimal strings at the
// asset's scale; ids are strings; times are UTC.

// Asset is a registered asset with every shard's external account.
type Asset struct {
	Code             string             `json:"code"`
	Scale            int                `json:"scale"`
	ExternalAccounts []ledger.AccountID `json:"external_accounts"`
}

// AssetOf renders an asset; while a shard has not answered, its external account is
// unknown and the asset cannot be shown whole.
func AssetOf(a ledger.Asset) (Asset, error) {
	for i, ext := range a.ExternalAccounts {
		if ext == (ledger.AccountID{}) {
			return Asset{}, ledger.Errorf(ledger.CodeUnavailable, "shard %d is unavailable, so asset %s cannot be shown whole; retry shortly", i, a.Code)
		}
	}
	return Asset{Code: a.Code, Scale: a.Scale, ExternalAccounts: a.ExternalAccounts}, nil
}

// Account is an account.
type Account struct {
	ID           ledger.AccountID `json:"id"`
	Kind         ledger.Kind      `json:"kind"`
	Owner        string           `json:"owner"`
	Asset        string           `json:"asset"`
	Scale        int              `json:"scale"`
	Status       ledger.Status    `json:"status"`
	BalanceFloor *string          `json:"balance_floor"` // null: no floor
	BalanceSlots int              `json:"balance_slots"`
	Metadata     json.RawMessage  `json:"metadata"`
	CreatedAt    time.Time        `json:"created_at"`
}

// AccountOf renders an account.
func AccountOf(a ledger.Account) (Account, error) {
	v := Account{ID: a.ID, Kind: a.Kind, Owner: a.Owner, Asset: a.Asset, Scale: a.Scale, Status: a.Status, BalanceSlots: a.BalanceSlots, CreatedAt: a.CreatedAt.UTC()}
	if a.BalanceFloor != ledger.NoFloor {
		f := money.Format(a.BalanceFloor, a.Scale)
		v.BalanceFloor = &f
	}
	meta, err := metadata.Canonical(a.Metadata)
	v.Metadata = meta
	return v, err
}

// Balance is an account's balance: balance is the posted balance; available is what may
// be spent (balance less pending_debits); pending_credits would arrive if pending
// transfers are posted.
type Balance struct {
	AccountID      ledger.AccountID `json:"account_id"`
	Asset          string           `json:"asset"`
	Balance        string           `json:"balance"`
	Available      string           `json:"available"`
	PendingDebits  string           `json:"pending_debits"`
	PendingCredits string           `json:"pending_credits"`
	Version        int64            `json:"version"`
}

// BalanceOf renders a balance.
func BalanceOf(b ledger.Balance) Balance {
	return Balance{AccountID: b.AccountID, Asset: b.Asset, Balance: money.Format(b.Posted(), b.Scale),
		Available: money.Format(b.Available, b.Scale), PendingDebits: money.Format(b.Reserved, b.Scale),
		PendingCredits: money.Format(b.Incoming, b.Scale), Version: b.Version}
}

// BalanceAt is an account's posted balance as of a moment: every transaction made at or
// before at. Pending amounts are not history, so it has none.
type BalanceAt struct {
	AccountID ledger.AccountID `json:"account_id"`
	Asset     string           `json:"asset"`
	Balance   string           `json:"balance"`
	At        time.Time        `json:"at"`
}

// PendingTransfer is a two-phase transfer. Its id is the transaction that reserved the
// amount; resolved_by is the one that posted, voided or expired it.
type PendingTransfer struct {
	ID           ledger.TransactionID  `json:"id"`
	FromAccount  ledger.AccountID      `json:"from_account"`
	ToAccount    ledger.AccountID      `json:"to_account"`
	Amount       string                `json:"amount"`
	Asset        string                `json:"asset"`
	State        ledger.PendingState   `json:"state"`
	PostedAmount string                `json:"posted_amount,omitempty"`
	ExpiresAt    *time.Time            `json:"expires_at,omitempty"`
	ResolvedBy   *ledger.TransactionID `json:"resolved_by,omitempty"`
	ResolvedAt   *time.Time            `json:"resolved_at,omitempty"`
	Metadata     json.RawMessage       `json:"metadata"`
	CreatedAt    time.Time             `json:"created_at"`
}

// PendingTransferOf renders a pending transfer of an asset of that scale. One to another
// shard shows the account there, not this shard's clearing account standing in for it.
func PendingTransferOf(pt ledger.PendingTransfer, scale int) (PendingTransfer, error) {
	meta, err := metadata.Canonical(pt.Metadata)
	if err != nil {
		return PendingTransfer{}, err
	}
	v := PendingTransfer{ID: pt.ID, FromAccount: pt.From, ToAccount: pt.To, Amount: money.Format(pt.Amount, scale),
		Asset: pt.Asset, State: pt.State, Metadata: meta, CreatedAt: pt.CreatedAt.UTC()}
	if pt.Remote != (ledger.AccountID{}) {
		v.ToAccount = pt.Remote
	}
	if pt.State == ledger.StatePosted {
		v.PostedAmount = money.Format(pt.PostedAmount, scale)
	}
	if !pt.ExpiresAt.IsZero() {
		t := pt.ExpiresAt.UTC()
		v.ExpiresAt = &t
	}
	if pt.ResolvedBy != (ledger.TransactionID{}) {
		t := pt.ResolvedAt.UTC()
		v.ResolvedBy, v.ResolvedAt = &pt.ResolvedBy, &t
	}
	return v, nil
}

// Entry is one leg of a posting on one account.
type Entry struct {
	ID            string               `json:"id"`
	TransactionID ledger.TransactionID `json:"transaction_id"`
	Posting       int                  `json:"posting"`
	AccountID     ledger.AccountID     `json:"account_id"`
	Asset         string               `json:"asset"`
	Amount        string               `json:"amount"`
	BalanceAfter  string               `json:"balance_after"`  // of the entry's slot
	Slot          int                  `json:"slot,omitempty"` // of a slotted account
	CreatedAt     time.Time            `json:"created_at"`
}

// Page is one page of a list; NextCursor, if set, asks for the next.
type Page[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"next_cursor,omitempty"`
	// ArchivedBefore, on the last page of a history, says that what came before it is
	// archived (the retention horizon), not that nothing did.
	ArchivedBefore *time.Time `json:"archived_before,omitempty"`
}

// EntryOf renders an entry of an asset of that scale.
func EntryOf(e ledger.Entry, scale int) Entry {
	return Entry{ID: strconv.FormatInt(e.ID, 10), TransactionID: e.TransactionID, Posting: e.Posting, AccountID: e.AccountID,
		Asset: e.Asset, Amount: money.Format(e.Amount, scale), BalanceAfter: money.Format(e.BalanceAfter, scale), Slot: e.Slot,
		CreatedAt: e.CreatedAt.UTC()}
}
