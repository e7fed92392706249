package auth_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
)

const (
	issuer   = "https://issuer.example"
	audience = "tally"
)

// signer is an issuer's private key, published under kid.
type signer struct {
	kid    string
	method jwt.SigningMethod
	key    crypto.Signer
}

func newSigners(t testing.TB) []signer {
	t.Helper()
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return []signer{{"rsa-1", jwt.SigningMethodRS256, rsaKey}, {"ec-1", jwt.SigningMethodES256, ecKey}, {"ed-1", jwt.SigningMethodEdDSA, edKey}}
}

// jwks is the public JWK Set of the signers.
func jwks(t testing.TB, signers ...signer) json.RawMessage {
	t.Helper()
	set := jwkset.NewMemoryStorage()
	for _, s := range signers {
		k, err := jwkset.NewJWKFromKey(s.key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: s.kid, ALG: jwkset.ALG(s.method.Alg())}})
		if err != nil {
			t.Fatal(err)
		}
		if err := set.KeyWrite(context.Background(), k); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := set.JSONPublic(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// claims are valid claims for the subject, changed by the options.
func claims(sub string, change ...func(jwt.MapClaims)) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{"iss": issuer, "aud": audience, "sub": sub, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for _, f := range change {
		f(c)
	}
	return c
}

func (s signer) sign(t testing.TB, c jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(s.method, c)
	tok.Header["kid"] = s.kid
	out, err := tok.SignedString(s.key)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func verifier(t testing.TB, cfg auth.JWTConfig) *auth.JWTVerifier {
	t.Helper()
	cfg.Issuer, cfg.Audience = issuer, audience
	v, err := auth.NewJWTVerifier(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Tokens of every allowed algorithm let their subject in, as a user plus the roles its
// role claim names, whether a string or an array.
func TestJWTsOfEachAlgorithm(t *testing.T) {
	signers := newSigners(t)
	v := verifier(t, auth.JWTConfig{JWKS: jwks(t, signers...), RoleClaim: "scope"})
	for _, s := range signers {
		c, err := v.Verify(t.Context(), s.sign(t, claims("alice")))
		if err != nil {
			t.Fatalf("%s: %v", s.method.Alg(), err)
		}
		if c.Name != "oidc:alice" || c.Owner != "alice" || !slices.Equal(c.Roles, []auth.Role{auth.RoleUser}) {
			t.Errorf("%s: caller %+v", s.method.Alg(), c)
		}
	}
	for _, tc := range []struct {
		claim any
		want  []auth.Role
	}{
		{"openid admin profile", []auth.Role{auth.RoleUser, auth.RoleAdmin}},
		{[]any{"operator", "other"}, []auth.Role{auth.RoleUser, auth.RoleOperator}},
		{"Admin superuser", []auth.Role{auth.RoleUser}},
	} {
		c, err := v.Verify(t.Context(), signers[0].sign(t, claims("svc", func(c jwt.MapClaims) { c["scope"] = tc.claim })))
		if err != nil || !slices.Equal(c.Roles, tc.want) {
			t.Errorf("scope %v: %+v %v, want roles %v", tc.claim, c, err, tc.want)
		}
	}
	if _, err := v.Verify(t.Context(), signers[0].sign(t, claims("svc", func(c jwt.MapClaims) { c["scope"] = 7.0 }))); err == nil {
		t.Error("a numeric role claim was accepted")
	}
}

// Every attack the issue names is refused, each for its own reason.
func TestJWTAttacksAreRefused(t *testing.T) {
	signers := newSigners(t)
	good := signers[0]
	rsaPub, err := x509.MarshalPKIXPublicKey(good.key.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: rsaPub})
	stranger := newSigners(t)[0]
	stranger.kid = "unknown-kid"
	impostor := newSigners(t)[0] // a key the issuer never published, under a published kid

	hmacWith := func(secret []byte) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims("mallory"))
		tok.Header["kid"] = good.kid
		s, err := tok.SignedString(secret)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, claims("mallory")).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		t.Fatal(err)
	}
	valid := good.sign(t, claims("alice"))
	parts := strings.Split(valid, ".")
	payload, _ := json.Marshal(claims("mallory"))
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(payload) + "." + parts[2]
	sigFlipped := parts[0] + "." + parts[1] + "." + flipLast(parts[2])

	attacks := map[string]string{
		"alg none":                        none,
		"the RS256 public key as an HMAC": hmacWith(pubPEM),
		"unknown kid":                     stranger.sign(t, claims("mallory")),
		"a key nobody published":          impostor.sign(t, claims("mallory")),
		"expired":                         good.sign(t, claims("alice", func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })),
		"no expiry":                       good.sign(t, claims("alice", func(c jwt.MapClaims) { delete(c, "exp") })),
		"not yet valid":                   good.sign(t, claims("alice", func(c jwt.MapClaims) { c["nbf"] = time.Now().Add(time.Hour).Unix() })),
		"issued in the future":            good.sign(t, claims("alice", func(c jwt.MapClaims) { c["iat"] = time.Now().Add(time.Hour).Unix() })),
		"wrong issuer":                    good.sign(t, claims("alice", func(c jwt.MapClaims) { c["iss"] = "https://evil.example" })),
		"wrong audience":                  good.sign(t, claims("alice", func(c jwt.MapClaims) { c["aud"] = "another-service" })),
		"no subject":                      good.sign(t, claims("")),
		"a subject with NUL":              good.sign(t, claims("al\x00ice")),
		"a subject too long":              good.sign(t, claims(strings.Repeat("a", ledger.MaxCallerLength))),
		"tampered claims":                 tampered,
		"tampered signature":              sigFlipped,
		"malformed":                       "not.a.jwt",
		"two parts":                       parts[0] + "." + parts[1],
		"empty segments":                  "..",
	}
	v := verifier(t, auth.JWTConfig{JWKS: jwks(t, good)})
	for name, token := range attacks {
		if c, err := v.Verify(t.Context(), token); err == nil {
			t.Errorf("%s: accepted as %+v", name, c)
		} else if strings.Contains(err.Error(), token) {
			t.Errorf("%s: the error holds the token: %v", name, err)
		}
	}
	// With an HMAC secret configured, HS256 is allowed, and still only with that secret.
	secret := []byte("0123456789abcdef0123456789abcdef")
	v = verifier(t, auth.JWTConfig{JWKS: jwks(t, good), HMACSecret: secret})
	if _, err := v.Verify(t.Context(), hmacWith(pubPEM)); err == nil {
		t.Error("the RS256 public key as an HMAC secret was accepted beside a configured secret")
	}
	if c, err := v.Verify(t.Context(), hmacWith(secret)); err != nil || c.Owner != "mallory" {
		t.Errorf("HS256 with the configured secret: %+v %v", c, err)
	}
	if _, err := v.Verify(t.Context(), valid); err != nil {
		t.Errorf("RS256 beside an HMAC secret: %v", err)
	}
}

