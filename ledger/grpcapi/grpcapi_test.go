package grpcapi_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/settest"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/grpcapi"
	"github.com/tallyhq/tally/ledger/grpcapi/ledgerv1"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/service"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// The callers: alice is a user, ops an operator, root an admin.
const tokens = `
alice:alice-token-0123456789 roles=user
ops:ops-token-0123456789abc roles=operator
root:root-token-0123456789a roles=admin
`

var tokenOf = map[string]string{"alice": "alice-token-0123456789", "ops": "ops-token-0123456789abc", "root": "root-token-0123456789a"}

// fixture is both APIs over the same operations, over fresh shard databases: a gRPC
// client over loopback, and the HTTP API's address.
type fixture struct {
	t      *testing.T
	dbs    []*pgtest.DB
	client ledgerv1.LedgerServiceClient
	conn   *grpc.ClientConn
	http   string
}

func newFixture(t *testing.T, shards int, limiter ...*ratelimit.Limiter) *fixture {
	t.Helper()
	f := &fixture{t: t}
	for i := range shards {
		f.dbs = append(f.dbs, pgtest.NewShardDB(t, i))
	}
	set := settest.Batched(t, f.dbs, 20)
	tok, err := auth.ParseTokens(strings.NewReader(tokens))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	authn, err := auth.New(tok, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	svc := service.New(set, service.NewMetrics(prometheus.NewRegistry()), log)
	grpcAPI, httpAPI := grpcapi.New(svc, authn, log), httpapi.New(svc, authn, httpapi.NewMetrics(prometheus.NewRegistry()), log)
	for _, l := range limiter {
		grpcAPI.WithRateLimiter(l)
		httpAPI.WithRateLimiter(l)
	}
	srv, _ := grpcAPI.Server(prometheus.NewRegistry())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	f.conn, err = grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.conn.Close() })
	f.client = ledgerv1.NewLedgerServiceClient(f.conn)
	hs := httptest.NewServer(httpAPI.Handler())
	t.Cleanup(hs.Close)
	f.http = hs.URL
	return f
}

// as is a context whose calls are made as caller ("" for none).
func as(caller string) context.Context {
	if caller == "" {
		return context.Background()
	}
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tokenOf[caller])
}

func must[T any](t *testing.T, what string) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return v
	}
}

// refusal is a call's status code and its ErrorInfo reason (the HTTP problem's code).
func refusal(t *testing.T, err error) (codes.Code, string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || err == nil {
		t.Fatalf("not a status: %v", err)
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok {
			if info.Domain != grpcapi.ErrorDomain {
				t.Errorf("ErrorInfo domain %q", info.Domain)
			}
			return st.Code(), info.Reason
		}
	}
	return st.Code(), ""
}

