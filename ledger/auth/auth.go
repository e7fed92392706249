// Package auth turns a request's credentials into a Caller: a name that scopes its
// idempotency keys, the owner whose accounts it may use, and its roles. Two kinds of
// credential are accepted, each optional: static bearer tokens (a file of lines, for
// services) and JWTs signed by an OIDC issuer's keys (jwt.go). What each role may do on
// each route is decided next to the route table (ledger/httpapi).
package auth

import (
	"bufio"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"

	"github.com/tallyhq/tally/ledger"
)

// Role is what a caller may do, besides using its own accounts.
type Role string

// The roles. A user reads and moves money only between accounts it owns; an operator
// also uses every account and the external accounts (deposits, withdrawals) and freezes
// accounts; an admin also registers assets, closes accounts and reads everything.
const (
	RoleUser     Role = "user"
	RoleOperator Role = "operator"
	RoleAdmin    Role = "admin"
)

// Roles are every role, from the least to the most privileged.
var Roles = []Role{RoleUser, RoleOperator, RoleAdmin}

// Caller is who sent a request.
type Caller struct {
	// Name scopes the caller's idempotency keys: a static token's caller name, or
	// "oidc:" and the JWT's subject (a static name holds no colon, so the two never meet).
	Name string
	// Owner is the owner whose accounts a user may use: the static caller's name, or the
	// JWT's subject.
	Owner string
	Roles []Role
}

// Has reports whether the caller holds the role.
func (c Caller) Has(r Role) bool { return slices.Contains(c.Roles, r) }

// Operates reports whether the caller may use every account: an operator or an admin.
func (c Caller) Operates() bool { return c.Has(RoleOperator) || c.Has(RoleAdmin) }

// AnonymousCaller is the caller of every request when no credentials are configured
// (local development): an admin.
var AnonymousCaller = Caller{Name: "anonymous", Owner: "anonymous", Roles: []Role{RoleUser, RoleOperator, RoleAdmin}}

// maxTokenBytes bounds a bearer token: JWTs of a few claims are well under 2 KiB, and
// parsing a huge one costs memory for nothing.
const maxTokenBytes = 8192

// Authenticator checks bearer tokens: static tokens first, then JWTs. A nil
// Authenticator lets everyone in as AnonymousCaller.
type Authenticator struct {
	tokens map[[32]byte]Caller // sha256(token) -> caller
	jwt    *JWTVerifier
	log    *slog.Logger
}

// New returns an authenticator over static tokens (nil: none) and a JWT verifier (nil:
// none); at least one is needed. Failures are logged to log, never with the token.
func New(tokens *Tokens, jwt *JWTVerifier, log *slog.Logger) (*Authenticator, error) {
	if tokens == nil && jwt == nil {
		return nil, fmt.Errorf("auth: neither static tokens nor JWTs are configured")
	}
	a := &Authenticator{jwt: jwt, log: log, tokens: map[[32]byte]Caller{}}
	if tokens != nil {
		a.tokens = tokens.callers
	}
	return a, nil
}

// Tokens are static bearer tokens, by their SHA-256.
type Tokens struct {
	callers map[[32]byte]Caller
}

// ParseTokens reads lines of "caller:token", optionally followed by " roles=r1,r2"
// (user, operator, admin; without it the caller is an operator and an admin, as every
// caller was before roles). Blank lines and # comments are ignored; a token has at least
// 16 characters.
func ParseTokens(r io.Reader) (*Tokens, error) {
	t := &Tokens{callers: map[[32]byte]Caller{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		name, token, ok := strings.Cut(fields[0], ":")
		if !ok || name == "" || len(name) > ledger.MaxCallerLength || len(token) < 16 || len(fields) > 2 {
			return nil, fmt.Errorf("auth: tokens line %d: want caller:token [roles=...] with a token of at least 16 characters", n)
		}
		c := Caller{Name: name, Owner: name, Roles: []Role{RoleOperator, RoleAdmin}}
		if len(fields) == 2 {
			list, ok := strings.CutPrefix(fields[1], "roles=")
			if !ok {
				return nil, fmt.Errorf("auth: tokens line %d: want roles=r1,r2 after the token, got %q", n, fields[1])
			}
			c.Roles = nil
			for _, r := range strings.Split(list, ",") {
				if !slices.Contains(Roles, Role(r)) {
					return nil, fmt.Errorf("auth: tokens line %d: unknown role %q (want user, operator or admin)", n, r)
				}
				c.Roles = append(c.Roles, Role(r))
			}
		}
		t.callers[sha256.Sum256([]byte(token))] = c
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth: read tokens: %w", err)
	}
	if len(t.callers) == 0 {
		return nil, fmt.Errorf("auth: the tokens file holds no tokens")
	}
	return t, nil
}

// Authenticate returns the caller of the HTTP request (Bearer on its Authorization
// header).
func (a *Authenticator) Authenticate(r *http.Request) (Caller, error) {
	return a.Bearer(r.Context(), r.Header.Get("Authorization"), "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path)
}

// Bearer returns the caller an Authorization value ("Bearer <token>") names, or an
// unauthorized error whose detail says what to send (never why a token failed: that goes
// to the log, without the token, with where, the request's attributes).
func (a *Authenticator) Bearer(ctx context.Context, authorization string, where ...any) (Caller, error) {
	if a == nil {
		return AnonymousCaller, nil
	}
	token, ok := strings.CutPrefix(authorization, "Bearer ")
	if !ok || token == "" {
		return Caller{}, ledger.Errorf(ledger.CodeUnauthorized, "send Authorization: Bearer <token>")
	}
	if len(token) > maxTokenBytes {
		return Caller{}, a.refuse(ctx, where, "token longer than %d bytes", maxTokenBytes)
	}
	sum := sha256.Sum256([]byte(token))
	// Lookup by hash, then a constant-time compare of the hash, so timing reveals nothing
	// about a token's prefix.
	for h, c := range a.tokens {
		if subtle.ConstantTimeCompare(h[:], sum[:]) == 1 {
			return c, nil
		}
	}
	if a.jwt == nil {
		return Caller{}, a.refuse(ctx, where, "not a known static token")
	}
	c, err := a.jwt.Verify(ctx, token)
	if err != nil {
		return Caller{}, a.refuse(ctx, where, "%v", err)
	}
	return c, nil
}

func (a *Authenticator) refuse(ctx context.Context, where []any, format string, args ...any) error {
	if a.log != nil {
		a.log.WarnContext(ctx, "authentication failed", append([]any{"reason", fmt.Sprintf(format, args...)}, where...)...)
	}
	return ledger.Errorf(ledger.CodeUnauthorized, "the bearer token is not valid")
}
