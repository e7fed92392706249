package auth_test

import (
	"bytes"
	"log/slog"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
)

// TestStaticTokens: each line's token names its caller and roles; without roles= a
// caller is an operator and an admin, as every caller was before roles.
func TestStaticTokens(t *testing.T) {
	tokens, err := auth.ParseTokens(strings.NewReader("# services\n\nshop:shop-token-0123456789 roles=user\nbank:bank-token-0123456789\n" +
		"audit:audit-token-012345678 roles=user,admin\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logged bytes.Buffer
	a, err := auth.New(tokens, nil, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for token, want := range map[string]auth.Caller{
		"shop-token-0123456789": {Name: "shop", Owner: "shop", Roles: []auth.Role{auth.RoleUser}},
		"bank-token-0123456789": {Name: "bank", Owner: "bank", Roles: []auth.Role{auth.RoleOperator, auth.RoleAdmin}},
		"audit-token-012345678": {Name: "audit", Owner: "audit", Roles: []auth.Role{auth.RoleUser, auth.RoleAdmin}},
	} {
		r := httptest.NewRequest("GET", "/v1/assets", nil)
		r.Header.Set("Authorization", "Bearer "+token)
		got, err := a.Authenticate(r)
		if err != nil || got.Name != want.Name || got.Owner != want.Owner || !slices.Equal(got.Roles, want.Roles) {
			t.Errorf("%s: %+v %v, want %+v", token, got, err, want)
		}
	}
	for name, header := range map[string]string{
		"no header":       "",
		"not bearer":      "Basic c2hvcDpzaG9w",
		"unknown token":   "Bearer shop-token-0123456780",
		"oversized token": "Bearer " + strings.Repeat("a", 9000),
	} {
		r := httptest.NewRequest("GET", "/v1/assets", nil)
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		if _, err := a.Authenticate(r); ledger.CodeOf(err) != ledger.CodeUnauthorized {
			t.Errorf("%s: %v", name, err)
		}
	}
	if strings.Contains(logged.String(), "shop-token-0123456780") || !strings.Contains(logged.String(), "not a known static token") {
		t.Errorf("log: %s", logged.String())
	}
	// Without any authenticator every caller is the anonymous admin.
	var none *auth.Authenticator
	if c, err := none.Authenticate(httptest.NewRequest("GET", "/", nil)); err != nil || !c.Has(auth.RoleAdmin) || c.Name != "anonymous" {
		t.Errorf("no authenticator: %+v %v", c, err)
	}
}

func TestTokensFileErrors(t *testing.T) {
	for _, bad := range []string{
		"", "# only a comment\n", "nocolon\n", "x:short\n", ":no-caller-0123456789\n",
		"shop:shop-token-0123456789 roles=root\n", "shop:shop-token-0123456789 role=user\n",
		"shop:shop-token-0123456789 roles=user extra\n", "shop:shop-token-0123456789 roles=\n",
	} {
		if _, err := auth.ParseTokens(strings.NewReader(bad)); err == nil {
			t.Errorf("tokens %q accepted", bad)
		}
	}
	if _, err := auth.New(nil, nil, nil); err == nil {
		t.Error("an authenticator with nothing to check accepted")
	}
}
