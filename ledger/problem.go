package ledger

import (
	"errors"
	"fmt"
	"net/http"
)

// Code is a stable, machine-readable error code; clients switch on it.
type Code string

// The codes. Those the database decides (see tally.problem in the migrations) must keep
// the same status and title here; a test checks.
const (
	CodeInvalidRequest          Code = "invalid_request"
	CodeInvalidAmount           Code = "invalid_amount"
	CodeInvalidID               Code = "invalid_id"
	CodeRequestTooLarge         Code = "request_too_large"
	CodeHeaderTooLarge          Code = "header_too_large"
	CodeUnsupportedMediaType    Code = "unsupported_media_type"
	CodeIdempotencyKeyRequired  Code = "idempotency_key_required"
	CodeIdempotencyKeyReused    Code = "idempotency_key_reused"
	CodeNotFound                Code = "not_found"
	CodeMethodNotAllowed        Code = "method_not_allowed"
	CodeAccountNotFound         Code = "account_not_found"
	CodeTransactionNotFound     Code = "transaction_not_found"
	CodeAssetNotFound           Code = "asset_not_found"
	CodeAssetScaleConflict      Code = "asset_scale_conflict"
	CodeAccountFrozen           Code = "account_frozen"
	CodeAccountClosed           Code = "account_closed"
	CodeAccountNotEmpty         Code = "account_balance_not_zero"
	CodeInvalidStatusChange     Code = "invalid_status_change"
	CodeAssetMismatch           Code = "asset_mismatch"
	CodeSameAccount             Code = "same_account"
	CodeInsufficientFunds       Code = "insufficient_funds"
	CodeBalanceLimitExceeded    Code = "balance_limit_exceeded"
	CodeCrossShardNotSupported  Code = "cross_shard_not_supported"
	CodeExternalAccountReadOnly Code = "external_account_immutable"
	CodeAccountHasPending       Code = "account_has_pending_transfers"
	CodeTransferNotFound        Code = "transfer_not_found"
	CodeTransferResolved        Code = "transfer_already_resolved"
	CodeTransferExpired         Code = "transfer_expired"
	CodeAmountExceedsPending    Code = "amount_exceeds_pending"
	CodeAlreadyReversed         Code = "transaction_already_reversed"
	CodeNotReversible           Code = "transaction_not_reversible"
	CodeBetweenShards           Code = "transfer_between_shards"
	CodeUnauthorized            Code = "unauthorized"
	CodeForbidden               Code = "forbidden"
	CodeRateLimited             Code = "rate_limited"
	CodeHistoryArchived         Code = "history_archived"
	CodeUnavailable             Code = "unavailable"
	CodeInternal                Code = "internal"
)

type codeInfo struct {
	status int
	title  string
}