// Every method answers over a real gRPC connection, as the HTTP API would.
func TestEveryMethod(t *testing.T) {
	f := newFixture(t, 1)
	c, root, ops, alice := f.client, as("root"), as("ops"), as("alice")
	reg := must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	if !reg.Created || reg.Asset.Code != "USD" || reg.Asset.Scale != 2 || len(reg.Asset.ExternalAccounts) != 1 {
		t.Fatalf("register: %v", reg)
	}
	again := must[*ledgerv1.RegisterAssetResponse](t, "register again")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	if again.Created {
		t.Error("registered twice")
	}
	if got := must[*ledgerv1.ListAssetsResponse](t, "list assets")(c.ListAssets(alice, &ledgerv1.ListAssetsRequest{})); len(got.Assets) != 1 {
		t.Errorf("assets: %v", got)
	}
	if got := must[*ledgerv1.GetAssetResponse](t, "get asset")(c.GetAsset(alice, &ledgerv1.GetAssetRequest{Code: "USD"})); got.Asset.Code != "USD" {
		t.Errorf("asset: %v", got)
	}
	open := func(owner string) *ledgerv1.Account {
		return must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(alice, &ledgerv1.CreateAccountRequest{
			Owner: owner, Asset: "USD", Metadata: `{"b": 1.50, "a": "x"}`})).Account
	}
	a, b, spare := open("alice"), open("alice"), open("alice")
	if a.Owner != "alice" || a.Status != "active" || a.Metadata != `{"a":"x","b":1.50}` || a.CreatedAt == nil || a.BalanceFloor == nil {
		t.Errorf("account: %v", a)
	}
	if got := must[*ledgerv1.GetAccountResponse](t, "get account")(c.GetAccount(alice, &ledgerv1.GetAccountRequest{Id: a.Id})); got.Account.Id != a.Id {
		t.Errorf("account: %v", got)
	}
	page := must[*ledgerv1.ListAccountsResponse](t, "list accounts")(c.ListAccounts(alice, &ledgerv1.ListAccountsRequest{PageSize: 2}))
	next := must[*ledgerv1.ListAccountsResponse](t, "list accounts")(c.ListAccounts(alice, &ledgerv1.ListAccountsRequest{PageSize: 2, PageToken: page.NextPageToken}))
	if len(page.Accounts) != 2 || page.NextPageToken == "" || len(next.Accounts) != 1 || next.NextPageToken != "" {
		t.Errorf("pages: %v then %v", page, next)
	}
	dep := must[*ledgerv1.TransferResponse](t, "deposit")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "dep",
		FromAccount: "external", ToAccount: a.Id, Amount: "100", Asset: "USD"}))
	tx := dep.GetTransaction()
	if tx == nil || dep.Replayed || len(tx.Postings) != 1 || tx.Postings[0].Amount != "100.00" || tx.Metadata != "{}" {
		t.Fatalf("deposit: %v", dep)
	}
	replay := must[*ledgerv1.TransferResponse](t, "deposit again")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "dep",
		FromAccount: "external", ToAccount: a.Id, Amount: "100.00", Asset: "USD"}))
	if !replay.Replayed || replay.GetTransaction().GetId() != tx.Id {
		t.Errorf("replay: %v", replay)
	}
	posted := must[*ledgerv1.PostTransactionResponse](t, "post")(c.PostTransaction(alice, &ledgerv1.PostTransactionRequest{IdempotencyKey: "two",
		Postings: []*ledgerv1.Posting{{FromAccount: a.Id, ToAccount: b.Id, Amount: "1", Asset: "USD"}, {FromAccount: a.Id, ToAccount: spare.Id, Amount: "2", Asset: "USD"}}}))
	if len(posted.Transaction.Postings) != 2 {
		t.Errorf("transaction: %v", posted)
	}
	if got := must[*ledgerv1.GetTransactionResponse](t, "get transaction")(c.GetTransaction(alice, &ledgerv1.GetTransactionRequest{Id: posted.Transaction.Id})); got.Transaction.Id != posted.Transaction.Id {
		t.Errorf("transaction: %v", got)
	}
	rev := must[*ledgerv1.ReverseTransactionResponse](t, "reverse")(c.ReverseTransaction(ops, &ledgerv1.ReverseTransactionRequest{IdempotencyKey: "rev", Id: posted.Transaction.Id}))
	if rev.Transaction.Reverses != posted.Transaction.Id {
		t.Errorf("reversal: %v", rev)
	}
	reserve := func(key string) *ledgerv1.PendingTransfer {
		r := must[*ledgerv1.TransferResponse](t, "reserve")(c.Transfer(alice, &ledgerv1.TransferRequest{IdempotencyKey: key,
			FromAccount: a.Id, ToAccount: b.Id, Amount: "5", Asset: "USD", Pending: true, TimeoutSeconds: 3600}))
		if r.GetPendingTransfer() == nil || r.GetPendingTransfer().State != "pending" || r.GetPendingTransfer().ExpiresAt == nil {
			t.Fatalf("reserve: %v", r)
		}
		return r.GetPendingTransfer()
	}
	p1, p2 := reserve("p1"), reserve("p2")
	bal := must[*ledgerv1.GetBalanceResponse](t, "balance")(c.GetBalance(alice, &ledgerv1.GetBalanceRequest{AccountId: a.Id})).Balance
	if bal.Balance != "100.00" || bal.Available != "90.00" || bal.PendingDebits != "10.00" {
		t.Errorf("balance: %v", bal)
	}
	later := timestamppb.New(time.Now().Add(time.Second))
	if at := must[*ledgerv1.GetBalanceResponse](t, "balance at")(c.GetBalance(alice, &ledgerv1.GetBalanceRequest{AccountId: a.Id, At: later})).BalanceAt; at == nil || at.Balance != "100.00" || at.Asset != "USD" || !at.At.AsTime().Equal(later.AsTime()) {
		t.Errorf("balance at a moment: %v", at)
	}
	if got := must[*ledgerv1.PostPendingTransferResponse](t, "post pending")(c.PostPendingTransfer(alice, &ledgerv1.PostPendingTransferRequest{IdempotencyKey: "post", Id: p1.Id, Amount: "4.5"})); got.PendingTransfer.State != "posted" || got.PendingTransfer.PostedAmount != "4.50" {
		t.Errorf("posted: %v", got)
	}
	if got := must[*ledgerv1.VoidPendingTransferResponse](t, "void")(c.VoidPendingTransfer(alice, &ledgerv1.VoidPendingTransferRequest{IdempotencyKey: "void", Id: p2.Id})); got.PendingTransfer.State != "voided" || got.PendingTransfer.ResolvedBy == "" {
		t.Errorf("voided: %v", got)
	}
	if got := must[*ledgerv1.GetPendingTransferResponse](t, "get pending")(c.GetPendingTransfer(alice, &ledgerv1.GetPendingTransferRequest{Id: p1.Id})); got.PendingTransfer.State != "posted" {
		t.Errorf("pending transfer: %v", got)
	}
	entries := must[*ledgerv1.ListEntriesResponse](t, "entries")(c.ListEntries(alice, &ledgerv1.ListEntriesRequest{AccountId: a.Id, PageSize: 2}))
	if len(entries.Entries) != 2 || entries.NextPageToken == "" || entries.Entries[0].AccountId != a.Id {
		t.Errorf("entries: %v", entries)
	}
	must[*ledgerv1.FreezeAccountResponse](t, "freeze")(c.FreezeAccount(ops, &ledgerv1.FreezeAccountRequest{Id: b.Id}))
	if got := must[*ledgerv1.UnfreezeAccountResponse](t, "unfreeze")(c.UnfreezeAccount(ops, &ledgerv1.UnfreezeAccountRequest{Id: b.Id})); got.Account.Status != "active" {
		t.Errorf("unfrozen: %v", got)
	}
	empty := open("alice")
	if got := must[*ledgerv1.CloseAccountResponse](t, "close")(c.CloseAccount(root, &ledgerv1.CloseAccountRequest{Id: empty.Id})); got.Account.Status != "closed" {
		t.Errorf("closed: %v", got)
	}
	hc := must[*healthpb.HealthCheckResponse](t, "health")(healthpb.NewHealthClient(f.conn).Check(context.Background(),
		&healthpb.HealthCheckRequest{Service: ledgerv1.LedgerService_ServiceDesc.ServiceName}))
	if hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v", hc)
	}
}

