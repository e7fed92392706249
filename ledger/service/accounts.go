package service

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/metadata"
	"github.com/tallyhq/tally/ledger/money"
)

// RegisterAsset registers an asset, or answers the one registered with that code and
// scale (200 rather than 201).
func (s *Service) RegisterAsset(ctx context.Context, c auth.Caller, code string, scale *int) (Answer, error) {
	if !validAssetCode(code) {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "code %q must be 2 to 16 characters of A-Z, 0-9 and _, starting with a letter", Truncate(code))
	}
	if scale == nil || *scale < 0 || *scale > money.MaxScale {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "scale must be a whole number from 0 to %d", money.MaxScale)
	}
	asset, created, err := s.set.RegisterAsset(ctx, code, *scale)
	if err != nil {
		return Answer{}, err
	}
	v, err := document.AssetOf(asset)
	if err != nil {
		return Answer{}, err
	}
	if created {
		return answer(http.StatusCreated, v)
	}
	return ok(v)
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

// ListAssets lists every asset (one page: there are few).
func (s *Service) ListAssets(ctx context.Context, c auth.Caller) (Answer, error) {
	assets, err := s.set.Assets(ctx)
	if err != nil {
		return Answer{}, err
	}
	views := make([]document.Asset, 0, len(assets))
	for _, as := range assets {
		v, err := document.AssetOf(as)
		if err != nil {
			return Answer{}, err
		}
		views = append(views, v)
	}
	return ok(document.Page[document.Asset]{Data: views})
}

// GetAsset answers one asset.
func (s *Service) GetAsset(ctx context.Context, c auth.Caller, code string) (Answer, error) {
	if !validAssetCode(code) {
		return Answer{}, ledger.Errorf(ledger.CodeAssetNotFound, "asset %s is not registered", Truncate(code))
	}
	asset, err := s.set.Asset(ctx, code)
	if err != nil {
		return Answer{}, err
	}
	v, err := document.AssetOf(asset)
	if err != nil {
		return Answer{}, err
	}
	return ok(v)
}

// NewAccount is what CreateAccount opens.
type NewAccount struct {
	Owner        string
	Asset        string
	BalanceFloor *string // zero or below, in the asset's units; nil: zero
	BalanceSlots *int    // nil: one
	Metadata     json.RawMessage
	// Shard places the account on that shard; nil puts it where the owner's accounts are
	// (shardset.Place).
	Shard *int
}

// CreateAccount opens an account: a user's for itself only, without an overdraft.
func (s *Service) CreateAccount(ctx context.Context, c auth.Caller, req NewAccount) (Answer, error) {
	if err := validOwner(req.Owner); err != nil {
		return Answer{}, err
	}
	if !owns(c, req.Owner) {
		return Answer{}, ledger.Errorf(ledger.CodeForbidden, "a user opens accounts for itself only: owner must be %q", c.Owner)
	}
	asset, err := s.asset(ctx, req.Asset)
	if err != nil {
		return Answer{}, err
	}
	floor := int64(0)
	if req.BalanceFloor != nil {
		floor, err = money.Parse(*req.BalanceFloor, asset.Scale)
		if err != nil {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidAmount, "balance_floor: %v", err)
		}
		if floor > 0 || floor == ledger.NoFloor {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidAmount, "balance_floor must be zero or negative, and above the smallest amount")
		}
		if floor < 0 && !c.Operates() {
			return Answer{}, ledger.Errorf(ledger.CodeForbidden, "an overdraft (balance_floor below zero) needs the operator role")
		}
	}
	slots := 1
	if req.BalanceSlots != nil {
		slots = *req.BalanceSlots
		if slots < 1 || slots > ledger.MaxBalanceSlots {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "balance_slots must be 1 to %d", ledger.MaxBalanceSlots)
		}
		if slots > 1 && floor != 0 {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "an account with more than one balance slot cannot have a balance_floor below zero")
		}
	}
	meta, err := metadata.Canonical(req.Metadata)
	if err != nil {
		return Answer{}, err
	}
	acc, err := s.set.CreateAccount(ctx, ledger.Account{Owner: req.Owner, Asset: asset.Code, BalanceFloor: floor, BalanceSlots: slots, Metadata: meta}, req.Shard)
	if err != nil {
		return Answer{}, err
	}
	return accountAnswer(http.StatusCreated, acc)
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

