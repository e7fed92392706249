package httpapi_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/ratelimit"
	"github.com/tallyhq/tally/ledger/service"
)

// The callers of the authorization tests: alice and bob are users, each owning the
// accounts named after it.
const roleTokens = `
alice:alice-token-0123456789 roles=user
bob:bob-token-0123456789abc roles=user
ops:ops-token-0123456789abc roles=operator
root:root-token-0123456789a roles=admin
`

var tokenOf = map[string]string{
	"alice": "alice-token-0123456789", "bob": "bob-token-0123456789abc",
	"ops": "ops-token-0123456789abc", "root": "root-token-0123456789a",
}

// authzFixture prepares, as an admin, what a request acts on: alice's accounts, with
// money, and things made with them.
type authzFixture struct {
	*client
	n int
}

func (f *authzFixture) as(caller string) { f.token = tokenOf[caller] }

func (f *authzFixture) key() string { f.n++; return fmt.Sprintf("k-%d", f.n) }

// funded opens an account of alice's holding 100.
func (f *authzFixture) funded() string {
	f.as("root")
	id := f.account("alice", "USD")
	f.must(201, f.transfer(f.key(), "external", id, "100", "USD"))
	return id
}

func (f *authzFixture) pending() string {
	from, to := f.funded(), f.funded()
	return f.must(201, f.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"5","asset":"USD","pending":true}`, from, to),
		"Idempotency-Key", f.key())).field("id")
}

type authzRequest struct{ method, path, body string }

// TestEveryRouteHasItsRule sends every route as each kind of caller: alice, a user
// who owns what the request names; bob, a user who does not; an operator; an admin. A
// route the table lacks fails the test, so none ships without its rule.
func TestEveryRouteHasItsRule(t *testing.T) {
	c := newClient(t, 2, tokens(t, roleTokens))
	f := &authzFixture{client: c}
	f.as("root")
	c.asset("USD", 2)
	type want struct{ alice, bob, ops, root int }
	cases := map[string]struct {
		req  func() authzRequest
		want want
	}{
		"POST /v1/assets": {func() authzRequest { return authzRequest{"POST", "/v1/assets", `{"code":"EUR","scale":2}`} },
			want{403, 403, 403, 201}},
		"GET /v1/assets":        {func() authzRequest { return authzRequest{"GET", "/v1/assets", ""} }, want{200, 200, 200, 200}},
		"GET /v1/assets/{code}": {func() authzRequest { return authzRequest{"GET", "/v1/assets/USD", ""} }, want{200, 200, 200, 200}},
		"POST /v1/accounts": {func() authzRequest { return authzRequest{"POST", "/v1/accounts", `{"owner":"alice","asset":"USD"}`} },
			want{201, 403, 201, 201}},
		"GET /v1/accounts": {func() authzRequest { return authzRequest{"GET", "/v1/accounts?owner=alice", ""} },
			want{200, 403, 200, 200}},
		"GET /v1/accounts/{id}": {func() authzRequest { return authzRequest{"GET", "/v1/accounts/" + f.funded(), ""} },
			want{200, 404, 200, 200}},
		"POST /v1/accounts/{id}/freeze": {func() authzRequest { return authzRequest{"POST", "/v1/accounts/" + f.funded() + "/freeze", ""} },
			want{403, 403, 200, 200}},
		"POST /v1/accounts/{id}/unfreeze": {func() authzRequest {
			id := f.funded()
			f.must(200, f.do("POST", "/v1/accounts/"+id+"/freeze", ""))
			return authzRequest{"POST", "/v1/accounts/" + id + "/unfreeze", ""}
		}, want{403, 403, 200, 200}},
		"POST /v1/accounts/{id}/close": {func() authzRequest {
			return authzRequest{"POST", "/v1/accounts/" + f.account("alice", "USD") + "/close", ""}
		},
			want{403, 403, 403, 200}},
		"GET /v1/accounts/{id}/balance": {func() authzRequest { return authzRequest{"GET", "/v1/accounts/" + f.funded() + "/balance", ""} },
			want{200, 404, 200, 200}},
		"GET /v1/accounts/{id}/entries": {func() authzRequest { return authzRequest{"GET", "/v1/accounts/" + f.funded() + "/entries", ""} },
			want{200, 404, 200, 200}},
		"POST /v1/transfers": {func() authzRequest {
			return authzRequest{"POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD"}`, f.funded(), f.funded())}
		}, want{201, 404, 201, 201}},
		"POST /v1/transactions": {func() authzRequest {
			return authzRequest{"POST", "/v1/transactions", fmt.Sprintf(`{"postings":[{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD"}]}`, f.funded(), f.funded())}
		}, want{201, 404, 201, 201}},
		"GET /v1/transactions/{id}": {func() authzRequest {
			id := f.must(201, f.transfer(f.key(), f.funded(), f.funded(), "1", "USD")).field("id")
			return authzRequest{"GET", "/v1/transactions/" + id, ""}
		}, want{200, 404, 200, 200}},
		"POST /v1/transactions/{id}/reverse": {func() authzRequest {
			id := f.must(201, f.transfer(f.key(), f.funded(), f.funded(), "1", "USD")).field("id")
			return authzRequest{"POST", "/v1/transactions/" + id + "/reverse", ""}
		}, want{403, 403, 201, 201}},
		"GET /v1/transfers/{id}":       {func() authzRequest { return authzRequest{"GET", "/v1/transfers/" + f.pending(), ""} }, want{200, 404, 200, 200}},
		"POST /v1/transfers/{id}/post": {func() authzRequest { return authzRequest{"POST", "/v1/transfers/" + f.pending() + "/post", ""} }, want{201, 404, 201, 201}},
		"POST /v1/transfers/{id}/void": {func() authzRequest { return authzRequest{"POST", "/v1/transfers/" + f.pending() + "/void", ""} }, want{201, 404, 201, 201}},
	}
	routes := c.api.Routes()
	for pattern := range routes {
		if _, ok := cases[pattern]; !ok {
			t.Errorf("route %s has no case here: add one with the status each role gets", pattern)
		}
	}
	for pattern, tc := range cases {
		if _, ok := routes[pattern]; !ok {
			t.Errorf("case %s names no route", pattern)
			continue
		}
		for caller, status := range map[string]int{"alice": tc.want.alice, "bob": tc.want.bob, "ops": tc.want.ops, "root": tc.want.root} {
			f.as("root")
			req := tc.req()
			f.as(caller)
			r := f.do(req.method, req.path, req.body, "Idempotency-Key", f.key())
			if r.status != status {
				t.Errorf("%s as %s: %d, want %d: %s", pattern, caller, r.status, status, r.body)
			}
			if status == 403 && r.code() != "forbidden" || status == 404 && !strings.HasSuffix(string(r.code()), "not_found") {
				t.Errorf("%s as %s: code %s", pattern, caller, r.code())
			}
		}
	}
}

