package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// scramIterations is PostgreSQL's default iteration count for SCRAM-SHA-256.
const scramIterations = 4096

// SetPassword gives a role its password as a SCRAM-SHA-256 verifier computed here, the
// way psql's \password does: the password itself never travels in a statement, so no
// log_statement, log_min_error_statement or statistics view can record it.
func SetPassword(ctx context.Context, conn *pgx.Conn, role, password string) error {
	verifier, err := scramVerifier(password)
	if err != nil {
		return err
	}
	// The verifier is base64 and '$:' only: nothing in it needs escaping in a literal.
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgx.Identifier{role}.Sanitize(), verifier)); err != nil {
		return fmt.Errorf("postgres: set the password of %s: %w", role, err)
	}
	return nil
}

// scramVerifier is the stored form of a password for SCRAM-SHA-256 (RFC 5802, RFC 7677),
// as PostgreSQL writes it: SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
// Passwords here are generated ASCII, which SASLprep leaves as they are.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("postgres: salt: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("postgres: derive key: %w", err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(stored[:]), b64(mac(salted, "Server Key"))), nil
}
