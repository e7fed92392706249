package bench

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/internal/postgres"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/migrations"
	"github.com/tallyhq/tally/ledger/shardset"
	"github.com/tallyhq/tally/ledger/store"
)

// shard1Database is the second shard's database, on the same server as the first.
const shard1Database = "tally_shard_1"

// benchPool is a pool to a shard as the service opens one, for the bench's own writes.
func benchPool(ctx context.Context, dsn string, maxClients int) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = int32(maxClients + 4)
	store.ConfigurePool(pcfg)
	return pgxpool.NewWithConfig(ctx, pcfg)
}

// startSecondShard creates and migrates shard 1 and opens its pool; it returns the
// service's DSN for it.
func (e *env) startSecondShard(ctx context.Context, admin *pgx.Conn, maxClients int) (string, error) {
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+shard1Database); err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, e.pg.DSN(shard1Database))
	if err != nil {
		return "", err
	}
	_, err = migrations.Setup(ctx, conn, 1, "tally_service")
	conn.Close(ctx)
	if err != nil {
		return "", err
	}
	dsn := strings.Replace(e.pg.DSN(shard1Database), postgres.Superuser+"@", "tally_service@", 1)
	if e.pool1, err = benchPool(ctx, dsn, maxClients); err != nil {
		return "", err
	}
	e.store1 = store.New(e.pool1)
	return dsn, nil
}

// pickAcross returns the next transfer between shards: an account of each, in a random
// direction.
func (e *env) pickAcross(rng *rand.Rand) (from, to ledger.AccountID) {
	a, b := e.accounts[1+rng.IntN(len(e.accounts)-1)], e.others[rng.IntN(len(e.others))]
	if rng.IntN(2) == 0 {
		return b, a
	}
	return a, b
}

// twoPhaseOps are the operations of CrossShard and PendingPost, by mode (nil: the mode
// does not run them).
func (e *env) twoPhaseOp(scenario, mode string, set *shardset.Set) opFunc {
	pick := e.pick(Uniform)
	switch {
	case scenario == CrossShard && mode == ModeHTTP:
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			from, to := e.pickAcross(rng)
			return e.httpDo(ctx, http.MethodPost, "/v1/transfers", transferBody(from, to, ""),
				map[string]string{"Idempotency-Key": "x-" + strconv.FormatInt(e.seq.Add(1), 10)})
		}
	case scenario == CrossShard && mode == ModeStore:
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			from, to := e.pickAcross(rng)
			key := "x-" + strconv.FormatInt(e.seq.Add(1), 10)
			out, res, err := set.TransferAcross(ctx, shardset.StepRequest{Caller: "bench", Key: key, Hash: sha256.Sum256([]byte(key))},
				shardset.PostingRequest{From: shardset.Account{ID: from}, To: shardset.Account{ID: to}, Amount: 100, Asset: "USD"}, time.Minute)
			if err != nil {
				return false, err
			}
			return out.Status != http.StatusCreated || res.Transfer.State != ledger.StatePosted, nil
		}
	case scenario == PendingPost && mode == ModeHTTP:
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			f, t := pick(rng)
			key := strconv.FormatInt(e.seq.Add(1), 10)
			id, rejected, err := e.httpCreate(ctx, "/v1/transfers", transferBody(e.accounts[f], e.accounts[t], `,"pending":true`), "p-"+key)
			if err != nil || rejected {
				return rejected, err
			}
			return e.httpDo(ctx, http.MethodPost, "/v1/transfers/"+id+"/post", "", map[string]string{"Idempotency-Key": "q-" + key})
		}
	case scenario == PendingPost && mode == ModeStore:
		return func(ctx context.Context, rng *rand.Rand) (bool, error) {
			f, t := pick(rng)
			key := strconv.FormatInt(e.seq.Add(1), 10)
			out, err := set.Reserve(ctx, shardset.StepRequest{Caller: "bench", Key: "p-" + key, Hash: sha256.Sum256([]byte("p" + key))},
				shardset.PostingRequest{From: shardset.Account{ID: e.accounts[f]}, To: shardset.Account{ID: e.accounts[t]}, Amount: 100, Asset: "USD"}, 0)
			if err != nil || out.Status != http.StatusCreated {
				return true, err
			}
			out, err = set.Resolve(ctx, shardset.StepRequest{Caller: "bench", Key: "q-" + key, Hash: sha256.Sum256([]byte("q" + key))},
				out.Transaction, ledger.ResolvePost, 0)
			if err != nil {
				return false, err
			}
			return out.Status != http.StatusCreated, nil
		}
	}
	return nil
}

func transferBody(from, to ledger.AccountID, extra string) string {
	return `{"from_account":"` + from.String() + `","to_account":"` + to.String() + `","amount":"1.00","asset":"USD"` + extra + `}`
}

// httpCreate posts and returns the new resource's id from a 201.
func (e *env) httpCreate(ctx context.Context, path, body, key string) (id string, rejected bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+e.services[ModeHTTP].api+path, strings.NewReader(body))
	if err != nil {
		return "", false, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Idempotency-Key", key)
	resp, err := e.http.Do(req)
	if err != nil {
		return "", false, err
	}
	defer resp.Body.Close()
	var v struct{ ID string }
	switch {
	case resp.StatusCode == http.StatusCreated:
		err = decodeJSON(resp, &v)
		return v.ID, false, err
	case resp.StatusCode < 500:
		return "", true, nil
	default:
		return "", false, fmt.Errorf("HTTP %d", resp.StatusCode)
	}
}

// verifyAll is the cluster verify over both shards.
func (e *env) verifyAll(ctx context.Context) ([]string, error) {
	vs, err := e.direct.Driver().Verify(ctx)
	var out []string
	for _, v := range vs {
		out = append(out, v.String())
	}
	return out, err
}

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