func (s *Service) asset(ctx context.Context, code string) (ledger.Asset, error) {
	if !validAssetCode(code) {
		return ledger.Asset{}, ledger.Errorf(ledger.CodeInvalidRequest, "asset %q is not a valid asset code", Truncate(code))
	}
	return s.set.Asset(ctx, code)
}

func accountAnswer(status int, acc ledger.Account) (Answer, error) {
	v, err := document.AccountOf(acc)
	if err != nil {
		return Answer{}, err
	}
	return answer(status, v)
}

// ListAccounts lists an owner's accounts (a user: its own; owner "" is the caller's),
// limit (0: the default) at a time after the cursor.
func (s *Service) ListAccounts(ctx context.Context, c auth.Caller, owner string, limit int, cursor string) (Answer, error) {
	if owner == "" && !c.Operates() {
		owner = c.Owner
	}
	if owner == "" {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "owner is required")
	}
	if err := validOwnerText(owner); err != nil {
		return Answer{}, err
	}
	if !owns(c, owner) {
		return Answer{}, ledger.Errorf(ledger.CodeForbidden, "a user lists its own accounts only: owner must be %q or left out", c.Owner)
	}
	limit, err := pageSize(limit)
	if err != nil {
		return Answer{}, err
	}
	var after ledger.AccountID
	if cursor != "" {
		key, err := decodeCursor(cursor)
		if err == nil {
			after, err = ledger.ParseAccountID(key)
		}
		if err != nil {
			return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", Truncate(cursor))
		}
	}
	accounts, err := s.set.AccountsByOwner(ctx, owner, after, limit+1)
	if err != nil {
		return Answer{}, err
	}
	var p document.Page[document.Account]
	if len(accounts) > limit {
		accounts = accounts[:limit]
		p.NextCursor = encodeCursor(accounts[limit-1].ID.String())
	}
	p.Data = make([]document.Account, 0, len(accounts))
	for _, acc := range accounts {
		v, err := document.AccountOf(acc)
		if err != nil {
			return Answer{}, err
		}
		p.Data = append(p.Data, v)
	}
	return ok(p)
}

// InvalidPageSize stands for a page size that is not a whole number: pageSize refuses
// it as it refuses one out of range.
const InvalidPageSize = -1

func pageSize(n int) (int, error) {
	if n == 0 {
		return DefaultPageSize, nil
	}
	if n < 1 || n > MaxPageSize {
		return 0, ledger.Errorf(ledger.CodeInvalidRequest, "limit must be a whole number from 1 to %d", MaxPageSize)
	}
	return n, nil
}

// Cursors are opaque to clients: base64url of the last key seen.
func encodeCursor(key string) string { return base64.RawURLEncoding.EncodeToString([]byte(key)) }

func decodeCursor(s string) (string, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) == 0 || len(b) > 64 {
		return "", ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", Truncate(s))
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
		return 0, ledger.Errorf(ledger.CodeInvalidRequest, "cursor %q is not one this API issued", Truncate(s))
	}
	return n, nil
}

// Truncate shortens what a caller sent for quoting in an error.
func Truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