func ptr[T any](v T) *T { return &v }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

// Every error answers its gRPC code, with the HTTP problem's code as the ErrorInfo
// reason; the role each method needs is the operation's.
func TestErrorsAndRoles(t *testing.T) {
	f := newFixture(t, 1)
	c, root, ops, alice := f.client, as("root"), as("ops"), as("alice")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	a := must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(alice, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})).Account
	b := must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(alice, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})).Account
	must[*ledgerv1.TransferResponse](t, "deposit")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "dep", FromAccount: "external", ToAccount: a.Id, Amount: "1", Asset: "USD"}))
	transfer := func(ctx context.Context, key, amount string) error {
		_, err := c.Transfer(ctx, &ledgerv1.TransferRequest{IdempotencyKey: key, FromAccount: a.Id, ToAccount: b.Id, Amount: amount, Asset: "USD"})
		return err
	}
	cases := []struct {
		name   string
		err    error
		code   codes.Code
		reason string
	}{
		{"no token", transfer(as(""), "k1", "1"), codes.Unauthenticated, "unauthorized"},
		{"bad token", transfer(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer nope"), "k1", "1"), codes.Unauthenticated, "unauthorized"},
		{"a user registers an asset", func() error {
			_, err := c.RegisterAsset(alice, &ledgerv1.RegisterAssetRequest{Code: "EUR", Scale: ptr[int32](2)})
			return err
		}(), codes.PermissionDenied, "forbidden"},
		{"no key", transfer(alice, "", "1"), codes.InvalidArgument, "idempotency_key_required"},
		{"bad amount", transfer(alice, "k2", "1.001"), codes.InvalidArgument, "invalid_amount"},
		{"bad metadata", func() error {
			_, err := c.Transfer(alice, &ledgerv1.TransferRequest{IdempotencyKey: "k3", FromAccount: a.Id, ToAccount: b.Id, Amount: "1", Asset: "USD", Metadata: "[1]"})
			return err
		}(), codes.InvalidArgument, "invalid_request"},
		{"no such account", func() error {
			_, err := c.GetAccount(ops, &ledgerv1.GetAccountRequest{Id: "01a23be2-2834-7193-9a00-0058c92584c0"})
			return err
		}(), codes.NotFound, "account_not_found"},
		{"too little money", transfer(alice, "k4", "5"), codes.FailedPrecondition, "insufficient_funds"},
		{"key reused", func() error {
			if err := transfer(alice, "k5", "0.5"); err != nil {
				return err
			}
			return transfer(alice, "k5", "0.25")
		}(), codes.AlreadyExists, "idempotency_key_reused"},
		{"page size", func() error {
			_, err := c.ListAccounts(alice, &ledgerv1.ListAccountsRequest{PageSize: 201})
			return err
		}(), codes.InvalidArgument, "invalid_request"},
	}
	for _, tc := range cases {
		code, reason := refusal(t, tc.err)
		if code != tc.code || reason != tc.reason {
			t.Errorf("%s: %s %q (%v), want %s %q", tc.name, code, reason, tc.err, tc.code, tc.reason)
		}
	}
	// Every method of the service is an operation, with the operation's role.
	known := map[service.Op]bool{}
	for _, op := range service.Ops() {
		known[op] = true
	}
	for _, m := range append(ledgerv1.LedgerService_ServiceDesc.Methods, grpcMethods(ledgerv1.LedgerService_ServiceDesc.Streams)...) {
		if !known[service.Op(m.MethodName)] {
			t.Errorf("method %s is no operation of ledger/service: its role would be unknown", m.MethodName)
		}
	}
}

func grpcMethods(streams []grpc.StreamDesc) []grpc.MethodDesc {
	var out []grpc.MethodDesc
	for _, s := range streams {
		out = append(out, grpc.MethodDesc{MethodName: s.StreamName})
	}
	return out
}

// A write made over HTTP and retried over gRPC with the same key answers the first
// request's outcome, and applies once: one idempotency, behind both APIs.
func TestOneIdempotencyBehindBothAPIs(t *testing.T) {
	f := newFixture(t, 1)
	c, root, ops := f.client, as("root"), as("ops")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	a := must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(ops, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})).Account
	body := fmt.Sprintf(`{"from_account":"external","to_account":%q,"amount":"7.00","asset":"USD","metadata":{"n":1}}`, a.Id)
	req, _ := http.NewRequest(http.MethodPost, f.http+"/v1/transfers", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tokenOf["ops"])
	req.Header.Set("Idempotency-Key", "both")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("HTTP: %d %s", resp.StatusCode, first)
	}
	again := must[*ledgerv1.TransferResponse](t, "retry over gRPC")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "both",
		FromAccount: "external", ToAccount: a.Id, Amount: "7", Asset: "USD", Metadata: `{"n": 1}`}))
	if !again.Replayed || !bytes.Contains(first, []byte(again.GetTransaction().GetId())) || again.GetTransaction().Metadata != `{"n":1}` {
		t.Errorf("gRPC replay %v of HTTP's %s", again, first)
	}
	bal := must[*ledgerv1.GetBalanceResponse](t, "balance")(c.GetBalance(ops, &ledgerv1.GetBalanceRequest{AccountId: a.Id})).Balance
	if bal.Balance != "7.00" {
		t.Errorf("balance %s after one transfer sent twice", bal.Balance)
	}
}

