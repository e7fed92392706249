package grpcapi

import (
	"context"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/service"
)

// RegisterAsset registers an asset.
func (a *API) RegisterAsset(ctx context.Context, req *ledgerv1.RegisterAssetRequest) (*ledgerv1.RegisterAssetResponse, error) {
	ans, err := a.svc.RegisterAsset(ctx, callerOf(ctx), req.Code, optionalInt(req.Scale))
	v, err := documentOf[document.Asset](ans, err)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.RegisterAssetResponse{Asset: assetMessage(v), Created: ans.Status == http.StatusCreated}, nil
}

// ListAssets lists every asset.
func (a *API) ListAssets(ctx context.Context, _ *ledgerv1.ListAssetsRequest) (*ledgerv1.ListAssetsResponse, error) {
	v, err := documentOf[document.Page[document.Asset]](a.svc.ListAssets(ctx, callerOf(ctx)))
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.ListAssetsResponse{}
	for _, as := range v.Data {
		out.Assets = append(out.Assets, assetMessage(as))
	}
	return out, nil
}

// GetAsset answers one asset.
func (a *API) GetAsset(ctx context.Context, req *ledgerv1.GetAssetRequest) (*ledgerv1.GetAssetResponse, error) {
	v, err := documentOf[document.Asset](a.svc.GetAsset(ctx, callerOf(ctx), req.Code))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.GetAssetResponse{Asset: assetMessage(v)}, nil
}

// CreateAccount opens an account.
func (a *API) CreateAccount(ctx context.Context, req *ledgerv1.CreateAccountRequest) (*ledgerv1.CreateAccountResponse, error) {
	v, err := documentOf[document.Account](a.svc.CreateAccount(ctx, callerOf(ctx), service.NewAccount{Owner: req.Owner, Asset: req.Asset,
		BalanceFloor: req.BalanceFloor, BalanceSlots: optionalInt(req.BalanceSlots), Metadata: rawMetadata(req.Metadata), Shard: optionalInt(req.Shard)}))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.CreateAccountResponse{Account: accountMessage(v)}, nil
}

// ListAccounts lists an owner's accounts.
func (a *API) ListAccounts(ctx context.Context, req *ledgerv1.ListAccountsRequest) (*ledgerv1.ListAccountsResponse, error) {
	v, err := documentOf[document.Page[document.Account]](a.svc.ListAccounts(ctx, callerOf(ctx), req.Owner, pageSize(req.PageSize), req.PageToken))
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.ListAccountsResponse{NextPageToken: v.NextCursor}
	for _, acc := range v.Data {
		out.Accounts = append(out.Accounts, accountMessage(acc))
	}
	return out, nil
}

// pageSize is a request's page size as the operations take it (0: the default; below
// zero, refused).
func pageSize(n int32) int {
	if n < 0 {
		return service.InvalidPageSize
	}
	return int(n)
}

// GetAccount answers an account.
func (a *API) GetAccount(ctx context.Context, req *ledgerv1.GetAccountRequest) (*ledgerv1.GetAccountResponse, error) {
	v, err := documentOf[document.Account](a.svc.GetAccount(ctx, callerOf(ctx), req.Id))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.GetAccountResponse{Account: accountMessage(v)}, nil
}

func (a *API) setStatus(ctx context.Context, id string, st ledger.Status) (*ledgerv1.Account, error) {
	v, err := documentOf[document.Account](a.svc.SetStatus(ctx, callerOf(ctx), id, st))
	if err != nil {
		return nil, err
	}
	return accountMessage(v), nil
}

// FreezeAccount freezes an account.
func (a *API) FreezeAccount(ctx context.Context, req *ledgerv1.FreezeAccountRequest) (*ledgerv1.FreezeAccountResponse, error) {
	acc, err := a.setStatus(ctx, req.Id, ledger.StatusFrozen)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.FreezeAccountResponse{Account: acc}, nil
}

