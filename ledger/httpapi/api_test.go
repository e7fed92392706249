package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/internal/journaltest"
	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/settest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/service"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

type client struct {
	t     *testing.T
	base  string
	token string
	set   *shardset.Set
	api   *httpapi.API
}

// newClient serves the API over fresh databases, one per shard.
func newClient(t *testing.T, shards int, authn *auth.Authenticator) *client {
	t.Helper()
	dbs := make([]*pgtest.DB, shards)
	for i := range dbs {
		dbs[i] = pgtest.NewShardDB(t, i)
	}
	return newClientOver(t, dbs, authn)
}

// newClientOver serves the API over the given shard databases, in shard order.
func newClientOver(t *testing.T, dbs []*pgtest.DB, authn *auth.Authenticator, configure ...func(*service.Service, *httpapi.API)) *client {
	t.Helper()
	set := settest.Batched(t, dbs, 20)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := service.New(set, service.NewMetrics(prometheus.NewRegistry()), log)
	api := httpapi.New(svc, authn, httpapi.NewMetrics(prometheus.NewRegistry()), log)
	for _, c := range configure {
		c(svc, api)
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.Config = api.Server() // the limits the service runs with
	srv.Start()
	t.Cleanup(srv.Close)
	return &client{t: t, base: srv.URL, set: set, api: api}
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) code() ledger.Code {
	var p ledger.Problem
	_ = json.Unmarshal(r.body, &p)
	return p.Code
}

func (r response) field(name string) string {
	var m map[string]any
	_ = json.Unmarshal(r.body, &m)
	s, _ := m[name].(string)
	return s
}

// do sends a request; headers are name, value pairs. JSON bodies get the JSON content type.
func (c *client) do(method, path, body string, headers ...string) response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (c *client) must(want int, r response) response {
	c.t.Helper()
	if r.status != want {
		c.t.Fatalf("status %d, want %d: %s", r.status, want, r.body)
	}
	return r
}

// ownerPerShard finds an owner whose accounts open on each shard (owners hash to shards).
func (c *client) ownerPerShard(shards int) map[int]string {
	owners := map[int]string{}
	for i := 0; len(owners) < shards; i++ {
		o := fmt.Sprintf("owner-%d", i)
		owners[c.set.Placement(o)] = o
	}
	return owners
}

func (c *client) asset(code string, scale int) {
	c.t.Helper()
	r := c.do("POST", "/v1/assets", fmt.Sprintf(`{"code":%q,"scale":%d}`, code, scale))
	if r.status != 201 && r.status != 200 {
		c.t.Fatalf("register %s: %d %s", code, r.status, r.body)
	}
}

func (c *client) account(owner, asset string) string {
	c.t.Helper()
	return c.must(201, c.do("POST", "/v1/accounts", fmt.Sprintf(`{"owner":%q,"asset":%q}`, owner, asset))).field("id")
}

func (c *client) transfer(key, from, to, amount, asset string) response {
	c.t.Helper()
	return c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":%q,"asset":%q}`, from, to, amount, asset), "Idempotency-Key", key)
}

func (c *client) balance(id string) string {
	c.t.Helper()
	return c.must(200, c.do("GET", "/v1/accounts/"+id+"/balance", "")).field("balance")
}

// A balance as of a moment counts the transactions made by then.
func TestBalanceAtAMoment(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	a, b := c.account("alice", "USD"), c.account("bob", "USD")
	before := time.Now().UTC()
	time.Sleep(2 * time.Millisecond) // balances at a moment count whole milliseconds
	c.must(201, c.transfer("in", "external", a, "12.50", "USD"))
	between := time.Now().UTC()
	time.Sleep(2 * time.Millisecond)
	c.must(201, c.transfer("pay", a, b, "2.25", "USD"))
	at := func(id string, t time.Time) response {
		return c.do("GET", "/v1/accounts/"+id+"/balance?at="+t.Format(time.RFC3339Nano), "")
	}
	for _, tc := range []struct {
		at   time.Time
		want string
	}{{before, "0.00"}, {between, "12.50"}, {time.Now().Add(time.Second), "10.25"}} {
		r := c.must(200, at(a, tc.at))
		if r.field("balance") != tc.want || r.field("asset") != "USD" || r.field("at") != tc.at.Format(time.RFC3339Nano) {
			t.Errorf("balance at %s: %s, want %s", tc.at, r.body, tc.want)
		}
	}
	// A balance counts what pending transfers reserved, now and as of a moment.
	hold := c.must(201, c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD","pending":true}`, a, b),
		"Idempotency-Key", "hold")).field("id")
	held := time.Now().UTC()
	time.Sleep(2 * time.Millisecond)
	c.must(201, c.do("POST", "/v1/transfers/"+hold+"/post", `{}`, "Idempotency-Key", "settle"))
	if now, then := c.balance(a), c.must(200, at(a, held)).field("balance"); now != "9.25" || then != "10.25" {
		t.Errorf("balance with a transfer reserved then posted: %s now, %s while reserved; want 9.25 and 10.25", now, then)
	}
	if r := c.do("GET", "/v1/accounts/"+a+"/balance?at=yesterday", ""); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("at=yesterday: %d %s", r.status, r.body)
	}
	missing, _ := ledger.NewAccountID(0)
	if r := at(missing.String(), between); r.code() != ledger.CodeAccountNotFound {
		t.Errorf("missing account's balance at a moment: %d %s", r.status, r.body)
	}
}