// A call whose deadline passes while its transfer waits in the database leaves no half
// transfer and no stuck key: the retry with the same key applies it exactly once.
func TestDeadlineLeavesNothingHalfDone(t *testing.T) {
	f := newFixture(t, 1)
	c, root, ops := f.client, as("root"), as("ops")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	a := must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(ops, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})).Account
	// Hold alice's balance row, so the transfer waits in the database past its deadline.
	super := f.dbs[0].SuperConn(t)
	tx, err := super.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), "SELECT 1 FROM tally.balances WHERE account_id = $1 FOR UPDATE", a.Id); err != nil {
		t.Fatal(err)
	}
	req := &ledgerv1.TransferRequest{IdempotencyKey: "late", FromAccount: "external", ToAccount: a.Id, Amount: "3", Asset: "USD"}
	ctx, cancel := context.WithTimeout(as("ops"), 300*time.Millisecond)
	_, err = c.Transfer(ctx, req)
	cancel()
	if code, _ := refusal(t, err); code != codes.DeadlineExceeded {
		t.Fatalf("a transfer held past its deadline: %v", err)
	}
	cctx, ccancel := context.WithCancel(as("ops"))
	go func() { time.Sleep(300 * time.Millisecond); ccancel() }()
	_, err = c.Transfer(cctx, req)
	if code, _ := refusal(t, err); code != codes.Canceled {
		t.Fatalf("a cancelled transfer: %v", err)
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got *ledgerv1.TransferResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err = c.Transfer(ops, req)
		if err == nil || time.Now().After(deadline) {
			break
		}
		if code, _ := refusal(t, err); code != codes.Unavailable {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("the retry: %v", err)
	}
	bal := must[*ledgerv1.GetBalanceResponse](t, "balance")(c.GetBalance(ops, &ledgerv1.GetBalanceRequest{AccountId: a.Id})).Balance
	if bal.Balance != "3.00" {
		t.Errorf("balance %s after one transfer (applied: %v)", bal.Balance, got)
	}
	var n int
	if err := super.QueryRow(context.Background(), "SELECT count(*) FROM tally.transactions").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("%d transactions for one transfer", n)
	}
}

