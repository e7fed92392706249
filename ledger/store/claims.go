package store

import (
	"context"
	"fmt"
	"net/http"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/ledger"
)

// Claim is a request's claim on its idempotency key at the key's home shard, made before
// the request runs on another shard, RunsOn (tally.claim_keys): it keeps a key the
// caller's across every shard.
type Claim struct {
	Caller, Key string
	Hash        [32]byte
	RunsOn      int
}

// Validate checks what the claim carries, so that it cannot fail its batch.
func (c Claim) Validate() error {
	if err := validateKey(c.Caller, c.Key); err != nil {
		return err
	}
	if c.RunsOn < 0 || c.RunsOn >= ledger.MaxShards {
		return fmt.Errorf("store: a claim for shard %d, not 0 to %d", c.RunsOn, ledger.MaxShards-1)
	}
	return nil
}

// ClaimKeys claims the keys on this shard, their home, in one round trip. A zero Outcome
// means the key is the request's (claimed now, or by the same request before): it may go
// on to its shard. Otherwise the Outcome is the answer, 409 idempotency_key_reused. Errors
// mean what they mean for PostBatch; a retry of the same claims is always safe.
func (s *Store) ClaimKeys(ctx context.Context, claims []Claim) ([]ledger.Outcome, error) {
	n := len(claims)
	callers, keys, hashes, shards := make([]string, n), make([]string, n), make([][]byte, n), make([]int32, n)
	for i, c := range claims {
		callers[i], keys[i], hashes[i], shards[i] = c.Caller, c.Key, c.Hash[:], int32(c.RunsOn)
	}
	var outs []ledger.Outcome
	err := s.writeRows(ctx, "claim keys", `SELECT req, status, body FROM tally.claim_keys($1, $2, $3, $4)`,
		[]any{callers, keys, hashes, shards}, func(rows pgx.Rows) error {
			outs = make([]ledger.Outcome, n)
			for rows.Next() {
				var idx int
				var o ledger.Outcome
				if err := rows.Scan(&idx, &o.Status, &o.Body); err != nil {
					return err
				}
				if idx < 1 || idx > n || o.Status != http.StatusConflict {
					return fmt.Errorf("claim_keys answered request %d of %d with status %d", idx, n, o.Status)
				}
				outs[idx-1] = o
			}
			return rows.Err()
		})
	return outs, err
}

// ClaimKey claims one key (ClaimKeys).
func (s *Store) ClaimKey(ctx context.Context, c Claim) (ledger.Outcome, error) {
	return one(ctx, s.ClaimKeys, c)
}