// Reads before the retention horizon say the history is archived: a transaction, a
// balance at a moment, and the end of an account's entries.
func TestReadsBeforeTheHorizonSayArchived(t *testing.T) {
	ctx := context.Background()
	db := pgtest.NewShardDB(t, 0)
	t0 := time.Now().UTC().Truncate(24 * time.Hour).Add(-2 * 24 * time.Hour)
	journaltest.DailyPartitionsSince(t, db.SuperConn(t), t0)
	pool, err := pgxpool.New(ctx, db.SuperDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	owner := store.New(pool)
	if _, err := owner.MakeCheckpoints(ctx, store.CheckpointGrace); err != nil {
		t.Fatal(err)
	}
	if err := owner.DropArchivedPartition(ctx, "history", []byte(`{"file":"history.tar.gz"}`)); err != nil {
		t.Fatal(err)
	}
	c := newClientOver(t, []*pgtest.DB{db}, nil)
	c.asset("USD", 2)
	a := c.account("alice", "USD")
	c.must(201, c.transfer("in", "external", a, "3", "USD"))
	page := c.must(200, c.do("GET", "/v1/accounts/"+a+"/entries", ""))
	if got := page.field("archived_before"); got != t0.Format(time.RFC3339) {
		t.Errorf("entries' last page: %s, want archived_before %s", page.body, t0.Format(time.RFC3339))
	}
	old := journaltest.TransactionMadeAt(t, 0, t0.Add(-time.Hour))
	if r := c.do("GET", "/v1/transactions/"+old.String(), ""); r.status != 410 || r.code() != ledger.CodeHistoryArchived {
		t.Errorf("a transaction before the horizon: %d %s", r.status, r.body)
	}
	if r := c.do("GET", "/v1/accounts/"+a+"/balance?at="+t0.Add(-time.Hour).Format(time.RFC3339), ""); r.status != 410 || r.code() != ledger.CodeHistoryArchived {
		t.Errorf("a balance before the horizon: %d %s", r.status, r.body)
	}
	recent := journaltest.TransactionMadeAt(t, 0, t0.Add(time.Hour))
	if r := c.do("GET", "/v1/transactions/"+recent.String(), ""); r.code() != ledger.CodeTransactionNotFound {
		t.Errorf("a missing transaction after the horizon: %d %s", r.status, r.body)
	}
}

func TestAssets(t *testing.T) {
	c := newClient(t, 1, nil)
	r := c.must(201, c.do("POST", "/v1/assets", `{"code":"USD","scale":2}`))
	var a struct {
		Code             string
		Scale            int
		ExternalAccounts []string `json:"external_accounts"`
	}
	if err := json.Unmarshal(r.body, &a); err != nil || a.Code != "USD" || a.Scale != 2 || len(a.ExternalAccounts) != 1 {
		t.Fatalf("asset: %s", r.body)
	}
	c.must(200, c.do("POST", "/v1/assets", `{"code":"USD","scale":2}`))
	if r := c.do("POST", "/v1/assets", `{"code":"USD","scale":3}`); r.code() != ledger.CodeAssetScaleConflict || r.status != 409 {
		t.Errorf("scale conflict: %d %s", r.status, r.body)
	}
	for _, body := range []string{`{"code":"usd","scale":2}`, `{"code":"USD"}`, `{"code":"USD","scale":19}`, `{"code":"U","scale":2}`} {
		if r := c.do("POST", "/v1/assets", body); r.code() != ledger.CodeInvalidRequest {
			t.Errorf("%s: %d %s", body, r.status, r.body)
		}
	}
	c.must(200, c.do("GET", "/v1/assets/USD", ""))
	if r := c.do("GET", "/v1/assets/EUR", ""); r.code() != ledger.CodeAssetNotFound || r.status != 404 {
		t.Errorf("missing asset: %d %s", r.status, r.body)
	}
	if r := c.must(200, c.do("GET", "/v1/assets", "")); !bytes.Contains(r.body, []byte(`"USD"`)) {
		t.Errorf("list: %s", r.body)
	}
}

func TestAccountsEndpoints(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	r := c.must(201, c.do("POST", "/v1/accounts", `{"owner":"alice","asset":"USD","balance_floor":"-10.5","metadata":{"b":1,"a":"x"}}`))
	id := r.field("id")
	if r.field("balance_floor") != "-10.50" || r.field("status") != "active" || !bytes.Contains(r.body, []byte(`"metadata":{"a":"x","b":1}`)) {
		t.Errorf("created account: %s", r.body)
	}
	if got := c.must(200, c.do("GET", "/v1/accounts/"+id, "")); got.field("id") != id {
		t.Errorf("get: %s", got.body)
	}
	if b := c.balance(id); b != "0.00" {
		t.Errorf("balance %s", b)
	}
	bad := map[string]ledger.Code{
		`{"owner":"","asset":"USD"}`:                                         ledger.CodeInvalidRequest,
		`{"owner":"tally:x","asset":"USD"}`:                                  ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD","extra":1}`:                              ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"EUR"}`:                                        ledger.CodeAssetNotFound,
		`{"owner":"a","asset":"USD","balance_floor":"5"}`:                    ledger.CodeInvalidAmount,
		`{"owner":"a","asset":"USD","balance_floor":"1.001"}`:                ledger.CodeInvalidAmount,
		`{"owner":"a","asset":"USD","metadata":[1]}`:                         ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD","metadata":"x"}`:                         ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD"} {}`:                                     ledger.CodeInvalidRequest,
		`{"owner":"a",`:                                                      ledger.CodeInvalidRequest,
		`[]`:                                                                 ledger.CodeInvalidRequest,
		`{"owner":5,"asset":"USD"}`:                                          ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD","balance_slots":0}`:                      ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD","balance_slots":65}`:                     ledger.CodeInvalidRequest,
		`{"owner":"a","asset":"USD","balance_slots":2,"balance_floor":"-1"}`: ledger.CodeInvalidRequest,
	}
	for body, want := range bad {
		if r := c.do("POST", "/v1/accounts", body); r.code() != want || r.status != want.Status() {
			t.Errorf("%s: got %d %s, want %s", body, r.status, r.body, want)
		}
	}
	if r := c.do("GET", "/v1/accounts/not-an-id", ""); r.code() != ledger.CodeInvalidID || r.status != 400 {
		t.Errorf("bad id: %d %s", r.status, r.body)
	}
	missing, _ := ledger.NewAccountID(0)
	if r := c.do("GET", "/v1/accounts/"+missing.String(), ""); r.code() != ledger.CodeAccountNotFound || r.status != 404 {
		t.Errorf("missing: %d %s", r.status, r.body)
	}
	if r := c.do("GET", "/v1/accounts/"+missing.String()+"/balance", ""); r.code() != ledger.CodeAccountNotFound {
		t.Errorf("missing balance: %d %s", r.status, r.body)
	}
	if r := c.do("GET", "/v1/accounts/"+missing.String()+"/entries", ""); r.code() != ledger.CodeAccountNotFound {
		t.Errorf("missing entries: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/accounts", `{"owner":"a","asset":"USD"}`, "Content-Type", "text/plain"); r.code() != ledger.CodeUnsupportedMediaType || r.status != 415 {
		t.Errorf("media type: %d %s", r.status, r.body)
	}
	huge := `{"owner":"a","asset":"USD","metadata":{"x":"` + strings.Repeat("y", httpapi.MaxBodyBytes) + `"}}`
	if r := c.do("POST", "/v1/accounts", huge); r.code() != ledger.CodeRequestTooLarge || r.status != 413 {
		t.Errorf("too large: %d %.200s", r.status, r.body)
	}
	bigMeta := `{"owner":"a","asset":"USD","metadata":{"x":"` + strings.Repeat("y", ledger.MaxMetadataBytes) + `"}}`
	if r := c.do("POST", "/v1/accounts", bigMeta); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("metadata too large: %d %.200s", r.status, r.body)
	}
}

func TestAccountStatusEndpoints(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	a, b := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("d", "external", a, "10", "USD"))
	if r := c.must(200, c.do("POST", "/v1/accounts/"+a+"/freeze", "")); r.field("status") != "frozen" {
		t.Errorf("freeze: %s", r.body)
	}
	if r := c.transfer("t1", a, b, "1", "USD"); r.code() != ledger.CodeAccountFrozen || r.status != 422 {
		t.Errorf("transfer from frozen: %d %s", r.status, r.body)
	}
	c.must(200, c.do("POST", "/v1/accounts/"+a+"/unfreeze", ""))
	if r := c.do("POST", "/v1/accounts/"+a+"/close", ""); r.code() != ledger.CodeAccountNotEmpty || r.status != 409 {
		t.Errorf("close non-empty: %d %s", r.status, r.body)
	}
	c.must(201, c.transfer("t2", a, "external", "10.00", "USD"))
	c.must(200, c.do("POST", "/v1/accounts/"+a+"/close", ""))
	if r := c.transfer("t3", b, a, "0.01", "USD"); r.code() != ledger.CodeAccountClosed {
		t.Errorf("transfer to closed: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/accounts/"+a+"/unfreeze", ""); r.code() != ledger.CodeAccountClosed {
		t.Errorf("reopen closed: %d %s", r.status, r.body)
	}
	var asset struct {
		ExternalAccounts []string `json:"external_accounts"`
	}
	_ = json.Unmarshal(c.must(200, c.do("GET", "/v1/assets/USD", "")).body, &asset)
	if r := c.do("POST", "/v1/accounts/"+asset.ExternalAccounts[0]+"/freeze", ""); r.code() != ledger.CodeExternalAccountReadOnly {
		t.Errorf("freeze external: %d %s", r.status, r.body)
	}
}

func TestTransfersAndHistory(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	c.asset("EUR", 2)
	a, b := c.account("alice", "USD"), c.account("bob", "USD")
	eur := c.account("carol", "EUR")
	dep := c.must(201, c.transfer("dep", "external", a, "100", "USD"))
	if dep.header.Get("Content-Type") != "application/json" || dep.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("headers: %v", dep.header)
	}
	pay := c.must(201, c.transfer("pay", a, b, "12.34", "USD"))
	if c.balance(a) != "87.66" || c.balance(b) != "12.34" {
		t.Errorf("balances %s %s", c.balance(a), c.balance(b))
	}
	got := c.must(200, c.do("GET", "/v1/transactions/"+pay.field("id"), ""))
	if !bytes.Equal(got.body, pay.body) {
		t.Errorf("GET transaction differs from POST response:\n%s\n%s", got.body, pay.body)
	}

	cases := []struct {
		name, from, to, amount, asset string
		want                          ledger.Code
	}{
		{"insufficient", b, a, "12.35", "USD", ledger.CodeInsufficientFunds},
		{"same", a, a, "1", "USD", ledger.CodeSameAccount},
		{"mismatch", a, eur, "1", "USD", ledger.CodeAssetMismatch},
		{"missing", a, mustID(t), "1", "USD", ledger.CodeAccountNotFound},
		{"bad id", a, "nope", "1", "USD", ledger.CodeInvalidID},
		{"no to", a, "", "1", "USD", ledger.CodeInvalidRequest},
		{"too many decimals", a, b, "1.001", "USD", ledger.CodeInvalidAmount},
		{"zero", a, b, "0.00", "USD", ledger.CodeInvalidAmount},
		{"negative", a, b, "-1", "USD", ledger.CodeInvalidAmount},
		{"malformed", a, b, "1,5", "USD", ledger.CodeInvalidAmount},
		{"unknown asset", a, b, "1", "GBP", ledger.CodeAssetNotFound},
		{"both external", "external", "external", "1", "USD", ledger.CodeSameAccount},
	}
	for i, tt := range cases {
		r := c.transfer(fmt.Sprintf("bad-%d", i), tt.from, tt.to, tt.amount, tt.asset)
		if r.code() != tt.want || r.status != tt.want.Status() {
			t.Errorf("%s: %d %s, want %s", tt.name, r.status, r.body, tt.want)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%s: content type %q", tt.name, ct)
		}
	}
	if r := c.do("POST", "/v1/transfers", `{"from_account":"external","to_account":"`+a+`","amount":5,"asset":"USD"}`, "Idempotency-Key", "num"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("numeric amount: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/transfers", `{"from_account":"external","to_account":"`+a+`","amount":"5","asset":"USD"}`); r.code() != ledger.CodeIdempotencyKeyRequired || r.status != 400 {
		t.Errorf("no key: %d %s", r.status, r.body)
	}
	if r := c.transfer(strings.Repeat("k", 256), "external", a, "1", "USD"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("long key: %d %s", r.status, r.body)
	}
	if c.balance(a) != "87.66" || c.balance(b) != "12.34" {
		t.Errorf("rejections changed balances: %s %s", c.balance(a), c.balance(b))
	}

	// History, newest first, in pages of 2 with a cursor.
	for i := range 3 {
		c.must(201, c.transfer(fmt.Sprintf("more-%d", i), a, b, "1", "USD"))
	}
	var seen []string
	cursor := ""
	for pages := 0; ; pages++ {
		r := c.must(200, c.do("GET", "/v1/accounts/"+a+"/entries?limit=2&cursor="+cursor, ""))
		var p struct {
			Data []struct {
				ID, Amount, BalanceAfter string
			}
			NextCursor string `json:"next_cursor"`
		}
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Data {
			seen = append(seen, e.Amount)
		}
		if p.NextCursor == "" {
			break
		}
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
		cursor = p.NextCursor
	}
	if strings.Join(seen, " ") != "-1.00 -1.00 -1.00 -12.34 100.00" {
		t.Errorf("history: %v", seen)
	}
	for _, q := range []string{"?limit=0", "?limit=201", "?limit=x", "?cursor=%%%", "?cursor=eA"} {
		if r := c.do("GET", "/v1/accounts/"+a+"/entries"+q, ""); r.code() != ledger.CodeInvalidRequest {
			t.Errorf("entries%s: %d %s", q, r.status, r.body)
		}
	}
	if r := c.do("GET", "/v1/transactions/"+mustID(t), ""); r.code() != ledger.CodeTransactionNotFound || r.status != 404 {
		t.Errorf("missing transaction: %d %s", r.status, r.body)
	}
	if r := c.do("GET", "/v1/transactions/xyz", ""); r.code() != ledger.CodeInvalidID {
		t.Errorf("bad transaction id: %d %s", r.status, r.body)
	}
}

func mustID(t *testing.T) string {
	id, err := ledger.NewAccountID(0)
	if err != nil {
		t.Fatal(err)
	}
	return id.String()
}

func TestTransactionsEndpoint(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	c.asset("JPY", 0)
	a, b, d := c.account("alice", "USD"), c.account("bob", "USD"), c.account("dan", "JPY")
	body := `{"postings":[
		{"from_account":"external","to_account":"` + a + `","amount":"50","asset":"USD"},
		{"from_account":"` + a + `","to_account":"` + b + `","amount":"20","asset":"USD"},
		{"from_account":"external","to_account":"` + d + `","amount":"700","asset":"JPY"}],
		"metadata":{"order":"o-1"}}`
	r := c.must(201, c.do("POST", "/v1/transactions", body, "Idempotency-Key", "multi"))
	if c.balance(a) != "30.00" || c.balance(b) != "20.00" || c.balance(d) != "700" {
		t.Errorf("balances after multi-posting transaction: %s %s %s", c.balance(a), c.balance(b), c.balance(d))
	}
	if !bytes.Contains(r.body, []byte(`"metadata":{"order":"o-1"}`)) {
		t.Errorf("metadata: %s", r.body)
	}
	// All or nothing: the second posting overdraws, so the first must not apply either.
	body = `{"postings":[
		{"from_account":"` + b + `","to_account":"` + a + `","amount":"5","asset":"USD"},
		{"from_account":"` + b + `","to_account":"` + a + `","amount":"16","asset":"USD"}]}`
	if r := c.do("POST", "/v1/transactions", body, "Idempotency-Key", "overdraw"); r.code() != ledger.CodeInsufficientFunds {
		t.Errorf("overdraw: %d %s", r.status, r.body)
	}
	if c.balance(b) != "20.00" {
		t.Errorf("a rejected transaction moved money: %s", c.balance(b))
	}
	if r := c.do("POST", "/v1/transactions", `{"postings":[]}`, "Idempotency-Key", "empty"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("empty: %d %s", r.status, r.body)
	}
	many := `{"postings":[` + strings.TrimSuffix(strings.Repeat(`{"from_account":"`+a+`","to_account":"`+b+`","amount":"0.01","asset":"USD"},`, ledger.MaxPostings+1), ",") + `]}`
	if r := c.do("POST", "/v1/transactions", many, "Idempotency-Key", "many"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("too many postings: %d %s", r.status, r.body)
	}
	if r := c.do("POST", "/v1/transactions", `{"postings":[{"from_account":"`+a+`","to_account":"`+b+`","amount":"1","asset":"USD","memo":"x"}]}`, "Idempotency-Key", "unknown"); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("unknown posting field: %d %s", r.status, r.body)
	}
}

