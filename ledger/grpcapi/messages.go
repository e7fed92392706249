package grpcapi

import (
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/document"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/service"
)

// documentOf reads an operation's answer as the document it carries: the messages are
// made from the very bytes the HTTP API sends (and an idempotent replay recorded), so
// both APIs answer the same.
func documentOf[T any](ans service.Answer, err error) (T, error) {
	var doc T
	if err != nil {
		return doc, err
	}
	if ans.Refused() {
		return doc, refusal(ans)
	}
	if err := json.Unmarshal(ans.Body, &doc); err != nil {
		return doc, fmt.Errorf("grpcapi: read the answer (HTTP status %d): %w", ans.Status, err)
	}
	return doc, nil
}

// rawMetadata is a request's metadata as the operations take it: empty is none.
func rawMetadata(s string) json.RawMessage {
	if s == "" {
		return nil
	}
	return json.RawMessage(s)
}

func timestamp(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func optionalTime(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func optionalID[T ledger.TransactionID | ledger.AccountID](id *T) string {
	if id == nil {
		return ""
	}
	return fmt.Sprint(*id)
}

func assetMessage(v document.Asset) *ledgerv1.Asset {
	m := &ledgerv1.Asset{Code: v.Code, Scale: int32(v.Scale)}
	for _, id := range v.ExternalAccounts {
		m.ExternalAccounts = append(m.ExternalAccounts, id.String())
	}
	return m
}

func accountMessage(v document.Account) *ledgerv1.Account {
	return &ledgerv1.Account{Id: v.ID.String(), Kind: string(v.Kind), Owner: v.Owner, Asset: v.Asset, Scale: int32(v.Scale),
		Status: string(v.Status), BalanceFloor: v.BalanceFloor, BalanceSlots: int32(v.BalanceSlots), Metadata: string(v.Metadata),
		CreatedAt: timestamp(v.CreatedAt)}
}

func balanceMessage(v document.Balance) *ledgerv1.Balance {
	return &ledgerv1.Balance{AccountId: v.AccountID.String(), Asset: v.Asset, Balance: v.Balance, Available: v.Available,
		PendingDebits: v.PendingDebits, PendingCredits: v.PendingCredits, Version: v.Version}
}

func entryMessage(v document.Entry) *ledgerv1.Entry {
	return &ledgerv1.Entry{Id: v.ID, TransactionId: v.TransactionID.String(), Posting: int32(v.Posting), AccountId: v.AccountID.String(),
		Asset: v.Asset, Amount: v.Amount, BalanceAfter: v.BalanceAfter, Slot: int32(v.Slot), CreatedAt: timestamp(v.CreatedAt)}
}

func transactionMessage(v document.Transaction) *ledgerv1.Transaction {
	m := &ledgerv1.Transaction{Id: v.ID.String(), Reverses: optionalID(v.Reverses), Metadata: string(v.Metadata), CreatedAt: timestamp(v.CreatedAt)}
	for _, p := range v.Postings {
		m.Postings = append(m.Postings, &ledgerv1.Posting{FromAccount: p.FromAccount.String(), ToAccount: p.ToAccount.String(), Amount: p.Amount, Asset: p.Asset})
	}
	return m
}

func pendingTransferMessage(v document.PendingTransfer) *ledgerv1.PendingTransfer {
	return &ledgerv1.PendingTransfer{Id: v.ID.String(), FromAccount: v.FromAccount.String(), ToAccount: v.ToAccount.String(),
		Amount: v.Amount, Asset: v.Asset, State: string(v.State), PostedAmount: v.PostedAmount, ExpiresAt: optionalTime(v.ExpiresAt),
		ResolvedBy: optionalID(v.ResolvedBy), ResolvedAt: optionalTime(v.ResolvedAt), Metadata: string(v.Metadata), CreatedAt: timestamp(v.CreatedAt)}
}

func optionalInt(v *int32) *int {
	if v == nil {
		return nil
	}
	n := int(*v)
	return &n
}
