package service

import (
	"context"
	"strings"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/shardset"
)

// owns reports whether the caller may use an account of that owner. The ledger's own
// accounts (owners starting "tally:") belong to no caller, whatever its subject says.
func owns(c auth.Caller, owner string) bool {
	return c.Operates() || owner == c.Owner && !strings.HasPrefix(owner, "tally:")
}

// mayUse answers account_not_found unless the caller may use the account.
func (s *Service) mayUse(ctx context.Context, c auth.Caller, id ledger.AccountID) error {
	ok, err := s.ownsAccount(ctx, c, id)
	if err == nil && !ok {
		err = ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
	}
	return err
}

// ownsAccount reports whether the caller may use the account; one that does not exist
// it does not own.
func (s *Service) ownsAccount(ctx context.Context, c auth.Caller, id ledger.AccountID) (bool, error) {
	if c.Operates() {
		return true, nil
	}
	owner, err := s.set.Owner(ctx, id)
	if ledger.CodeOf(err) == ledger.CodeAccountNotFound {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return owns(c, owner), nil
}

// mayMove checks that the caller may move money along the postings: a user only
// between accounts it owns, never through an external account.
func (s *Service) mayMove(ctx context.Context, c auth.Caller, postings []shardset.PostingRequest) error {
	if c.Operates() {
		return nil
	}
	for i, p := range postings {
		for _, acc := range []shardset.Account{p.From, p.To} {
			if acc.External {
				return prefixPosting(i, ledger.Errorf(ledger.CodeForbidden, "deposits and withdrawals (the external account) need the operator role"))
			}
			if err := s.mayUse(ctx, c, acc.ID); err != nil {
				return prefixPosting(i, err)
			}
		}
	}
	return nil
}

// maySeeTransaction answers transaction_not_found unless the caller owns one of the
// transaction's accounts.
func (s *Service) maySeeTransaction(ctx context.Context, c auth.Caller, tx ledger.Transaction) error {
	if c.Operates() {
		return nil
	}
	for _, p := range tx.Postings {
		for _, id := range []ledger.AccountID{p.From, p.To} {
			if ok, err := s.ownsAccount(ctx, c, id); ok || err != nil {
				return err
			}
		}
	}
	return ledger.Errorf(ledger.CodeTransactionNotFound, "transaction %s does not exist", tx.ID)
}

// pendingAccounts are the accounts a pending transfer moves money between: for one to
// another shard, the account there rather than the clearing account here.
func pendingAccounts(pt ledger.PendingTransfer) [2]ledger.AccountID {
	if pt.Remote != (ledger.AccountID{}) {
		return [2]ledger.AccountID{pt.From, pt.Remote}
	}
	return [2]ledger.AccountID{pt.From, pt.To}
}

// maySeePending answers transfer_not_found unless the caller owns one of the pending
// transfer's accounts; with resolving, it must own both (as it must to make one).
func (s *Service) maySeePending(ctx context.Context, c auth.Caller, pt ledger.PendingTransfer, resolving bool) error {
	if c.Operates() {
		return nil
	}
	owned := 0
	for _, id := range pendingAccounts(pt) {
		ok, err := s.ownsAccount(ctx, c, id)
		if err != nil {
			return err
		}
		if ok {
			owned++
		}
	}
	if owned == 2 || owned == 1 && !resolving {
		return nil
	}
	return ledger.Errorf(ledger.CodeTransferNotFound, "no pending transfer %s", pt.ID)
}