// A caller's allowance is one across both APIs: writes over HTTP count against its gRPC
// writes, and over it a call answers RESOURCE_EXHAUSTED rate_limited; its reads go on.
func TestRateLimitsAcrossBothAPIs(t *testing.T) {
	limiter := ratelimit.New(ratelimit.Config{Limits: map[ratelimit.Class]ratelimit.Limit{ratelimit.Writes: {Rate: 3, Period: time.Hour, Burst: 3}}})
	f := newFixture(t, 1, limiter)
	c, root := f.client, as("root")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	req, _ := http.NewRequest(http.MethodPost, f.http+"/v1/accounts", strings.NewReader(`{"owner":"alice","asset":"USD"}`))
	req.Header.Set("Authorization", "Bearer "+tokenOf["root"])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("HTTP write: %d", resp.StatusCode)
	}
	a := must[*ledgerv1.CreateAccountResponse](t, "the third write")(c.CreateAccount(root, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})).Account
	_, err = c.CreateAccount(root, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD"})
	if code, reason := refusal(t, err); code != codes.ResourceExhausted || reason != "rate_limited" {
		t.Errorf("the fourth write: %s %s (%v)", code, reason, err)
	}
	must[*ledgerv1.GetBalanceResponse](t, "a read")(c.GetBalance(root, &ledgerv1.GetBalanceRequest{AccountId: a.Id}))
}

