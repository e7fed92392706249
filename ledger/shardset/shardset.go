// Package shardset routes ledger operations to the shard stores that own them. An
// account's shard is chosen when it is created and is carried in its id, so routing
// needs no lookup. A transaction keeps all its accounts on one shard; a transfer (one
// posting) may cross shards, through ledger/crossshard (TransferAcross).
package shardset

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sync"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/crossshard"
	"github.com/tallyhq/tally/ledger/store"
)

// Front is the way to one shard for the hot operations, posting transactions, the steps
// of two-phase and cross-shard transfers, and reading balances: the shard's Store
// directly (one database transaction or query per call), or a batcher in front of it.
type Front interface {
	PostTransaction(ctx context.Context, req store.Request) (ledger.Outcome, error)
	Reserve(ctx context.Context, st store.Step, r store.Reservation) (ledger.Outcome, error)
	crossshard.Writer // resolutions and inbound applications
	ClaimKey(ctx context.Context, c store.Claim) (ledger.Outcome, error)
	Balance(ctx context.Context, id ledger.AccountID) (ledger.Balance, error)
}

// Set is the ledger over all its shards.
type Set struct {
	shards []*store.Store
	fronts []Front
	now    func() time.Time
	driver *crossshard.Driver

	mu     sync.RWMutex
	assets map[string]ledger.Asset     // assets never change once registered, so caching is exact
	owners map[ledger.AccountID]string // nor do accounts' owners (a trigger forbids it)
}

// maxCachedOwners bounds the owner cache: about 10 MB of the accounts users touch most.
const maxCachedOwners = 100_000

// New returns a set over the shards, indexed by shard number. Shard i's transactions are
// posted and its balances read through fronts[i]; with nil fronts, straight to the stores.
func New(shards []*store.Store, fronts []Front, now func() time.Time) (*Set, error) {
	if len(shards) == 0 || len(shards) > ledger.MaxShards {
		return nil, fmt.Errorf("shardset: need 1 to %d shards, got %d", ledger.MaxShards, len(shards))
	}
	if fronts == nil {
		for _, st := range shards {
			fronts = append(fronts, st)
		}
	}
	if len(fronts) != len(shards) {
		return nil, fmt.Errorf("shardset: %d fronts for %d shards", len(fronts), len(shards))
	}
	writers := make([]crossshard.Writer, len(fronts))
	for i, f := range fronts {
		writers[i] = f
	}
	return &Set{shards: shards, fronts: fronts, now: now, driver: crossshard.New(shards, writers, now),
		assets: map[string]ledger.Asset{}, owners: map[ledger.AccountID]string{}}, nil
}

// Shards returns the stores, by shard index.
func (s *Set) Shards() []*store.Store { return s.shards }

func (s *Set) shard(i int) (*store.Store, error) {
	if i < 0 || i >= len(s.shards) {
		// An id naming a shard we do not have is an id we never issued.
		return nil, ledger.Errorf(ledger.CodeAccountNotFound, "shard %d does not exist", i)
	}
	return s.shards[i], nil
}

// Placement is the shard of a new owner: a hash of the owner over every shard, so new
// owners spread over all of them, shards added by scaling included.
func (s *Set) Placement(owner string) int {
	h := fnv.New32a()
	h.Write([]byte(owner))
	return int(h.Sum32() % uint32(len(s.shards)))
}

// KeyHome is the shard where an idempotency key is the caller's: a request that runs on
// another shard claims its key there first (claim), so a key is the caller's across the
// ledger. Every replica with the same shard count agrees on it; after the count changes,
// a key first used before the change may have another home, so a different request
// under a key used before a scale may go unnoticed until the key expires (the same
// request always finds its outcome: that lives on the shard it runs on).
func (s *Set) KeyHome(caller, key string) int {
	h := fnv.New32a()
	h.Write([]byte(caller))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(len(s.shards)))
}