func accountID(s string) (ledger.AccountID, error) {
	id, err := ledger.ParseAccountID(s)
	if err != nil {
		return id, ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	return id, nil
}

func transactionID(s string) (ledger.TransactionID, error) {
	id, err := ledger.ParseTransactionID(s)
	if err != nil {
		return id, ledger.Errorf(ledger.CodeInvalidID, "%v", err)
	}
	return id, nil
}

// GetAccount answers an account (a user: its own).
func (s *Service) GetAccount(ctx context.Context, c auth.Caller, id string) (Answer, error) {
	aid, err := accountID(id)
	if err != nil {
		return Answer{}, err
	}
	acc, err := s.set.Account(ctx, aid)
	if err != nil {
		return Answer{}, err
	}
	if !owns(c, acc.Owner) {
		return Answer{}, ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", aid)
	}
	return accountAnswer(http.StatusOK, acc)
}

// SetStatus freezes, unfreezes or closes an account.
func (s *Service) SetStatus(ctx context.Context, c auth.Caller, id string, status ledger.Status) (Answer, error) {
	aid, err := accountID(id)
	if err != nil {
		return Answer{}, err
	}
	acc, err := s.set.SetStatus(ctx, aid, status)
	if err != nil {
		return Answer{}, err
	}
	return accountAnswer(http.StatusOK, acc)
}

// GetBalance answers an account's balance (a user: its own).
func (s *Service) GetBalance(ctx context.Context, c auth.Caller, id string) (Answer, error) {
	aid, err := accountID(id)
	if err != nil {
		return Answer{}, err
	}
	if err := s.mayUse(ctx, c, aid); err != nil {
		return Answer{}, err
	}
	b, err := s.set.Balance(ctx, aid)
	if err != nil {
		return Answer{}, err
	}
	return ok(document.BalanceOf(b))
}

// GetBalanceAt answers an account's posted balance as of at, an RFC 3339 time (a user:
// its own account's).
func (s *Service) GetBalanceAt(ctx context.Context, c auth.Caller, id, at string) (Answer, error) {
	aid, err := accountID(id)
	if err != nil {
		return Answer{}, err
	}
	when, err := time.Parse(time.RFC3339Nano, at)
	if err != nil {
		return Answer{}, ledger.Errorf(ledger.CodeInvalidRequest, "at must be an RFC 3339 time such as 2026-12-01T00:00:00Z")
	}
	if err := s.mayUse(ctx, c, aid); err != nil {
		return Answer{}, err
	}
	acc, err := s.set.Account(ctx, aid)
	if err != nil {
		return Answer{}, err
	}
	posted, err := s.set.BalanceAt(ctx, aid, when)
	if err != nil {
		return Answer{}, err
	}
	return ok(document.BalanceAt{AccountID: aid, Asset: acc.Asset, Balance: money.Format(posted, acc.Scale), At: when.UTC()})
}

// ListEntries lists an account's entries, newest first, limit (0: the default) at a
// time after the cursor (a user: its own account's).
func (s *Service) ListEntries(ctx context.Context, c auth.Caller, id string, limit int, cursor string) (Answer, error) {
	aid, err := accountID(id)
	if err != nil {
		return Answer{}, err
	}
	if err := s.mayUse(ctx, c, aid); err != nil {
		return Answer{}, err
	}
	limit, err = pageSize(limit)
	if err != nil {
		return Answer{}, err
	}
	var before int64
	if cursor != "" {
		if before, err = decodeEntryCursor(cursor); err != nil {
			return Answer{}, err
		}
	}
	entries, err := s.set.Entries(ctx, aid, before, limit+1)
	if err != nil {
		return Answer{}, err
	}
	var p document.Page[document.Entry]
	if len(entries) > limit {
		entries = entries[:limit]
		p.NextCursor = encodeCursor(strconv.FormatInt(entries[limit-1].ID, 10))
	}
	p.Data = make([]document.Entry, 0, len(entries))
	for _, e := range entries {
		asset, err := s.set.Asset(ctx, e.Asset)
		if err != nil {
			return Answer{}, err
		}
		p.Data = append(p.Data, document.EntryOf(e, asset.Scale))
	}
	if p.NextCursor == "" {
		horizon, archived, err := s.set.Horizon(ctx, aid.Shard())
		if err != nil {
			return Answer{}, err
		}
		if archived {
			h := horizon.UTC()
			p.ArchivedBefore = &h
		}
	}
	return ok(p)
}
