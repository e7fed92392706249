// Command jwt plays an OIDC issuer for the end-to-end test: it makes a signing key and
// its public JWK Set, and signs tokens with it.
//
//	go run ./hack/jwt keys DIR                      # DIR/key.pem, DIR/jwks.json
//	go run ./hack/jwt token DIR ISS AUD SUB [ROLES]  # a token valid for an hour
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

const kid = "e2e"

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "jwt:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	switch {
	case len(args) == 2 && args[0] == "keys":
		return keys(args[1])
	case (len(args) == 5 || len(args) == 6) && args[0] == "token":
		roles := ""
		if len(args) == 6 {
			roles = args[5]
		}
		tok, err := token(args[1], args[2], args[3], args[4], roles)
		if err != nil {
			return err
		}
		fmt.Println(tok)
		return nil
	}
	return errors.New("usage: jwt keys DIR | jwt token DIR ISS AUD SUB [ROLES]")
}

func keys(dir string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return err
	}
	jwk, err := jwkset.NewJWKFromKey(key.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid, ALG: jwkset.AlgES256}})
	if err != nil {
		return err
	}
	set := jwkset.NewMemoryStorage()
	if err := set.KeyWrite(context.Background(), jwk); err != nil {
		return err
	}
	raw, err := set.JSONPublic(context.Background())
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "jwks.json"), raw, 0o644)
}

func token(dir, iss, aud, sub, roles string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		return "", err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return "", errors.New("key.pem is not PEM")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return "", err
	}
	now := time.Now()
	claims := jwt.MapClaims{"iss": iss, "aud": aud, "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	if roles != "" {
		claims["roles"] = strings.Split(roles, ",")
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = kid
	return t.SignedString(key)
}