// claim claims the request's key at its home for a request that runs on shard runsOn.
// A refusal with a status (409) is the request's answer; a zero one lets it go on.
//
// A home shard that is unavailable (failing over, say) is passed by: one shard's outage
// must not stop requests on the others, and the claim only guards against a different
// request under the same key, never against applying one request twice (its outcome is
// recorded on the shard it runs on). A key passed by this way is checked on that shard
// alone, as before keys had homes.
func (s *Set) claim(ctx context.Context, caller, key string, hash [32]byte, runsOn int) (refusal ledger.Outcome, err error) {
	home := s.KeyHome(caller, key)
	if home == runsOn {
		return refusal, nil // the shard it runs on records the key in the same transaction
	}
	refusal, err = s.fronts[home].ClaimKey(ctx, store.Claim{Caller: caller, Key: key, Hash: hash, RunsOn: runsOn})
	switch {
	case ctx.Err() == nil && (ledger.CodeOf(err) == ledger.CodeUnavailable || errors.Is(err, context.DeadlineExceeded)):
		return ledger.Outcome{}, nil
	case err != nil:
		return refusal, fmt.Errorf("shardset: claim the idempotency key on shard %d: %w", home, err)
	}
	return refusal, nil
}

// Place picks the shard for a new account of the owner. The caller's choice, if it names
// one (nil: none); else the shard where the owner's accounts already live, so they stay
// together however the shard count has changed (if they are on several, the lowest); a
// new owner gets Placement. A shard that does not answer (failing over, say) cannot say
// whether it holds the owner's accounts: an owner not found on the others still gets
// Placement if that shard answers, so one shard's outage does not stop accounts opening
// on the rest. An owner whose accounts live only on the lost shard may then have one
// elsewhere; transfers between shards keep them usable together.
func (s *Set) Place(ctx context.Context, owner string, named *int) (int, error) {
	if named != nil {
		if *named < 0 || *named >= len(s.shards) {
			return 0, ledger.Errorf(ledger.CodeInvalidRequest, "shard must be 0 to %d: the ledger has %d shards", len(s.shards)-1, len(s.shards))
		}
		return *named, nil
	}
	home := s.Placement(owner)
	var homeErr error
	for i, st := range s.shards {
		found, err := st.AccountsByOwner(ctx, owner, ledger.AccountID{}, 1)
		if err != nil {
			if i == home {
				homeErr = fmt.Errorf("shardset: look up owner on shard %d: %w", i, err)
			}
			continue
		}
		if len(found) > 0 {
			return i, nil
		}
	}
	return home, homeErr
}

// RegisterAsset registers the asset on every shard, each with its own external account.
// created is false when it existed everywhere already; a different scale is a conflict.
func (s *Set) RegisterAsset(ctx context.Context, code string, scale int) (ledger.Asset, bool, error) {
	asset := ledger.Asset{Code: code, Scale: scale, ExternalAccounts: make([]ledger.AccountID, len(s.shards))}
	anyCreated := false
	for i, st := range s.shards {
		extID, err := ledger.NewAccountID(i)
		if err != nil {
			return asset, false, err
		}
		got, ext, created, err := st.RegisterAsset(ctx, code, scale, extID)
		if err != nil {
			return asset, false, fmt.Errorf("shardset: register %s on shard %d: %w", code, i, err)
		}
		if got.Scale != scale {
			return asset, false, ledger.Errorf(ledger.CodeAssetScaleConflict, "asset %s exists with scale %d", code, got.Scale)
		}
		asset.ExternalAccounts[i] = ext
		anyCreated = anyCreated || created
	}
	s.mu.Lock()
	s.assets[code] = asset
	s.mu.Unlock()
	return asset, anyCreated, nil
}