func TestIdempotencyOverHTTP(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	a, b := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("dep", "external", a, "10", "USD"))
	first := c.must(201, c.transfer("k", a, b, "1.5", "USD"))
	// The same request, spelled differently, is the same request.
	again := c.must(201, c.transfer("k", a, b, "1.50", "USD"))
	if !bytes.Equal(first.body, again.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replay: %s / %s, header %q", first.body, again.body, again.header.Get("Idempotent-Replayed"))
	}
	if r := c.transfer("k", a, b, "2", "USD"); r.code() != ledger.CodeIdempotencyKeyReused || r.status != 409 {
		t.Errorf("reused key: %d %s", r.status, r.body)
	}
	// A transfer and a one-posting transaction are different requests.
	if r := c.do("POST", "/v1/transactions", `{"postings":[{"from_account":"`+a+`","to_account":"`+b+`","amount":"1.5","asset":"USD"}]}`, "Idempotency-Key", "k"); r.code() != ledger.CodeIdempotencyKeyReused {
		t.Errorf("key reused across endpoints: %d %s", r.status, r.body)
	}
	// A rejection replays as the same rejection.
	rej := c.transfer("r", a, b, "100", "USD")
	c.must(201, c.transfer("dep2", "external", a, "1000", "USD"))
	if r := c.transfer("r", a, b, "100", "USD"); !bytes.Equal(r.body, rej.body) || r.status != 422 {
		t.Errorf("rejection replay: %d %s", r.status, r.body)
	}
	if c.balance(b) != "1.50" {
		t.Errorf("bob %s", c.balance(b))
	}
}