// UnfreezeAccount makes a frozen account active again.
func (a *API) UnfreezeAccount(ctx context.Context, req *ledgerv1.UnfreezeAccountRequest) (*ledgerv1.UnfreezeAccountResponse, error) {
	acc, err := a.setStatus(ctx, req.Id, ledger.StatusActive)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.UnfreezeAccountResponse{Account: acc}, nil
}

// CloseAccount closes an account.
func (a *API) CloseAccount(ctx context.Context, req *ledgerv1.CloseAccountRequest) (*ledgerv1.CloseAccountResponse, error) {
	acc, err := a.setStatus(ctx, req.Id, ledger.StatusClosed)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.CloseAccountResponse{Account: acc}, nil
}

// GetBalance answers an account's balance.
func (a *API) GetBalance(ctx context.Context, req *ledgerv1.GetBalanceRequest) (*ledgerv1.GetBalanceResponse, error) {
	if req.At != nil {
		v, err := documentOf[document.BalanceAt](a.svc.GetBalanceAt(ctx, callerOf(ctx), req.AccountId, req.At.AsTime().Format(time.RFC3339Nano)))
		if err != nil {
			return nil, err
		}
		return &ledgerv1.GetBalanceResponse{BalanceAt: &ledgerv1.BalanceAt{AccountId: v.AccountID.String(), Asset: v.Asset,
			Balance: v.Balance, At: timestamp(v.At)}}, nil
	}
	v, err := documentOf[document.Balance](a.svc.GetBalance(ctx, callerOf(ctx), req.AccountId))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.GetBalanceResponse{Balance: balanceMessage(v)}, nil
}

// ListEntries lists an account's entries, newest first.
func (a *API) ListEntries(ctx context.Context, req *ledgerv1.ListEntriesRequest) (*ledgerv1.ListEntriesResponse, error) {
	v, err := documentOf[document.Page[document.Entry]](a.svc.ListEntries(ctx, callerOf(ctx), req.AccountId, pageSize(req.PageSize), req.PageToken))
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.ListEntriesResponse{NextPageToken: v.NextCursor}
	if v.ArchivedBefore != nil {
		out.ArchivedBefore = timestamp(*v.ArchivedBefore)
	}
	for _, e := range v.Data {
		out.Entries = append(out.Entries, entryMessage(e))
	}
	return out, nil
}

// Transfer moves money between two accounts.
func (a *API) Transfer(ctx context.Context, req *ledgerv1.TransferRequest) (*ledgerv1.TransferResponse, error) {
	ans, err := a.svc.Transfer(ctx, callerOf(ctx), req.IdempotencyKey, service.Transfer{
		Posting:  service.Posting{FromAccount: req.FromAccount, ToAccount: req.ToAccount, Amount: req.Amount, Asset: req.Asset},
		Metadata: rawMetadata(req.Metadata), Pending: req.Pending, TimeoutSeconds: req.TimeoutSeconds})
	// One read of either document a transfer answers with: a pending transfer (reserved,
	// or between shards) has a state, a transaction has not.
	doc, err := documentOf[struct {
		document.PendingTransfer
		Postings []document.Posting    `json:"postings"`
		Reverses *ledger.TransactionID `json:"reverses"`
	}](ans, err)
	if err != nil {
		return nil, err
	}
	out := &ledgerv1.TransferResponse{Replayed: ans.Replayed, InFlight: ans.Status == http.StatusAccepted}
	if doc.State != "" {
		out.Result = &ledgerv1.TransferResponse_PendingTransfer{PendingTransfer: pendingTransferMessage(doc.PendingTransfer)}
	} else {
		out.Result = &ledgerv1.TransferResponse_Transaction{Transaction: transactionMessage(document.Transaction{
			ID: doc.ID, Postings: doc.Postings, Reverses: doc.Reverses, Metadata: doc.Metadata, CreatedAt: doc.CreatedAt})}
	}
	return out, nil
}