func flipLast(s string) string {
	b := []byte(s)
	if b[len(b)-2] == 'A' {
		b[len(b)-2] = 'B'
	} else {
		b[len(b)-2] = 'A'
	}
	return string(b)
}

// Keys come from the issuer's JWKS URL, and a key the issuer starts signing with is
// picked up by its kid without a restart.
func TestJWKSURLRotatesKeys(t *testing.T) {
	signers := newSigners(t)
	var mu sync.Mutex
	published := jwks(t, signers[0])
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(published)
	}))
	defer srv.Close()
	v := verifier(t, auth.JWTConfig{JWKSURL: srv.URL, Client: srv.Client(), Log: slog.New(slog.DiscardHandler)})
	if _, err := v.Verify(t.Context(), signers[0].sign(t, claims("alice"))); err != nil {
		t.Fatalf("a key from the URL: %v", err)
	}
	mu.Lock()
	published = jwks(t, signers...)
	mu.Unlock()
	if _, err := v.Verify(t.Context(), signers[1].sign(t, claims("alice"))); err != nil {
		t.Errorf("a rotated-in key: %v", err)
	}
}

func TestJWTConfigNeedsIssuerAudienceAndKeys(t *testing.T) {
	for name, cfg := range map[string]auth.JWTConfig{
		"no issuer":          {Audience: audience, HMACSecret: bytes.Repeat([]byte("s"), 32)},
		"no audience":        {Issuer: issuer, HMACSecret: bytes.Repeat([]byte("s"), 32)},
		"no keys":            {Issuer: issuer, Audience: audience},
		"a short secret":     {Issuer: issuer, Audience: audience, HMACSecret: []byte("short")},
		"a broken JWK Set":   {Issuer: issuer, Audience: audience, JWKS: json.RawMessage(`{"keys":[{"kty":"RSA"}]}`)},
		"a JWK Set not JSON": {Issuer: issuer, Audience: audience, JWKS: json.RawMessage(`keys`)},
	} {
		if _, err := auth.NewJWTVerifier(t.Context(), cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Whatever the bytes, parsing never panics and never lets in a token the issuer did not sign.
func FuzzJWTVerify(f *testing.F) {
	signers := newSigners(f)
	v := verifier(f, auth.JWTConfig{JWKS: jwks(f, signers...)})
	valid := signers[0].sign(f, claims("alice"))
	f.Add(valid)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add(strings.Repeat("a.", 100))
	f.Add(valid[:len(valid)-3])
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(context.Background(), token)
		if err == nil && token != valid && c.Owner != "alice" {
			t.Errorf("accepted %q as %+v", token, c)
		}
		if err == nil && !strings.HasPrefix(token, strings.Join(strings.Split(valid, ".")[:2], ".")) {
			t.Errorf("accepted a token with other claims: %q", token)
		}
	})
}