// Asset returns a registered asset. An asset found on some shards but missing on others
// is registered on those first: a shard added by scaling, or one that was down when the
// asset was registered (perhaps by a ledger replica that did not know it yet), gets it
// here, so an asset is usable on every shard as soon as it is usable on one.
func (s *Set) Asset(ctx context.Context, code string) (ledger.Asset, error) {
	s.mu.RLock()
	a, ok := s.assets[code]
	s.mu.RUnlock()
	if ok {
		return a, nil
	}
	a = ledger.Asset{Code: code, Scale: -1, ExternalAccounts: make([]ledger.AccountID, len(s.shards))}
	var missing []int
	unavailable := false
	for i, st := range s.shards {
		got, ext, err := st.Asset(ctx, code)
		switch ledger.CodeOf(err) {
		case ledger.CodeAssetNotFound:
			missing = append(missing, i)
			continue
		case ledger.CodeUnavailable:
			unavailable = true // its external account stays unknown (zero) for now
			continue
		}
		if err != nil {
			return a, err
		}
		if a.Scale >= 0 && got.Scale != a.Scale {
			return a, fmt.Errorf("shardset: asset %s has scale %d on one shard but %d on shard %d", code, a.Scale, got.Scale, i)
		}
		a.Scale, a.ExternalAccounts[i] = got.Scale, ext
	}
	switch {
	case a.Scale < 0 && unavailable:
		return a, ledger.Errorf(ledger.CodeUnavailable, "asset %s cannot be looked up while a shard is unavailable; retry shortly", code)
	case a.Scale < 0:
		return a, ledger.Errorf(ledger.CodeAssetNotFound, "asset %s is not registered", code)
	case unavailable:
		// Usable on the shards that answer; neither cached nor completed until every
		// shard answers, so an unknown external account is looked up again then.
		return a, nil
	}
	if len(missing) > 0 {
		registered, _, err := s.RegisterAsset(ctx, code, a.Scale)
		return registered, err
	}
	s.mu.Lock()
	s.assets[code] = a
	s.mu.Unlock()
	return a, nil
}

// SyncAssets registers every asset found on any shard on every shard that lacks it. The
// service runs it before it serves, so a shard added by scaling has every asset and its
// external account before any request is routed to it.
func (s *Set) SyncAssets(ctx context.Context) error {
	seen := map[string]bool{}
	for i, st := range s.shards {
		codes, err := st.AssetCodes(ctx)
		if err != nil {
			return fmt.Errorf("shardset: list assets of shard %d: %w", i, err)
		}
		for _, code := range codes {
			if seen[code] {
				continue
			}
			seen[code] = true
			if _, err := s.Asset(ctx, code); err != nil {
				return fmt.Errorf("shardset: sync asset %s: %w", code, err)
			}
		}
	}
	return nil
}

// Assets lists the registered assets in code order.
func (s *Set) Assets(ctx context.Context) ([]ledger.Asset, error) {
	var codes []string
	for _, st := range s.shards {
		got, err := st.AssetCodes(ctx)
		if err != nil {
			return nil, err
		}
		codes = append(codes, got...)
	}
	slices.Sort(codes)
	codes = slices.Compact(codes)
	assets := make([]ledger.Asset, 0, len(codes))
	for _, code := range codes {
		a, err := s.Asset(ctx, code)
		if err != nil {
			return nil, err
		}
		assets = append(assets, a)
	}
	return assets, nil
}

// CreateAccount opens a standard account on the shard Place picks.
func (s *Set) CreateAccount(ctx context.Context, a ledger.Account, shard *int) (ledger.Account, error) {
	at, err := s.Place(ctx, a.Owner, shard)
	if err != nil {
		return a, err
	}
	id, err := ledger.NewAccountID(at)
	if err != nil {
		return a, err
	}
	a.ID = id
	return s.shards[at].CreateAccount(ctx, a)
}

// Account reads one account.
func (s *Set) Account(ctx context.Context, id ledger.AccountID) (ledger.Account, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return ledger.Account{}, err
	}
	return st.Account(ctx, id)
}

