package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
)

// Wire shapes. Amounts are decimal strings at the asset's scale; ids are strings.

type assetView struct {
	Code             string             `json:"code"`
	Scale            int                `json:"scale"`
	ExternalAccounts []ledger.AccountID `json:"external_accounts"`
}

// viewAsset renders an asset with every shard's external account; while a shard has not
// answered, its external account is unknown and the asset cannot be shown whole.
func viewAsset(a ledger.Asset) (assetView, error) {
	for i, ext := range a.ExternalAccounts {
		if ext == (ledger.AccountID{}) {
			return assetView{}, ledger.Errorf(ledger.CodeUnavailable, "shard %d is unavailable, so asset %s cannot be shown whole; retry shortly", i, a.Code)
		}
	}
	return assetView{Code: a.Code, Scale: a.Scale, ExternalAccounts: a.ExternalAccounts}, nil
}

type accountView struct {
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

func viewAccount(a ledger.Account) (accountView, error) {
	v := accountView{ID: a.ID, Kind: a.Kind, Owner: a.Owner, Asset: a.Asset, Scale: a.Scale, Status: a.Status, BalanceSlots: a.BalanceSlots, CreatedAt: a.CreatedAt.UTC()}
	if a.BalanceFloor != ledger.NoFloor {
		f := money.Format(a.BalanceFloor, a.Scale)
		v.BalanceFloor = &f
	}
	meta, err := metadata.Canonical(a.Metadata)
	v.Metadata = meta
	return v, err
}

// balanceView: balance is the posted balance; available is what may be spent (balance
// less pending_debits); pending_credits would arrive if pending transfers are posted.
type balanceView struct {
	AccountID      ledger.AccountID `json:"account_id"`
	Asset          string           `json:"asset"`
	Balance        string           `json:"balance"`
	Available      string           `json:"available"`
	PendingDebits  string           `json:"pending_debits"`
	PendingCredits string           `json:"pending_credits"`
	Version        int64            `json:"version"`
}

func viewBalance(b ledger.Balance) balanceView {
	return balanceView{AccountID: b.AccountID, Asset: b.Asset, Balance: money.Format(b.Posted(), b.Scale),
		Available: money.Format(b.Available, b.Scale), PendingDebits: money.Format(b.Reserved, b.Scale),
		PendingCredits: money.Format(b.Incoming, b.Scale), Version: b.Version}
}

// pendingTransferView is a two-phase transfer. Its id is the transaction that reserved
// the amount; resolved_by is the one that posted, voided or expired it.
type pendingTransferView struct {
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

type entryView struct {
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

type page[T any] struct {
	Data       []T    `json:"data"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Cursors are opaque to clients: base64url of the last key seen.
func encodeCursor(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func decodeCursor(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 || len(b) > 64 {
		return "", ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", truncate(s))
	}
	return string(b), nil
}

func decodeEntryCursor(s string) (int64, error) {
	key, err := decodeCursor(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(key, 10, 64)
	if err != nil || n <= 0 {
		return 0, ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", truncate(s))
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
