package grpcapi

import (
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/tallyhq/tally/ledger"
)

// Each of the ledger's codes has the gRPC code a client in any language expects.
func TestCodeOfEveryLedgerCode(t *testing.T) {
	want := map[codes.Code][]ledger.Code{
		codes.InvalidArgument: {ledger.CodeInvalidRequest, ledger.CodeInvalidAmount, ledger.CodeInvalidID, ledger.CodeRequestTooLarge,
			ledger.CodeHeaderTooLarge, ledger.CodeUnsupportedMediaType, ledger.CodeIdempotencyKeyRequired},
		codes.AlreadyExists: {ledger.CodeIdempotencyKeyReused, ledger.CodeAssetScaleConflict},
		codes.NotFound: {ledger.CodeNotFound, ledger.CodeAccountNotFound, ledger.CodeTransactionNotFound, ledger.CodeAssetNotFound,
			ledger.CodeTransferNotFound},
		codes.Unimplemented: {ledger.CodeMethodNotAllowed},
		codes.FailedPrecondition: {ledger.CodeAccountFrozen, ledger.CodeAccountClosed, ledger.CodeAccountNotEmpty,
			ledger.CodeInvalidStatusChange, ledger.CodeAssetMismatch, ledger.CodeSameAccount, ledger.CodeInsufficientFunds,
			ledger.CodeBalanceLimitExceeded, ledger.CodeCrossShardNotSupported, ledger.CodeExternalAccountReadOnly,
			ledger.CodeAccountHasPending, ledger.CodeTransferResolved, ledger.CodeTransferExpired, ledger.CodeAmountExceedsPending,
			ledger.CodeAlreadyReversed, ledger.CodeNotReversible, ledger.CodeBetweenShards},
		codes.Unauthenticated:   {ledger.CodeUnauthorized},
		codes.PermissionDenied:  {ledger.CodeForbidden},
		codes.ResourceExhausted: {ledger.CodeRateLimited},
		codes.OutOfRange:        {ledger.CodeHistoryArchived},
		codes.Unavailable:       {ledger.CodeUnavailable},
		codes.Internal:          {ledger.CodeInternal},
	}
	for grpcCode, codes := range want {
		for _, c := range codes {
			if got := CodeOf(c, c.Status()); got != grpcCode {
				t.Errorf("%s (HTTP %d): %s, want %s", c, c.Status(), got, grpcCode)
			}
		}
	}
}