func info(c Code) codeInfo {
	switch c {
	case CodeInvalidRequest:
		return codeInfo{http.StatusBadRequest, "Invalid request"}
	case CodeInvalidAmount:
		return codeInfo{http.StatusBadRequest, "Invalid amount"}
	case CodeInvalidID:
		return codeInfo{http.StatusBadRequest, "Invalid id"}
	case CodeRequestTooLarge:
		return codeInfo{http.StatusRequestEntityTooLarge, "Request body too large"}
	case CodeHeaderTooLarge:
		return codeInfo{http.StatusRequestHeaderFieldsTooLarge, "Request header too large"}
	case CodeUnsupportedMediaType:
		return codeInfo{http.StatusUnsupportedMediaType, "Request body must be application/json"}
	case CodeIdempotencyKeyRequired:
		return codeInfo{http.StatusBadRequest, "Idempotency-Key header required"}
	case CodeIdempotencyKeyReused:
		return codeInfo{http.StatusConflict, "Idempotency key reused with a different request"}
	case CodeNotFound:
		return codeInfo{http.StatusNotFound, "Not found"}
	case CodeMethodNotAllowed:
		return codeInfo{http.StatusMethodNotAllowed, "Method not allowed"}
	case CodeAccountNotFound:
		return codeInfo{http.StatusNotFound, "Account not found"}
	case CodeTransactionNotFound:
		return codeInfo{http.StatusNotFound, "Transaction not found"}
	case CodeAssetNotFound:
		return codeInfo{http.StatusNotFound, "Asset not found"}
	case CodeAssetScaleConflict:
		return codeInfo{http.StatusConflict, "Asset exists with a different scale"}
	case CodeAccountFrozen:
		return codeInfo{http.StatusUnprocessableEntity, "Account is frozen"}
	case CodeAccountClosed:
		return codeInfo{http.StatusUnprocessableEntity, "Account is closed"}
	case CodeAccountNotEmpty:
		return codeInfo{http.StatusConflict, "Account balance is not zero"}
	case CodeInvalidStatusChange:
		return codeInfo{http.StatusConflict, "Account status cannot change that way"}
	case CodeAssetMismatch:
		return codeInfo{http.StatusUnprocessableEntity, "Asset does not match the account"}
	case CodeSameAccount:
		return codeInfo{http.StatusUnprocessableEntity, "Source and destination are the same account"}
	case CodeInsufficientFunds:
		return codeInfo{http.StatusUnprocessableEntity, "Insufficient funds"}
	case CodeBalanceLimitExceeded:
		return codeInfo{http.StatusUnprocessableEntity, "Balance would exceed the largest representable amount"}
	case CodeCrossShardNotSupported:
		return codeInfo{http.StatusUnprocessableEntity, "Transactions across shards are not supported"}
	case CodeExternalAccountReadOnly:
		return codeInfo{http.StatusConflict, "External accounts cannot be frozen or closed"}
	case CodeAccountHasPending:
		return codeInfo{http.StatusConflict, "Account has pending transfers"}
	case CodeTransferNotFound:
		return codeInfo{http.StatusNotFound, "Pending transfer not found"}
	case CodeTransferResolved:
		return codeInfo{http.StatusConflict, "Pending transfer already resolved"}
	case CodeTransferExpired:
		return codeInfo{http.StatusConflict, "Pending transfer expired"}
	case CodeAmountExceedsPending:
		return codeInfo{http.StatusUnprocessableEntity, "Amount exceeds the pending amount"}
	case CodeAlreadyReversed:
		return codeInfo{http.StatusConflict, "Transaction already reversed"}
	case CodeNotReversible:
		return codeInfo{http.StatusUnprocessableEntity, "Transaction cannot be reversed"}
	case CodeBetweenShards:
		return codeInfo{http.StatusConflict, "Transfer between shards is resolved by the ledger"}
	case CodeUnauthorized:
		return codeInfo{http.StatusUnauthorized, "Authentication required"}
	case CodeForbidden:
		return codeInfo{http.StatusForbidden, "Not allowed for the caller's role"}
	case CodeRateLimited:
		return codeInfo{http.StatusTooManyRequests, "Too many requests"}
	case CodeHistoryArchived:
		return codeInfo{http.StatusGone, "History archived"}
	case CodeUnavailable:
		return codeInfo{http.StatusServiceUnavailable, "Service unavailable"}
	default:
		return codeInfo{http.StatusInternalServerError, "Internal error"}
	}
}

// Status is the HTTP status that goes with the code.
func (c Code) Status() int { return info(c).status }

// Title is the short human summary that goes with the code.
func (c Code) Title() string { return info(c).title }

// ProblemTypeBase prefixes every problem's type URI.
const ProblemTypeBase = "https://tally.dev/problems/"

// Problem is an RFC 9457 problem document; the field order is the wire order.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail"`
	Code   Code   `json:"code"`
}

// Error is a rejection with a stable code; the API turns it into a Problem.
type Error struct {
	Code   Code
	Detail string
}

// Error implements error.
func (e *Error) Error() string { return string(e.Code) + ": " + e.Detail }

// Problem renders the error as an RFC 9457 document.
func (e *Error) Problem() Problem {
	return Problem{Type: ProblemTypeBase + string(e.Code), Title: e.Code.Title(), Status: e.Code.Status(), Detail: e.Detail, Code: e.Code}
}

// Errorf makes an *Error with a formatted detail.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Detail: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of an *Error in err's chain, or CodeInternal.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
