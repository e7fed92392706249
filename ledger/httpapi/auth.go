package httpapi

import (
	"bufio"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/tallyhq/tally/ledger"
)

// AnonymousCaller is the caller of every request when no tokens are configured.
const AnonymousCaller = "anonymous"

// Authenticator maps bearer tokens to caller names. Idempotency keys are scoped to the
// caller, so two callers can never collide on a key.
type Authenticator struct {
	tokens map[[32]byte]string // sha256(token) -> caller
}

// ParseTokens reads "caller:token" lines (blank lines and # comments ignored).
func ParseTokens(r io.Reader) (*Authenticator, error) {
	a := &Authenticator{tokens: map[[32]byte]string{}}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		caller, token, ok := strings.Cut(line, ":")
		if !ok || caller == "" || len(caller) > ledger.MaxCallerLength || len(token) < 16 {
			return nil, fmt.Errorf("httpapi: tokens line %d: want caller:token with a token of at least 16 characters", n)
		}
		a.tokens[sha256.Sum256([]byte(token))] = caller
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("httpapi: read tokens: %w", err)
	}
	if len(a.tokens) == 0 {
		return nil, fmt.Errorf("httpapi: the tokens file holds no tokens")
	}
	return a, nil
}

// Authenticate returns the caller of the request. A nil Authenticator lets everyone in
// as AnonymousCaller.
func (a *Authenticator) Authenticate(r *http.Request) (string, error) {
	if a == nil {
		return AnonymousCaller, nil
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		return "", ledger.Errorf(ledger.CodeUnauthorized, "send Authorization: Bearer <token>")
	}
	sum := sha256.Sum256([]byte(token))
	// Lookup by hash, then a constant-time compare of the hash, so timing reveals nothing
	// about a token's prefix.
	for h, caller := range a.tokens {
		if subtle.ConstantTimeCompare(h[:], sum[:]) == 1 {
			return caller, nil
		}
	}
	return "", ledger.Errorf(ledger.CodeUnauthorized, "the bearer token is not valid")
}