// hs256 signs a JWT for the test issuer with the secret.
func hs256(t *testing.T, secret []byte, sub string, roles ...string) string {
	t.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
		"iss": "https://issuer.test", "aud": "tally", "sub": sub, "roles": roles,
		"iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix(),
	}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestUsersTouchOnlyTheirOwn: a user (here from a JWT, its subject the owner) moves
// money only between its own accounts, opens accounts only for itself and without an
// overdraft, sees only what touches its accounts, and never learns whether another's
// account exists; the ledger's own accounts are nobody's, whatever a subject claims.
func TestUsersTouchOnlyTheirOwn(t *testing.T) {
	secret := bytes.Repeat([]byte("k"), 32)
	verifier, err := auth.NewJWTVerifier(t.Context(), auth.JWTConfig{Issuer: "https://issuer.test", Audience: "tally", HMACSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	tok, err := auth.ParseTokens(strings.NewReader(roleTokens))
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	authn, err := auth.New(tok, verifier, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	c := newClient(t, 1, authn)
	c.token = tokenOf["root"]
	c.asset("USD", 2)
	carol1, carol2, dave := c.account("carol", "USD"), c.account("carol", "USD"), c.account("dave", "USD")
	deposit := c.must(201, c.transfer("dep", "external", carol1, "50", "USD")).field("id")
	c.must(201, c.transfer("dep-dave", "external", dave, "50", "USD"))
	var usd struct {
		External []string `json:"external_accounts"`
	}
	if err := json.Unmarshal(c.must(200, c.do("GET", "/v1/assets/USD", "")).body, &usd); err != nil || len(usd.External) != 1 {
		t.Fatalf("USD: %v %v", usd, err)
	}
	external := usd.External[0]

	c.token = hs256(t, secret, "carol")
	c.must(201, c.transfer("mine", carol1, carol2, "10", "USD"))
	c.must(200, c.do("GET", "/v1/transactions/"+deposit, "")) // the operator's deposit touches her account
	for name, r := range map[string]response{
		"pay another's account":       c.transfer("theirs", carol1, dave, "1", "USD"),
		"take from another's":         c.transfer("take", dave, carol1, "1", "USD"),
		"read another's balance":      c.do("GET", "/v1/accounts/"+dave+"/balance", ""),
		"read another's past balance": c.do("GET", "/v1/accounts/"+dave+"/balance?at=2026-01-01T00:00:00Z", ""),
		"read a made-up account":      c.do("GET", "/v1/accounts/"+"01a23a80-069d-7862-af00-0191ce5aea2e", ""),
	} {
		if r.status != 404 || r.code() != "account_not_found" {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	for name, r := range map[string]response{
		"withdraw":                   c.transfer("out", carol1, "external", "1", "USD"),
		"deposit":                    c.transfer("in", "external", carol1, "1", "USD"),
		"open an account for dave":   c.do("POST", "/v1/accounts", `{"owner":"dave","asset":"USD"}`),
		"open one with an overdraft": c.do("POST", "/v1/accounts", `{"owner":"carol","asset":"USD","balance_floor":"-100"}`),
		"list dave's accounts":       c.do("GET", "/v1/accounts?owner=dave", ""),
	} {
		if r.status != 403 || r.code() != "forbidden" {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	var list struct{ Data []struct{ ID, Owner string } }
	if err := json.Unmarshal(c.must(200, c.do("GET", "/v1/accounts", "")).body, &list); err != nil {
		t.Fatal(err)
	}
	if len(list.Data) != 2 || list.Data[0].Owner != "carol" || list.Data[1].Owner != "carol" {
		t.Errorf("carol's own listing: %+v", list.Data)
	}

	// A subject naming the ledger's own owner owns nothing of the ledger's.
	c.token = hs256(t, secret, "tally:external")
	if r := c.do("GET", "/v1/accounts/"+external, ""); r.status != 404 {
		t.Errorf("tally:external read the external account: %d %s", r.status, r.body)
	}
	// A JWT's roles claim makes an operator.
	c.token = hs256(t, secret, "payments", "operator")
	c.must(200, c.do("GET", "/v1/accounts/"+dave+"/balance", ""))

	c.token = tokenOf["root"]
	if c.balance(dave) != "50.00" || c.balance(carol1) != "40.00" || c.balance(carol2) != "10.00" {
		t.Errorf("balances moved: dave %s, carol %s and %s", c.balance(dave), c.balance(carol1), c.balance(carol2))
	}

	// A refused token is a 401 with a log line that says why, without the token.
	forged := hs256(t, bytes.Repeat([]byte("x"), 32), "carol")
	c.token = forged
	if r := c.do("GET", "/v1/assets", ""); r.status != 401 || r.code() != "unauthorized" {
		t.Errorf("forged token: %d %s", r.status, r.body)
	}
	if !strings.Contains(logged.String(), "authentication failed") || strings.Contains(logged.String(), forged[strings.LastIndex(forged, ".")+1:]) {
		t.Errorf("log: %s", logged.String())
	}
}

// TestRateLimits: over its allowance of writes a caller gets 429 rate_limited with
// Retry-After and the RateLimit-* headers; its reads, and other callers, are not held
// back by it.
func TestRateLimits(t *testing.T) {
	limiter := ratelimit.New(ratelimit.Config{Limits: map[ratelimit.Class]ratelimit.Limit{ratelimit.Writes: {Rate: 3, Period: time.Hour, Burst: 3}}})
	c := newClientOver(t, []*pgtest.DB{pgtest.NewShardDB(t, 0)}, tokens(t, roleTokens), func(_ *service.Service, a *httpapi.API) { a.WithRateLimiter(limiter) })
	c.token = tokenOf["root"]
	c.asset("USD", 2)
	c.account("alice", "USD")
	r := c.do("POST", "/v1/accounts", `{"owner":"alice","asset":"USD"}`)
	if r.status != 201 || r.header.Get("RateLimit-Remaining") != "0" || r.header.Get("RateLimit-Limit") != "3" {
		t.Fatalf("the third write: %d, headers %v", r.status, r.header)
	}
	r = c.do("POST", "/v1/accounts", `{"owner":"alice","asset":"USD"}`)
	if r.status != 429 || r.code() != "rate_limited" || r.header.Get("Retry-After") == "" || r.header.Get("RateLimit-Reset") == "" {
		t.Errorf("the fourth write: %d %s, headers %v", r.status, r.body, r.header)
	}
	c.must(200, c.do("GET", "/v1/assets", ""))
	c.token = tokenOf["ops"]
	c.account("bob", "USD")
}