// Owner returns an account's owner: what authorizing a user's request asks of every
// account it names, so it is cached (owners never change).
func (s *Set) Owner(ctx context.Context, id ledger.AccountID) (string, error) {
	s.mu.RLock()
	owner, ok := s.owners[id]
	s.mu.RUnlock()
	if ok {
		return owner, nil
	}
	acc, err := s.Account(ctx, id)
	if err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.owners) >= maxCachedOwners {
		for k := range s.owners { // map order is random: a random entry makes room
			delete(s.owners, k)
			break
		}
	}
	s.owners[id] = acc.Owner
	return acc.Owner, nil
}

// AccountsByOwner lists an owner's accounts in id order after the given id, from every
// shard (an owner's accounts normally share one, but placement may change as shards are
// added).
func (s *Set) AccountsByOwner(ctx context.Context, owner string, after ledger.AccountID, limit int) ([]ledger.Account, error) {
	var all []ledger.Account
	for _, st := range s.shards {
		got, err := st.AccountsByOwner(ctx, owner, after, limit)
		if err != nil {
			return nil, err
		}
		all = append(all, got...)
	}
	slices.SortFunc(all, func(a, b ledger.Account) int { return cmp.Compare(a.ID.String(), b.ID.String()) })
	if len(all) > limit {
		all = all[:limit]
	}
	return all, nil
}

// SetStatus freezes, unfreezes or closes an account.
func (s *Set) SetStatus(ctx context.Context, id ledger.AccountID, status ledger.Status) (ledger.Account, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return ledger.Account{}, err
	}
	return st.SetStatus(ctx, id, status)
}

// Balance reads an account's balance from its shard's primary.
func (s *Set) Balance(ctx context.Context, id ledger.AccountID) (ledger.Balance, error) {
	if _, err := s.shard(id.Shard()); err != nil {
		return ledger.Balance{}, err
	}
	return s.fronts[id.Shard()].Balance(ctx, id)
}

// BalanceAt is an account's posted balance counting the transactions made at or before at
// (store.BalanceAt).
func (s *Set) BalanceAt(ctx context.Context, id ledger.AccountID, at time.Time) (int64, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return 0, err
	}
	return st.BalanceAt(ctx, id, at)
}

// Horizon is the shard's retention horizon: history before it is archived (ok false:
// none is).
func (s *Set) Horizon(ctx context.Context, shard int) (time.Time, bool, error) {
	st, err := s.shard(shard)
	if err != nil {
		return time.Time{}, false, err
	}
	return st.Horizon(ctx)
}

// Entries lists an account's entries newest first, below the given entry id.
func (s *Set) Entries(ctx context.Context, id ledger.AccountID, before int64, limit int) ([]ledger.Entry, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return nil, err
	}
	return st.Entries(ctx, id, before, limit)
}

// EntryMarks is where a follower of the account's entries starts (store.EntryMarks).
func (s *Set) EntryMarks(ctx context.Context, id ledger.AccountID) (map[int]int64, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return nil, err
	}
	return st.EntryMarks(ctx, id)
}

// EntriesAfter lists the account's entries after marks (store.EntriesAfter).
func (s *Set) EntriesAfter(ctx context.Context, id ledger.AccountID, marks map[int]int64, limit int) ([]ledger.Entry, error) {
	st, err := s.shard(id.Shard())
	if err != nil {
		return nil, err
	}
	return st.EntriesAfter(ctx, id, marks, limit)
}

// Transaction reads one transaction.
func (s *Set) Transaction(ctx context.Context, id ledger.TransactionID) (ledger.Transaction, error) {
	if id.Shard() >= len(s.shards) {
		return ledger.Transaction{}, ledger.Errorf(ledger.CodeTransactionNotFound, "transaction %s does not exist", id)
	}
	return s.shards[id.Shard()].Transaction(ctx, id)
}

// Account refers to an account in a request: a concrete id, or the asset's external
// account on the transaction's shard.
type Account struct {
	ID       ledger.AccountID
	External bool
}

// PostingRequest is one posting as a caller asked for it.
type PostingRequest struct {
	From, To Account
	Amount   int64
	Asset    string
}

// TransactionRequest is an idempotent request to post a transaction.
type TransactionRequest struct {
	Caller   string
	Key      string
	Hash     [32]byte
	Postings []PostingRequest
	Metadata json.RawMessage
}