// A follower of a hot account (four balance slots) gets every entry posted while it
// follows, once, though batches on different slots commit out of id order; resumed with
// the last token it gets exactly those posted meanwhile; a user cannot follow another's.
func TestFollowEntries(t *testing.T) {
	f := newFixture(t, 1)
	c, root, ops := f.client, as("root"), as("ops")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	hot := must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(ops, &ledgerv1.CreateAccountRequest{Owner: "shop", Asset: "USD", BalanceSlots: ptr[int32](4)})).Account
	others := make([]string, 6)
	for i := range others {
		others[i] = must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(ops, &ledgerv1.CreateAccountRequest{Owner: "bob", Asset: "USD"})).Account.Id
		must[*ledgerv1.TransferResponse](t, "fund")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "fund" + others[i], FromAccount: "external", ToAccount: others[i], Amount: "1000", Asset: "USD"}))
	}
	must[*ledgerv1.TransferResponse](t, "fund hot")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "fund-hot", FromAccount: "external", ToAccount: hot.Id, Amount: "1000", Asset: "USD"}))
	before := map[string]bool{}
	for _, e := range f.entries(hot.Id) {
		before[e] = true
	}

	// A follower, its entries as they come.
	type follower struct {
		mu     sync.Mutex
		ids    []string
		token  string
		cancel context.CancelFunc
		done   chan struct{}
	}
	follow := func(req *ledgerv1.FollowEntriesRequest) *follower {
		ctx, cancel := context.WithCancel(ops)
		fl := &follower{cancel: cancel, done: make(chan struct{})}
		stream, err := c.FollowEntries(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			defer close(fl.done)
			for {
				m, err := stream.Recv()
				if err != nil {
					return
				}
				fl.mu.Lock()
				fl.ids, fl.token = append(fl.ids, m.Entry.Id), m.ResumeToken
				fl.mu.Unlock()
			}
		}()
		return fl
	}
	// stop waits until the follower has as many entries as were posted (or a minute),
	// and a little more for any it would send twice, then ends it.
	stop := func(fl *follower, posted int) []string {
		deadline := time.Now().Add(time.Minute)
		for {
			fl.mu.Lock()
			n := len(fl.ids)
			fl.mu.Unlock()
			if n >= posted || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond)
		fl.cancel()
		<-fl.done
		return fl.ids
	}
	load := func(round string) {
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := range 15 {
					other := others[(w+i)%len(others)]
					from, to := other, hot.Id
					if i%2 == 1 {
						from, to = hot.Id, other
					}
					_, err := c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: fmt.Sprint(round, w, "-", i), FromAccount: from, ToAccount: to, Amount: "1", Asset: "USD"})
					if err != nil {
						t.Errorf("transfer: %v", err)
					}
				}
			})
		}
		wg.Wait()
	}
	want := func() map[string]bool {
		out := map[string]bool{}
		for _, e := range f.entries(hot.Id) {
			if !before[e] {
				out[e] = true
			}
		}
		return out
	}
	// Nothing is in flight now, so after the latest entry's id is exact.
	latest := ""
	for e := range before {
		if latest == "" || len(e) > len(latest) || len(e) == len(latest) && e > latest {
			latest = e
		}
	}
	first := follow(&ledgerv1.FollowEntriesRequest{AccountId: hot.Id, AfterEntryId: latest})
	load("a")
	wantFirst := want()
	f.sameEntries("followed", stop(first, len(wantFirst)), wantFirst)

	// Resumed with the token: exactly what was posted meanwhile.
	load("b")
	for e := range wantFirst {
		before[e] = true
	}
	wantSecond := want()
	second := follow(&ledgerv1.FollowEntriesRequest{AccountId: hot.Id, ResumeToken: first.token})
	f.sameEntries("resumed", stop(second, len(wantSecond)), wantSecond)

	stream, err := c.FollowEntries(as("alice"), &ledgerv1.FollowEntriesRequest{AccountId: hot.Id})
	if err == nil {
		_, err = stream.Recv()
	}
	if code, reason := refusal(t, err); code != codes.NotFound || reason != "account_not_found" {
		t.Errorf("alice follows the shop's account: %s %s", code, reason)
	}
}

