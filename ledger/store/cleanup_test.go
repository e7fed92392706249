package store_test

import (
	"context"
	"testing"
	"time"
)

func TestExpiredIdempotencyKeysAreCleanedUp(t *testing.T) {
	f := newFixture(t, 4)
	alice := f.account("alice", 0)
	f.post("old", usd(f.external, alice, 1))
	f.post("new", usd(f.external, alice, 1))
	ctx := context.Background()
	owner := f.db.SuperConn(t)
	if _, err := owner.Exec(ctx, "UPDATE tally.idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'"); err != nil {
		t.Fatal(err)
	}
	n, err := f.store.DeleteExpiredIdempotencyKeys(ctx, 24*time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("deleted %d, %v; want 1", n, err)
	}
	var keys []string
	rows, _ := owner.Query(ctx, "SELECT key FROM tally.idempotency_keys ORDER BY key")
	for rows.Next() {
		var k string
		_ = rows.Scan(&k)
		keys = append(keys, k)
	}
	if len(keys) != 1 || keys[0] != "new" {
		t.Errorf("remaining keys %v", keys)
	}
	// The journal is untouched: only the replay record went.
	if got := f.balance(alice); got != 2 {
		t.Errorf("balance %d", got)
	}
	f.verify()
}
