package ledger

import (
	"fmt"
	"time"

	"github.com/google/uuid"
)

// MaxShards is how many shards an id can name: the shard index takes 16 bits.
const MaxShards = 1 << 16

// An id is a UUIDv7 (time-ordered, so indexes stay compact) whose random bits carry the
// shard it lives on in bytes 9 and 10, so any holder of an id can route it without a
// lookup. The database checks the same bytes on insert (tally.id_shard).
func newID(shard int) (uuid.UUID, error) {
	if shard < 0 || shard >= MaxShards {
		return uuid.Nil, fmt.Errorf("ledger: shard %d out of range", shard)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return uuid.Nil, fmt.Errorf("ledger: new id: %w", err)
	}
	id[9], id[10] = byte(shard>>8), byte(shard)
	return id, nil
}

// exampleID is the id error messages show as the expected shape: a version 7 UUID of
// shard 0, so pasting it routes like any id of a one-shard ledger.
const exampleID = "0192f0c4-7d7e-7c3a-8000-002b3c4d5e6f"

func parseID(kind, s string) (uuid.UUID, error) {
	// Only the canonical 36-character form: one spelling per id keeps idempotency hashes
	// and logs unambiguous.
	if len(s) != 36 {
		return uuid.Nil, fmt.Errorf("ledger: %s id %q is not a UUID like %s", kind, truncate(s), exampleID)
	}
	id, err := uuid.Parse(s)
	if err != nil || id.Version() != 7 || id.Variant() != uuid.RFC4122 {
		return uuid.Nil, fmt.Errorf("ledger: %s id %q is not a version 7 UUID", kind, truncate(s))
	}
	return id, nil
}

func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// AccountID names an account; its shard is part of it.
type AccountID uuid.UUID

// NewAccountID makes a fresh id for an account on the given shard.
func NewAccountID(shard int) (AccountID, error) {
	id, err := newID(shard)
	return AccountID(id), err
}

// ParseAccountID reads the canonical text form of an account id.
func ParseAccountID(s string) (AccountID, error) {
	id, err := parseID("account", s)
	return AccountID(id), err
}

// Shard is the index of the shard the account lives on.
func (id AccountID) Shard() int { return int(id[9])<<8 | int(id[10]) }

// String is the canonical text form.
func (id AccountID) String() string { return uuid.UUID(id).String() }

// MarshalText implements encoding.TextMarshaler.
func (id AccountID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, as ParseAccountID.
func (id *AccountID) UnmarshalText(b []byte) error {
	v, err := ParseAccountID(string(b))
	if err == nil {
		*id = v
	}
	return err
}

// TransactionID names a transaction; its shard is part of it.
type TransactionID uuid.UUID

// NewTransactionID makes a fresh id for a transaction on the given shard.
func NewTransactionID(shard int) (TransactionID, error) {
	id, err := newID(shard)
	return TransactionID(id), err
}

// ParseTransactionID reads the canonical text form of a transaction id.
func ParseTransactionID(s string) (TransactionID, error) {
	id, err := parseID("transaction", s)
	return TransactionID(id), err
}

// Shard is the index of the shard the transaction lives on.
func (id TransactionID) Shard() int { return int(id[9])<<8 | int(id[10]) }

// String is the canonical text form.
func (id TransactionID) String() string { return uuid.UUID(id).String() }

// Time is when the id was made, to the millisecond (its UUIDv7 timestamp), which is
// where the journal keeps the transaction.
func (id TransactionID) Time() time.Time {
	var ms int64
	for _, b := range id[:6] {
		ms = ms<<8 | int64(b)
	}
	return time.UnixMilli(ms)
}

// MarshalText implements encoding.TextMarshaler.
func (id TransactionID) MarshalText() ([]byte, error) { return []byte(id.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, as ParseTransactionID.
func (id *TransactionID) UnmarshalText(b []byte) error {
	v, err := ParseTransactionID(string(b))
	if err == nil {
		*id = v
	}
	return err
}