// entries are the ids of all the account's entries, through the list API.
func (f *fixture) entries(account string) []string {
	f.t.Helper()
	var ids []string
	token := ""
	for {
		page := must[*ledgerv1.ListEntriesResponse](f.t, "entries")(f.client.ListEntries(as("ops"), &ledgerv1.ListEntriesRequest{AccountId: account, PageSize: 200, PageToken: token}))
		for _, e := range page.Entries {
			ids = append(ids, e.Id)
		}
		if token = page.NextPageToken; token == "" {
			return ids
		}
	}
}

func (f *fixture) sameEntries(what string, got []string, want map[string]bool) {
	f.t.Helper()
	seen := map[string]bool{}
	for _, id := range got {
		if seen[id] {
			f.t.Errorf("%s: entry %s twice", what, id)
		}
		if !want[id] {
			f.t.Errorf("%s: entry %s was not posted meanwhile", what, id)
		}
		seen[id] = true
	}
	if len(seen) != len(want) || len(want) == 0 {
		f.t.Errorf("%s: %d entries, %d posted", what, len(seen), len(want))
	}
}

// A transfer between shards answers the pending transfer the cross-shard protocol
// settled, as over HTTP.
func TestTransferBetweenShards(t *testing.T) {
	f := newFixture(t, 2)
	c, root, ops := f.client, as("root"), as("ops")
	must[*ledgerv1.RegisterAssetResponse](t, "register")(c.RegisterAsset(root, &ledgerv1.RegisterAssetRequest{Code: "USD", Scale: ptr[int32](2)}))
	open := func(shard int32) string {
		return must[*ledgerv1.CreateAccountResponse](t, "open")(c.CreateAccount(ops, &ledgerv1.CreateAccountRequest{Owner: "alice", Asset: "USD", Shard: &shard})).Account.Id
	}
	a, b := open(0), open(1)
	must[*ledgerv1.TransferResponse](t, "fund")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "fund", FromAccount: "external", ToAccount: a, Amount: "10", Asset: "USD"}))
	got := must[*ledgerv1.TransferResponse](t, "across")(c.Transfer(ops, &ledgerv1.TransferRequest{IdempotencyKey: "across", FromAccount: a, ToAccount: b, Amount: "4", Asset: "USD"}))
	pt := got.GetPendingTransfer()
	if pt == nil || pt.State != "posted" || pt.ToAccount != b || pt.Amount != "4.00" || got.InFlight {
		t.Fatalf("a transfer between shards: %v", got)
	}
	bal := must[*ledgerv1.GetBalanceResponse](t, "balance")(c.GetBalance(ops, &ledgerv1.GetBalanceRequest{AccountId: b})).Balance
	if bal.Balance != "4.00" {
		t.Errorf("destination balance %s", bal.Balance)
	}
}