func TestAuthentication(t *testing.T) {
	c := newClient(t, 1, tokens(t, "# callers\nshop:0123456789abcdef0123\nbank:fedcba9876543210fedc\n"))
	if r := c.do("GET", "/v1/assets", ""); r.code() != ledger.CodeUnauthorized || r.status != 401 {
		t.Errorf("no token: %d %s", r.status, r.body)
	}
	c.token = "wrong-token-wrong-token"
	if r := c.do("GET", "/v1/assets", ""); r.code() != ledger.CodeUnauthorized {
		t.Errorf("bad token: %d %s", r.status, r.body)
	}
	c.token = "0123456789abcdef0123"
	c.asset("USD", 2)
	a, b := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("dep", "external", a, "10", "USD"))
	c.must(201, c.transfer("k", a, b, "1", "USD"))
	// Keys are per caller: the bank's "k" is not the shop's "k".
	c.token = "fedcba9876543210fedc"
	if r := c.must(201, c.transfer("k", a, b, "2", "USD")); r.header.Get("Idempotent-Replayed") != "" {
		t.Error("another caller's key was replayed")
	}
	if c.balance(b) != "3.00" {
		t.Errorf("bob %s", c.balance(b))
	}
}

// tokens is an authenticator over static tokens.
func tokens(t *testing.T, lines string) *auth.Authenticator {
	t.Helper()
	tok, err := auth.ParseTokens(strings.NewReader(lines))
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.New(tok, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestCrossShard(t *testing.T) {
	c := newClient(t, 2, nil)
	c.asset("USD", 2)
	owners := c.ownerPerShard(2)
	a0, a1 := c.account(owners[0], "USD"), c.account(owners[1], "USD")
	id0, _ := ledger.ParseAccountID(a0)
	id1, _ := ledger.ParseAccountID(a1)
	if id0.Shard() != 0 || id1.Shard() != 1 {
		t.Fatalf("placement: %d %d", id0.Shard(), id1.Shard())
	}
	c.must(201, c.transfer("d0", "external", a0, "5", "USD"))
	c.must(201, c.transfer("d1", "external", a1, "5", "USD"))
	// A transfer crosses shards; a transaction of several postings across shards does not.
	x := c.must(201, c.transfer("x", a0, a1, "1", "USD"))
	if x.field("state") != "posted" || x.field("to_account") != a1 {
		t.Errorf("cross-shard transfer: %s", x.body)
	}
	if again := c.must(201, c.transfer("x", a0, a1, "1", "USD")); !bytes.Equal(again.body, x.body) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Errorf("replayed cross-shard transfer: %s", again.body)
	}
	if got := c.must(200, c.do("GET", "/v1/transfers/"+x.field("id"), "")); !bytes.Equal(got.body, x.body) {
		t.Errorf("GET of the cross-shard transfer: %s", got.body)
	}
	if r := c.do("POST", "/v1/transfers/"+x.field("id")+"/void", "", "Idempotency-Key", "v"); r.code() != ledger.CodeTransferResolved {
		t.Errorf("voiding a settled cross-shard transfer: %d %s", r.status, r.body)
	}
	if r := c.transfer("short", a0, a1, "4.01", "USD"); r.code() != ledger.CodeInsufficientFunds {
		t.Errorf("cross-shard overdraft: %d %s", r.status, r.body)
	}
	if c.balance(a0) != "4.00" || c.balance(a1) != "6.00" {
		t.Errorf("after the cross-shard transfer: %s %s", c.balance(a0), c.balance(a1))
	}
	if r := c.do("POST", "/v1/transactions", fmt.Sprintf(`{"postings":[{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD"},{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD"}]}`,
		a0, a1, a1, a0), "Idempotency-Key", "multi"); r.code() != ledger.CodeCrossShardNotSupported || r.status != 422 {
		t.Errorf("a transaction across shards: %d %s", r.status, r.body)
	}
	// The destination refuses a closed account: the money returns to the source.
	closed := c.account(owners[1], "USD")
	c.must(200, c.do("POST", "/v1/accounts/"+closed+"/close", ""))
	if r := c.transfer("to-closed", a0, closed, "1", "USD"); r.code() != ledger.CodeAccountClosed {
		t.Errorf("to a closed account on another shard: %d %s", r.status, r.body)
	}
	if c.balance(a0) != "4.00" {
		t.Errorf("after the refusal: %s", c.balance(a0))
	}
	vs, err := c.set.Driver().Verify(t.Context())
	if err != nil || len(vs) > 0 {
		t.Errorf("cluster verify: %v %v", err, vs)
	}
	other := c.account(owners[1], "USD")
	c.must(201, c.transfer("same", a1, other, "1", "USD"))
	var list struct{ Data []struct{ ID string } }
	_ = json.Unmarshal(c.must(200, c.do("GET", "/v1/accounts?owner="+owners[1], "")).body, &list)
	if len(list.Data) != 3 {
		t.Errorf("owner list: %+v", list)
	}
}

func TestListAccountsPagination(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	want := map[string]bool{}
	for range 5 {
		want[c.account("paula", "USD")] = true
	}
	c.account("someone-else", "USD")
	got := map[string]bool{}
	cursor := ""
	for range 4 {
		r := c.must(200, c.do("GET", "/v1/accounts?owner=paula&limit=2&cursor="+cursor, ""))
		var p struct {
			Data       []struct{ ID, Owner string }
			NextCursor string `json:"next_cursor"`
		}
		_ = json.Unmarshal(r.body, &p)
		for _, a := range p.Data {
			if got[a.ID] || a.Owner != "paula" {
				t.Errorf("duplicate or foreign account %s %s", a.ID, a.Owner)
			}
			got[a.ID] = true
		}
		if cursor = p.NextCursor; cursor == "" {
			break
		}
	}
	if len(got) != len(want) {
		t.Errorf("listed %d accounts, want %d", len(got), len(want))
	}
	if r := c.do("GET", "/v1/accounts", ""); r.code() != ledger.CodeInvalidRequest {
		t.Errorf("no owner: %d %s", r.status, r.body)
	}
}

func TestRoutingProblems(t *testing.T) {
	c := newClient(t, 1, nil)
	if r := c.do("GET", "/v2/nothing", ""); r.code() != ledger.CodeNotFound || r.status != 404 {
		t.Errorf("unknown path: %d %s", r.status, r.body)
	}
	if r := c.do("DELETE", "/v1/assets", ""); r.code() != ledger.CodeMethodNotAllowed || r.status != 405 {
		t.Errorf("wrong method: %d %s", r.status, r.body)
	}
}

func TestBalanceLimit(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("PTS", 0)
	a := c.account("alice", "PTS")
	c.must(201, c.transfer("max", "external", a, "9223372036854775807", "PTS"))
	if r := c.transfer("over", "external", a, "1", "PTS"); r.code() != ledger.CodeBalanceLimitExceeded || r.status != 422 {
		t.Errorf("overflow: %d %s", r.status, r.body)
	}
	if r := c.transfer("big", "external", a, "9223372036854775808", "PTS"); r.code() != ledger.CodeInvalidAmount {
		t.Errorf("amount beyond int64: %d %s", r.status, r.body)
	}
}

// TestDatabaseProblemsMatchGoCatalogue keeps the codes, statuses and titles that
// tally.problem renders in SQL identical to the Go catalogue.
func TestDatabaseProblemsMatchGoCatalogue(t *testing.T) {
	conn := pgtest.NewDB(t).SuperConn(t)
	for _, code := range []ledger.Code{
		ledger.CodeAccountNotFound, ledger.CodeAccountFrozen, ledger.CodeAccountClosed, ledger.CodeAssetMismatch,
		ledger.CodeSameAccount, ledger.CodeInsufficientFunds, ledger.CodeBalanceLimitExceeded, ledger.CodeIdempotencyKeyReused,
		ledger.CodeUnavailable, ledger.CodeTransferNotFound, ledger.CodeTransferResolved, ledger.CodeTransferExpired,
		ledger.CodeAmountExceedsPending, ledger.CodeTransactionNotFound, ledger.CodeAlreadyReversed, ledger.CodeNotReversible,
		ledger.CodeBetweenShards,
	} {
		var status int
		var body string
		if err := conn.QueryRow(context.Background(), "SELECT status, body FROM tally.problem($1, $2)", string(code), `detail "quoted"`).Scan(&status, &body); err != nil {
			t.Fatalf("%s: %v", code, err)
		}
		want, _ := json.Marshal((&ledger.Error{Code: code, Detail: `detail "quoted"`}).Problem())
		if body != string(want) || status != code.Status() {
			t.Errorf("%s:\n sql %d %s\n go  %d %s", code, status, body, code.Status(), want)
		}
	}
}

// What a new user probing the API found answering 500 ("safe to retry", which could never
// succeed) or differently from its promise: each is a client error, or the same bytes.
func TestProbesAnswerClientErrors(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	a := c.account("alice", "USD")
	for _, body := range []string{`{"owner":"a\u0000b","asset":"USD"}`, `{"owner":"a\u0007","asset":"USD"}`} {
		if r := c.do("POST", "/v1/accounts", body); r.status != 400 || r.code() != ledger.CodeInvalidRequest {
			t.Errorf("POST /v1/accounts %s: %d %s", body, r.status, r.body)
		}
	}
	for _, q := range []string{"%00", "%ff", "a%00b"} {
		if r := c.do("GET", "/v1/accounts?owner="+q, ""); r.status != 400 || r.code() != ledger.CodeInvalidRequest {
			t.Errorf("GET /v1/accounts?owner=%s: %d %s", q, r.status, r.body)
		}
	}
	for i, meta := range []string{`{"a":"\u0000"}`, `{"a":1e200000}`, `{"\u0000":1}`, `{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`} {
		body := fmt.Sprintf(`{"from_account":"external","to_account":%q,"amount":"1","asset":"USD","metadata":%s}`, a, meta)
		if r := c.do("POST", "/v1/transfers", body, "Idempotency-Key", fmt.Sprint("poison", i)); r.status != 400 || r.code() != ledger.CodeInvalidRequest {
			t.Errorf("metadata %.40s: %d %s", meta, r.status, r.body)
		}
		if r := c.do("POST", "/v1/accounts", `{"owner":"bob","asset":"USD","metadata":`+meta+`}`); r.status != 400 {
			t.Errorf("account metadata %.40s: %d %s", meta, r.status, r.body)
		}
	}
	// GET answers exactly what the POST answered, whatever spelling the numbers had.
	body := fmt.Sprintf(`{"from_account":"external","to_account":%q,"amount":"1","asset":"USD","metadata":{"n":1e3,"z":-0,"f":1.50e1,"s":1E-3}}`, a)
	posted := c.must(201, c.do("POST", "/v1/transfers", body, "Idempotency-Key", "numbers"))
	got := c.must(200, c.do("GET", "/v1/transactions/"+posted.field("id"), ""))
	if !bytes.Equal(got.body, posted.body) || !bytes.Contains(posted.body, []byte(`{"f":15.0,"n":1000,"s":0.001,"z":0}`)) {
		t.Errorf("POST answered %s\nGET answered  %s", posted.body, got.body)
	}
	acc := c.must(201, c.do("POST", "/v1/accounts", `{"owner":"carol","asset":"USD","metadata":{"n":2E2}}`))
	if again := c.must(200, c.do("GET", "/v1/accounts/"+acc.field("id"), "")); !bytes.Equal(again.body, acc.body) {
		t.Errorf("account POST %s, GET %s", acc.body, again.body)
	}
	// A header past the limit gets a problem document, not the server's plain text.
	r := c.do("GET", "/v1/assets", "", "X-Big", strings.Repeat("x", 2<<20))
	if r.status != 431 || r.code() != ledger.CodeHeaderTooLarge || r.header.Get("Content-Type") != "application/problem+json" {
		t.Errorf("2 MB header: %d %s %.100s", r.status, r.header.Get("Content-Type"), r.body)
	}
}

// Scaling 1 -> 2 shards with assets in use: the new shard gets every asset and its
// external account before it serves (SyncAssets, as the service runs at start), and an
// asset registered meanwhile by a replica that knows only the old shard is usable on the
// new one too. Before, every account opening and transfer routed to the new shard
// answered asset_not_found.
func TestScalingShardsKeepsAssets(t *testing.T) {
	shard0 := pgtest.NewShardDB(t, 0)
	old := newClientOver(t, []*pgtest.DB{shard0}, nil)
	old.asset("USD", 2)
	alice := old.account("alice", "USD")
	old.must(201, old.transfer("d1", "external", alice, "100", "USD"))

	grown := newClientOver(t, []*pgtest.DB{shard0, pgtest.NewShardDB(t, 1)}, nil)
	if err := grown.set.SyncAssets(context.Background()); err != nil {
		t.Fatal(err)
	}
	old.asset("EUR", 2) // a replica of the old shape registers an asset on shard 0 only
	var asset struct {
		ExternalAccounts []string `json:"external_accounts"`
	}
	_ = json.Unmarshal(grown.must(200, grown.do("GET", "/v1/assets/USD", "")).body, &asset)
	if len(asset.ExternalAccounts) != 2 {
		t.Fatalf("USD after scaling: %+v", asset)
	}
	onNew := map[int]int{}
	for i := 0; len(onNew) < 2; i++ { // owners until one lands on each shard
		owner := fmt.Sprint("owner", i)
		onNew[grown.set.Placement(owner)]++
		for _, code := range []string{"USD", "EUR"} {
			id := grown.account(owner, code)
			grown.must(201, grown.transfer("in"+owner+code, "external", id, "5", code))
			grown.must(201, grown.transfer("out"+owner+code, id, "external", "1", code))
			if b := grown.balance(id); b != "4.00" {
				t.Errorf("%s's %s balance %s", owner, code, b)
			}
		}
	}
	grown.must(201, grown.transfer("d2", alice, "external", "1", "USD"))
}

// Requests beyond --max-concurrent-requests are answered 503 at once with Retry-After,
// instead of queueing without bound; the ones in flight finish.
func TestConcurrentRequestLimit(t *testing.T) {
	db := pgtest.NewShardDB(t, 0)
	c := newClientOver(t, []*pgtest.DB{db}, nil, func(_ *service.Service, a *httpapi.API) { a.WithMaxConcurrentRequests(1) })
	c.asset("USD", 2)
	a := c.account("alice", "USD")
	// Hold alice's balance row, so a transfer to her waits in the database.
	super := db.SuperConn(t)
	tx, err := super.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), "SELECT 1 FROM tally.balances WHERE account_id = $1 FOR UPDATE", a); err != nil {
		t.Fatal(err)
	}
	first := make(chan response, 1)
	go func() { first <- c.transfer("held", "external", a, "1", "USD") }()
	var waiting int
	for deadline := time.Now().Add(time.Minute); waiting == 0; time.Sleep(10 * time.Millisecond) {
		if err := super.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the first transfer never reached the lock")
		}
	}
	r := c.do("GET", "/v1/assets", "")
	if r.status != 503 || r.code() != ledger.CodeUnavailable || r.header.Get("Retry-After") == "" {
		t.Errorf("second request while one is in flight: %d %s", r.status, r.body)
	}
	if err := tx.Rollback(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := <-first; r.status != 201 {
		t.Errorf("the request in flight: %d %s", r.status, r.body)
	}
	c.must(200, c.do("GET", "/v1/assets", ""))
}

