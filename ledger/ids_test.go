package ledger

import (
	"strings"
	"testing"
)

func TestIDsCarryTheirShard(t *testing.T) {
	for _, shard := range []int{0, 1, 255, 256, MaxShards - 1} {
		a, err := NewAccountID(shard)
		if err != nil {
			t.Fatal(err)
		}
		back, err := ParseAccountID(a.String())
		if err != nil || back != a || back.Shard() != shard {
			t.Errorf("shard %d: %v round-trips to %v (shard %d), %v", shard, a, back, back.Shard(), err)
		}
		tx, _ := NewTransactionID(shard)
		if tx.Shard() != shard {
			t.Errorf("transaction shard %d != %d", tx.Shard(), shard)
		}
	}
	for _, shard := range []int{-1, MaxShards} {
		if _, err := NewAccountID(shard); err == nil {
			t.Errorf("shard %d accepted", shard)
		}
	}
	a, _ := NewAccountID(0)
	for _, bad := range []string{"", "x", strings.ToUpper(a.String()) + "0", "{" + a.String() + "}",
		"6ba7b810-9dad-11d1-80b4-00c04fd430c8", // version 1
		strings.ReplaceAll(a.String(), "-", ""),
	} {
		if _, err := ParseAccountID(bad); err == nil {
			t.Errorf("ParseAccountID(%q) accepted", bad)
		}
	}
}

// The id an error message offers as an example is a valid id of shard 0, so pasting it
// into a one-shard ledger answers "not found", not a routing error.
func TestExampleIDIsShardZero(t *testing.T) {
	id, err := ParseAccountID(exampleID)
	if err != nil || id.Shard() != 0 {
		t.Errorf("example id %s: shard %d, %v", exampleID, id.Shard(), err)
	}
	if _, err := ParseAccountID("x"); err == nil || !strings.Contains(err.Error(), exampleID) {
		t.Errorf("error message: %v", err)
	}
}