// PostTransaction posts several postings at once.
func (a *API) PostTransaction(ctx context.Context, req *ledgerv1.PostTransactionRequest) (*ledgerv1.PostTransactionResponse, error) {
	postings := make([]service.Posting, len(req.Postings))
	for i, p := range req.Postings {
		postings[i] = service.Posting{FromAccount: p.FromAccount, ToAccount: p.ToAccount, Amount: p.Amount, Asset: p.Asset}
	}
	ans, err := a.svc.PostTransaction(ctx, callerOf(ctx), req.IdempotencyKey, postings, rawMetadata(req.Metadata))
	v, err := documentOf[document.Transaction](ans, err)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.PostTransactionResponse{Transaction: transactionMessage(v), Replayed: ans.Replayed}, nil
}

// GetTransaction answers a transaction.
func (a *API) GetTransaction(ctx context.Context, req *ledgerv1.GetTransactionRequest) (*ledgerv1.GetTransactionResponse, error) {
	v, err := documentOf[document.Transaction](a.svc.GetTransaction(ctx, callerOf(ctx), req.Id))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.GetTransactionResponse{Transaction: transactionMessage(v)}, nil
}

// ReverseTransaction posts a transaction's reversal.
func (a *API) ReverseTransaction(ctx context.Context, req *ledgerv1.ReverseTransactionRequest) (*ledgerv1.ReverseTransactionResponse, error) {
	ans, err := a.svc.ReverseTransaction(ctx, callerOf(ctx), req.IdempotencyKey, req.Id, rawMetadata(req.Metadata))
	v, err := documentOf[document.Transaction](ans, err)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.ReverseTransactionResponse{Transaction: transactionMessage(v), Replayed: ans.Replayed}, nil
}

// GetPendingTransfer answers a pending transfer as it stands.
func (a *API) GetPendingTransfer(ctx context.Context, req *ledgerv1.GetPendingTransferRequest) (*ledgerv1.GetPendingTransferResponse, error) {
	v, err := documentOf[document.PendingTransfer](a.svc.GetPendingTransfer(ctx, callerOf(ctx), req.Id))
	if err != nil {
		return nil, err
	}
	return &ledgerv1.GetPendingTransferResponse{PendingTransfer: pendingTransferMessage(v)}, nil
}

// PostPendingTransfer posts a pending transfer.
func (a *API) PostPendingTransfer(ctx context.Context, req *ledgerv1.PostPendingTransferRequest) (*ledgerv1.PostPendingTransferResponse, error) {
	ans, err := a.svc.ResolvePending(ctx, callerOf(ctx), req.IdempotencyKey, req.Id, ledger.ResolvePost, req.Amount, rawMetadata(req.Metadata))
	v, err := documentOf[document.PendingTransfer](ans, err)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.PostPendingTransferResponse{PendingTransfer: pendingTransferMessage(v), Replayed: ans.Replayed}, nil
}

// VoidPendingTransfer voids a pending transfer.
func (a *API) VoidPendingTransfer(ctx context.Context, req *ledgerv1.VoidPendingTransferRequest) (*ledgerv1.VoidPendingTransferResponse, error) {
	ans, err := a.svc.ResolvePending(ctx, callerOf(ctx), req.IdempotencyKey, req.Id, ledger.ResolveVoid, "", rawMetadata(req.Metadata))
	v, err := documentOf[document.PendingTransfer](ans, err)
	if err != nil {
		return nil, err
	}
	return &ledgerv1.VoidPendingTransferResponse{PendingTransfer: pendingTransferMessage(v), Replayed: ans.Replayed}, nil
}

// FollowEntries streams an account's entries as they are posted.
func (a *API) FollowEntries(req *ledgerv1.FollowEntriesRequest, stream ledgerv1.LedgerService_FollowEntriesServer) error {
	ctx := stream.Context()
	return a.svc.FollowEntries(ctx, callerOf(ctx), req.AccountId, req.AfterEntryId, req.ResumeToken, func(e document.Entry, token string) error {
		return stream.Send(&ledgerv1.FollowEntriesResponse{Entry: entryMessage(e), ResumeToken: token})
	})
}