// Render turns the transaction about to be posted into the success response body.
type Render func(context.Context, ledger.Transaction) ([]byte, error)

// Post resolves the request to one shard and posts it there. This is the transfer path:
// every transfer and transaction goes through here, then a shard's batcher, then tally.post_batch.
func (s *Set) Post(ctx context.Context, req TransactionRequest, render Render) (ledger.Outcome, error) {
	shard := -1
	for _, p := range req.Postings {
		for _, a := range []Account{p.From, p.To} {
			if a.External {
				continue
			}
			if shard >= 0 && a.ID.Shard() != shard {
				return ledger.Outcome{}, ledger.Errorf(ledger.CodeCrossShardNotSupported,
					"accounts on shards %d and %d cannot be in one transaction: the postings of a transaction share a shard "+
						"(a transfer, one posting, may cross shards)", shard, a.ID.Shard())
			}
			shard = a.ID.Shard()
		}
	}
	if shard < 0 {
		return ledger.Outcome{}, ledger.Errorf(ledger.CodeInvalidRequest, "a transaction needs at least one account that is not external")
	}
	if _, err := s.shard(shard); err != nil {
		return ledger.Outcome{}, err
	}
	txID, err := ledger.NewTransactionID(shard)
	if err != nil {
		return ledger.Outcome{}, err
	}
	// The service's clock, not the database's: the response is rendered before the one
	// round trip, so its time must be known before the write (a replay renders the
	// journal's copy of it the same way). It is when the request was accepted; the
	// journal's order comes from the database's entry sequence, never from this time, so
	// replicas whose clocks differ by the milliseconds NTP allows cannot reorder it.
	tx := ledger.Transaction{ID: txID, Metadata: req.Metadata, CreatedAt: s.now().UTC().Truncate(time.Microsecond)}
	for _, p := range req.Postings {
		from, err := s.resolve(ctx, p.From, p.Asset, shard)
		if err != nil {
			return ledger.Outcome{}, err
		}
		to, err := s.resolve(ctx, p.To, p.Asset, shard)
		if err != nil {
			return ledger.Outcome{}, err
		}
		tx.Postings = append(tx.Postings, ledger.Posting{From: from, To: to, Amount: p.Amount, Asset: p.Asset})
	}
	body, err := render(ctx, tx)
	if err != nil {
		return ledger.Outcome{}, fmt.Errorf("shardset: render response: %w", err)
	}
	if refusal, err := s.claim(ctx, req.Caller, req.Key, req.Hash, shard); err != nil || refusal.Status != 0 {
		return refusal, err
	}
	out, err := s.fronts[shard].PostTransaction(ctx, store.Request{Caller: req.Caller, Key: req.Key, Hash: req.Hash, Transaction: tx, Body: body})
	if err != nil || out.Body != nil {
		return out, err
	}
	// A replay whose record keeps the transaction, not the response: the same rendering
	// of the same journal rows answers the same bytes.
	first, err := s.shards[shard].Transaction(ctx, out.ReplayOf)
	if err != nil {
		return ledger.Outcome{}, fmt.Errorf("shardset: replay %s: %w", out.ReplayOf, err)
	}
	if out.Body, err = render(ctx, first); err != nil {
		return ledger.Outcome{}, fmt.Errorf("shardset: render replay: %w", err)
	}
	return out, nil
}

func (s *Set) resolve(ctx context.Context, a Account, asset string, shard int) (ledger.AccountID, error) {
	if !a.External {
		return a.ID, nil
	}
	as, err := s.Asset(ctx, asset)
	if err != nil {
		return ledger.AccountID{}, err
	}
	if as.ExternalAccounts[shard] == (ledger.AccountID{}) {
		return ledger.AccountID{}, ledger.Errorf(ledger.CodeUnavailable, "shard %d is unavailable; retry shortly", shard)
	}
	return as.ExternalAccounts[shard], nil
}
