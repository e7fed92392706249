package httpapi

import (
	"context"
	"strings"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/shardset"
)

// access is the least role a route needs (see the route table in Handler). A route open
// to users checks, in its handler, that a user names only accounts it owns: another
// owner's account, transaction or transfer answers 404 exactly as one that does not
// exist, so a user learns nothing of what it may not see. A role a route needs and the
// caller lacks answers 403.
type access int

const (
	// users: every caller; a user only with its own accounts, an operator or an admin
	// with any.
	users access = iota
	// operators: operators and admins.
	operators
	// admins: admins only.
	admins
)

func (r access) allows(c auth.Caller) bool {
	switch r {
	case users:
		return len(c.Roles) > 0
	case operators:
		return c.Operates()
	default:
		return c.Has(auth.RoleAdmin)
	}
}

func (r access) String() string {
	return [...]string{"user", "operator", "admin"}[r]
}

type callerKey struct{}

// callerOf is the request's authenticated caller; its Name scopes idempotency keys.
func callerOf(ctx context.Context) auth.Caller {
	c, _ := ctx.Value(callerKey{}).(auth.Caller)
	return c
}

// owns reports whether the caller may use an account of that owner. The ledger's own
// accounts (owners starting "tally:") belong to no caller, whatever its subject says.
func owns(c auth.Caller, owner string) bool {
	return c.Operates() || owner == c.Owner && !strings.HasPrefix(owner, "tally:")
}

// mayUse answers account_not_found unless the caller may use the account.
func (a *API) mayUse(ctx context.Context, id ledger.AccountID) error {
	ok, err := a.ownsAccount(ctx, id)
	if err == nil && !ok {
		err = ledger.Errorf(ledger.CodeAccountNotFound, "account %s does not exist", id)
	}
	return err
}

// ownsAccount reports whether the caller may use the account; one that does not exist
// it does not own.
func (a *API) ownsAccount(ctx context.Context, id ledger.AccountID) (bool, error) {
	c := callerOf(ctx)
	if c.Operates() {
		return true, nil
	}
	owner, err := a.set.Owner(ctx, id)
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
func (a *API) mayMove(ctx context.Context, postings []shardset.PostingRequest) error {
	if callerOf(ctx).Operates() {
		return nil
	}
	for i, p := range postings {
		for _, acc := range []shardset.Account{p.From, p.To} {
			if acc.External {
				return prefixPosting(i, ledger.Errorf(ledger.CodeForbidden, "deposits and withdrawals (the external account) need the operator role"))
			}
			if err := a.mayUse(ctx, acc.ID); err != nil {
				return prefixPosting(i, err)
			}
		}
	}
	return nil
}

// maySeeTransaction answers transaction_not_found unless the caller owns one of the
// transaction's accounts.
func (a *API) maySeeTransaction(ctx context.Context, tx ledger.Transaction) error {
	if callerOf(ctx).Operates() {
		return nil
	}
	for _, p := range tx.Postings {
		for _, id := range []ledger.AccountID{p.From, p.To} {
			if ok, err := a.ownsAccount(ctx, id); ok || err != nil {
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
func (a *API) maySeePending(ctx context.Context, pt ledger.PendingTransfer, resolving bool) error {
	if callerOf(ctx).Operates() {
		return nil
	}
	owned := 0
	for _, id := range pendingAccounts(pt) {
		ok, err := a.ownsAccount(ctx, id)
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