// TestSlottedAccountThroughTheAPI: an account opened with balance slots reads as one
// account: its balance is the sum of the slots, its entries name their slot, and a debit
// drawn from several slots reads back as the posting that was sent.
func TestSlottedAccountThroughTheAPI(t *testing.T) {
	c := newClient(t, 1, nil)
	c.asset("USD", 2)
	r := c.must(201, c.do("POST", "/v1/accounts", `{"owner":"shop","asset":"USD","balance_slots":4}`))
	shop := r.field("id")
	if !bytes.Contains(r.body, []byte(`"balance_slots":4`)) {
		t.Errorf("created account: %s", r.body)
	}
	alice := c.account("alice", "USD")
	c.must(201, c.transfer("dep", "external", alice, "100", "USD"))
	for i := range 12 {
		c.must(201, c.transfer(fmt.Sprint("buy", i), alice, shop, "2.50", "USD"))
	}
	if b := c.balance(shop); b != "30.00" {
		t.Errorf("shop balance %s, want 30.00", b)
	}
	sweep := c.must(201, c.transfer("sweep", shop, alice, "30", "USD"))
	if got := c.must(200, c.do("GET", "/v1/transactions/"+sweep.field("id"), "")); !bytes.Equal(got.body, sweep.body) {
		t.Errorf("GET %s, POST %s", got.body, sweep.body)
	}
	if b := c.balance(shop); b != "0.00" {
		t.Errorf("shop balance %s after the sweep", b)
	}
	entries := c.must(200, c.do("GET", "/v1/accounts/"+shop+"/entries", ""))
	if !bytes.Contains(entries.body, []byte(`"slot":`)) {
		t.Errorf("entries of a slotted account: %s", entries.body)
	}
	if plain := c.must(200, c.do("GET", "/v1/accounts/"+alice+"/entries", "")); bytes.Contains(plain.body, []byte(`"slot":`)) {
		t.Errorf("entries of an account of one slot: %s", plain.body)
	}
}

