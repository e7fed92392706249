// Package grpcapi is the ledger's gRPC API (proto/tally/ledger/v1): like ledger/httpapi
// it carries requests to the operations (ledger/service) and their answers back, so both
// APIs share every rule. Answers are the HTTP API's documents, made into messages; a
// refusal is a status whose ErrorInfo reason is the HTTP problem's stable code.
package grpcapi

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"path"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/service"
)

// ErrorDomain is the domain of every ErrorInfo the API sends.
const ErrorDomain = "tally.dev"

// API serves the ledger over gRPC.
type API struct {
	ledgerv1.UnimplementedLedgerServiceServer
	svc     *service.Service
	auth    *auth.Authenticator
	limiter *ratelimit.Limiter // nil: no rate limits
	log     *slog.Logger
}

// New returns the API over the operations. authn may be nil for an open API whose every
// caller is auth.AnonymousCaller, an admin (local development only).
func New(svc *service.Service, authn *auth.Authenticator, log *slog.Logger) *API {
	return &API{svc: svc, auth: authn, log: log}
}

// WithRateLimiter limits each caller's calls, as the HTTP API's requests (one allowance
// across both APIs when it is shared through Redis): writes and reads apart.
func (a *API) WithRateLimiter(l *ratelimit.Limiter) *API {
	a.limiter = l
	return a
}

type callerKey struct{}

// callerOf is the call's authenticated caller.
func callerOf(ctx context.Context) auth.Caller {
	c, _ := ctx.Value(callerKey{}).(auth.Caller)
	return c
}

// admit authenticates and authorizes a call to method, counts it against its caller's
// allowance, and returns its context carrying the caller. A method of another service
// passes untouched.
func (a *API) admit(ctx context.Context, method string) (context.Context, error) {
	if !strings.HasPrefix(method, "/"+ledgerv1.LedgerService_ServiceDesc.ServiceName+"/") {
		return ctx, nil
	}
	op := service.Op(path.Base(method))
	md, _ := metadata.FromIncomingContext(ctx)
	var authorization string
	if v := md.Get("authorization"); len(v) > 0 {
		authorization = v[0]
	}
	c, err := a.auth.Bearer(ctx, authorization, "method", method)
	if err != nil {
		return ctx, err
	}
	if need := op.Needs(); !need.Allows(c) {
		return ctx, ledger.Errorf(ledger.CodeForbidden, "%s needs the %s role", op, need)
	}
	if a.limiter != nil {
		class := ratelimit.Writes
		if op.Reads() {
			class = ratelimit.Reads
		}
		if d := a.limiter.Allow(ctx, c.Name, class); d.Limit.Rate != 0 && !d.Allowed {
			return ctx, ledger.Errorf(ledger.CodeRateLimited, "%s are limited to %s per caller; retry after %s", class, d.Limit, d.RetryAfter.Round(time.Millisecond))
		}
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

func (a *API) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.admit(ctx, info.FullMethod)
	if err != nil {
		return nil, a.statusOf(ctx, info.FullMethod, err)
	}
	resp, err := handler(ctx, req)
	if err != nil {
		return nil, a.statusOf(ctx, info.FullMethod, err)
	}
	return resp, nil
}

func (a *API) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.admit(ss.Context(), info.FullMethod)
	if err != nil {
		return a.statusOf(ss.Context(), info.FullMethod, err)
	}
	if err := handler(srv, &callerStream{ServerStream: ss, ctx: ctx}); err != nil {
		return a.statusOf(ctx, info.FullMethod, err)
	}
	return nil
}

// callerStream is a stream whose context carries the caller.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

// Context is the stream's context, with the caller.
func (s *callerStream) Context() context.Context { return s.ctx }

// statusOf turns an operation's error into the call's status: a ledger error keeps its
// code (as the ErrorInfo reason) and detail; the call's own deadline or cancellation
// says so; anything else is logged and answers internal.
func (a *API) statusOf(ctx context.Context, method string, err error) error {
	if _, ok := status.FromError(err); ok {
		return err // already a status (the stream's own errors)
	}
	var le *ledger.Error
	switch {
	case errors.As(err, &le):
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "the call's deadline passed; a retry with the same idempotency key applies a write at most once and answers its outcome")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "the call was cancelled")
	default:
		a.log.ErrorContext(ctx, "call failed", "method", method, "err", err)
		le = ledger.Errorf(ledger.CodeInternal, "the call failed on the server; a retry with the same idempotency key is safe: "+
			"it applies a write at most once and answers its outcome")
	}
	if le.Code == ledger.CodeUnavailable {
		a.log.WarnContext(ctx, "database unavailable", "method", method, "err", err)
	}
	return problemStatus(le.Problem())
}

// problemStatus is the status of a problem document.
func problemStatus(p ledger.Problem) error {
	st := status.New(CodeOf(p.Code, p.Status), p.Detail)
	info := &errdetails.ErrorInfo{Reason: string(p.Code), Domain: ErrorDomain, Metadata: map[string]string{"http_status": strconv.Itoa(p.Status)}}
	if withInfo, err := st.WithDetails(info); err == nil {
		st = withInfo
	}
	return st.Err()
}

// refusal is the status of a refusal the ledger recorded (an answer from 300 on: its
// body a problem document).
func refusal(ans service.Answer) error {
	var p ledger.Problem
	if err := json.Unmarshal(ans.Body, &p); err != nil || p.Code == "" {
		return status.Errorf(codes.Internal, "a refusal without a problem document (HTTP status %d)", ans.Status)
	}
	return problemStatus(p)
}

// CodeOf is the gRPC code of a ledger code whose HTTP status is httpStatus.
func CodeOf(code ledger.Code, httpStatus int) codes.Code {
	switch code {
	case ledger.CodeIdempotencyKeyReused, ledger.CodeAssetScaleConflict:
		return codes.AlreadyExists
	case ledger.CodeMethodNotAllowed:
		return codes.Unimplemented
	}
	switch httpStatus {
	case 400, 413, 415, 431:
		return codes.InvalidArgument
	case 401:
		return codes.Unauthenticated
	case 403:
		return codes.PermissionDenied
	case 404:
		return codes.NotFound
	case 409, 422:
		return codes.FailedPrecondition
	case 410:
		return codes.OutOfRange
	case 429:
		return codes.ResourceExhausted
	case 503:
		return codes.Unavailable
	case 504:
		return codes.DeadlineExceeded
	default:
		return codes.Internal
	}
}
