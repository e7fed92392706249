package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/tallyhq/tally/ledger"
)

// JWTConfig says which JWTs to accept.
type JWTConfig struct {
	// Issuer and Audience must match the token's iss and aud; both are required, so a
	// token minted for another service of the same issuer is refused.
	Issuer, Audience string
	// Keys: an OIDC issuer's JWKS URL (fetched at start, refreshed every RefreshInterval,
	// and again when a token names an unknown kid, at most once a minute, so keys rotate
	// without a restart), and/or a JWK Set document (from a file or Secret). At least one
	// key source, or HMACSecret, is needed.
	JWKSURL string
	JWKS    json.RawMessage
	// HMACSecret, if set, lets HS256 tokens in, verified with it. Only then: an
	// asymmetric issuer's public key can never serve as an HMAC secret.
	HMACSecret []byte
	// RoleClaim is the claim holding the caller's roles: a space-separated string (as
	// OAuth's scope) or an array of strings. Values other than the role names are
	// ignored. Default: roles.
	RoleClaim string
	// Leeway forgives clock skew on exp, nbf and iat. Default: 30s.
	Leeway time.Duration
	// RefreshInterval is how often the JWKS URL is fetched again. Default: 1h.
	RefreshInterval time.Duration
	// Client fetches the JWKS URL (default: http.DefaultClient's transport with a 10s timeout).
	Client *http.Client
	// Log receives the JWKS refresh failures.
	Log *slog.Logger
}

// JWTVerifier turns a signed JWT into a Caller.
type JWTVerifier struct {
	cfg    JWTConfig
	keys   keyfunc.Keyfunc // nil: HMAC only
	parser *jwt.Parser
}

// subjectPrefix starts a JWT caller's name, so it never meets a static caller's (whose
// names hold no colon).
const subjectPrefix = "oidc:"

// NewJWTVerifier fetches the keys and returns a verifier; ctx bounds the refreshes of
// a JWKS URL, which run until it ends.
func NewJWTVerifier(ctx context.Context, cfg JWTConfig) (*JWTVerifier, error) {
	switch {
	case cfg.Issuer == "" || cfg.Audience == "":
		return nil, fmt.Errorf("auth: JWTs need an issuer and an audience")
	case cfg.JWKSURL == "" && len(cfg.JWKS) == 0 && len(cfg.HMACSecret) == 0:
		return nil, fmt.Errorf("auth: JWTs need keys: a JWKS URL, a JWK Set, or an HMAC secret")
	case len(cfg.HMACSecret) > 0 && len(cfg.HMACSecret) < 32:
		return nil, fmt.Errorf("auth: an HMAC secret needs at least 32 bytes, got %d", len(cfg.HMACSecret))
	}
	if cfg.RoleClaim == "" {
		cfg.RoleClaim = "roles"
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	v := &JWTVerifier{cfg: cfg}
	var err error
	switch {
	case cfg.JWKSURL != "":
		var given keyfunc.Keyfunc
		override := keyfunc.Override{
			Client:            cfg.Client,
			RefreshInterval:   cfg.RefreshInterval,
			RefreshUnknownKID: rate.NewLimiter(rate.Every(time.Minute), 1),
			RefreshErrorHandlerFunc: func(u string) func(context.Context, error) {
				return func(ctx context.Context, err error) {
					cfg.Log.WarnContext(ctx, "refreshing the JWKS failed", "url", u, "err", err)
				}
			},
		}
		if len(cfg.JWKS) > 0 {
			if given, err = keyfunc.NewJWKSetJSON(cfg.JWKS); err != nil {
				return nil, fmt.Errorf("auth: read the JWK Set: %w", err)
			}
			override.Given = given.Storage()
		}
		v.keys, err = keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, override)
		if err != nil {
			return nil, fmt.Errorf("auth: JWKS from %s: %w", cfg.JWKSURL, err)
		}
	case len(cfg.JWKS) > 0:
		if v.keys, err = keyfunc.NewJWKSetJSON(cfg.JWKS); err != nil {
			return nil, fmt.Errorf("auth: read the JWK Set: %w", err)
		}
	}
	var methods []string
	if v.keys != nil {
		methods = append(methods, "RS256", "ES256", "EdDSA")
	}
	if len(cfg.HMACSecret) > 0 {
		methods = append(methods, "HS256")
	}
	v.parser = jwt.NewParser(jwt.WithValidMethods(methods), jwt.WithIssuer(cfg.Issuer), jwt.WithAudience(cfg.Audience),
		jwt.WithLeeway(cfg.Leeway), jwt.WithExpirationRequired(), jwt.WithIssuedAt())
	return v, nil
}

// Verify checks the token's signature and claims and returns its caller: named by its
// subject, owning the subject's accounts, a user plus the roles its role claim names. The
// error says why a token failed, for the log; it never holds the token.
func (v *JWTVerifier) Verify(ctx context.Context, token string) (Caller, error) {
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(token, claims, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() == "HS256" {
			return v.cfg.HMACSecret, nil // WithValidMethods let it in only with a secret
		}
		return v.keys.KeyfuncCtx(ctx)(t)
	})
	if err != nil {
		return Caller{}, fmt.Errorf("jwt: %w", err)
	}
	sub, err := claims.GetSubject()
	switch {
	case err != nil:
		return Caller{}, fmt.Errorf("jwt: sub: %w", err)
	case sub == "" || !utf8.ValidString(sub) || strings.ContainsRune(sub, 0) || len(subjectPrefix)+len(sub) > ledger.MaxCallerLength:
		return Caller{}, fmt.Errorf("jwt: sub must be 1 to %d characters of UTF-8 without NUL", ledger.MaxCallerLength-len(subjectPrefix))
	}
	roles, err := rolesOf(claims[v.cfg.RoleClaim])
	if err != nil {
		return Caller{}, fmt.Errorf("jwt: claim %s: %w", v.cfg.RoleClaim, err)
	}
	return Caller{Name: subjectPrefix + sub, Owner: sub, Roles: roles}, nil
}

// rolesOf reads the role claim: absent, a space-separated string, or an array of strings.
// Every JWT caller is a user; the claim may add operator and admin.
func rolesOf(claim any) ([]Role, error) {
	var values []string
	switch c := claim.(type) {
	case nil:
	case string:
		values = strings.Fields(c)
	case []any:
		for _, x := range c {
			s, ok := x.(string)
			if !ok {
				return nil, errors.New("an array holding a non-string")
			}
			values = append(values, s)
		}
	default:
		return nil, fmt.Errorf("a %T, want a string or an array of strings", claim)
	}
	roles := []Role{RoleUser}
	for _, r := range Roles {
		if r != RoleUser && slices.Contains(values, string(r)) {
			roles = append(roles, r)
		}
	}
	return roles, nil
}