// A key is the caller's across every shard: reused for a request on another shard, it
// answers 409 and moves nothing, whichever shard is its home and whichever kind of request
// used it first; the first request still replays.
func TestIdempotencyKeysAcrossShards(t *testing.T) {
	c := newClient(t, 2, nil)
	c.asset("USD", 2)
	owners := c.ownerPerShard(2)
	from, to := map[int]string{}, map[int]string{}
	for s := range 2 {
		from[s], to[s] = c.account(owners[s], "USD"), c.account(owners[s], "USD")
		c.must(201, c.transfer(fmt.Sprintf("deposit-%d", s), "external", from[s], "100", "USD"))
	}
	// A key of each home, used first on each shard.
	keys := map[[2]int]string{}
	for i := 0; len(keys) < 4; i++ {
		key := fmt.Sprintf("key-%d", i)
		home := c.set.KeyHome(auth.AnonymousCaller.Name, key)
		keys[[2]int{home, len(keys) % 2}] = key
	}
	for hs, key := range keys {
		home, first := hs[0], hs[1]
		second := 1 - first
		one := c.must(201, c.transfer(key, from[first], to[first], "1", "USD"))
		if r := c.transfer(key, from[second], to[second], "1", "USD"); r.status != 409 || r.code() != ledger.CodeIdempotencyKeyReused {
			t.Errorf("key %s (home %d) used on shard %d, reused on shard %d: %d %s", key, home, first, second, r.status, r.body)
		}
		pending := fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD","pending":true}`, from[second], to[second])
		if r := c.do("POST", "/v1/transfers", pending, "Idempotency-Key", key); r.status != 409 {
			t.Errorf("key %s reused for a pending transfer on shard %d: %d %s", key, second, r.status, r.body)
		}
		if r := c.transfer(key, from[first], to[second], "1", "USD"); r.status != 409 {
			t.Errorf("key %s reused for a transfer across shards: %d %s", key, r.status, r.body)
		}
		again := c.must(201, c.transfer(key, from[first], to[first], "1", "USD"))
		if !bytes.Equal(again.body, one.body) || again.header.Get("Idempotent-Replayed") != "true" {
			t.Errorf("key %s: the first request no longer replays: %s", key, again.body)
		}
	}
	for s := range 2 {
		if got := c.balance(to[s]); got != "2.00" {
			t.Errorf("shard %d's destination holds %s, want the two first transfers only", s, got)
		}
	}
	// A transfer across shards claims its key too.
	c.must(201, c.transfer("across", from[0], to[1], "1", "USD"))
	if r := c.transfer("across", from[1], to[1], "1", "USD"); r.status != 409 {
		t.Errorf("a key first used across shards, reused on shard 1: %d %s", r.status, r.body)
	}
	if r := c.transfer("across", from[0], to[0], "1", "USD"); r.status != 409 {
		t.Errorf("a key first used across shards, reused on shard 0: %d %s", r.status, r.body)
	}
}
