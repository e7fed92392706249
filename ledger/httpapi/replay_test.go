package httpapi_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/internal/pgtest"
	"github.com/tallyhq/tally/internal/redistest"
	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/httpapi"
	"github.com/tallyhq/tally/ledger/idemcache"
	"github.com/tallyhq/tally/ledger/service"
)

// newCache is the idempotency fast path over the Redis server, its metrics in reg.
func newCache(t *testing.T, srv *redistest.Server, reg *prometheus.Registry) *idemcache.Cache {
	t.Helper()
	return idemcache.New(idemcache.Config{Redis: srv.Client(), Retention: time.Hour, Registerer: reg})
}

// name names the cache after the client's first shard, as the service does.
func name(t *testing.T, c *client, cache *idemcache.Cache) {
	t.Helper()
	id, err := c.set.Shards()[0].Identity(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cache.SetIdentity(id)
}

// lookups counts the cache's lookups with that result.
func lookups(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == "tally_idempotency_cache_lookups_total" && m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// answers records every answer each key got.
type answers struct {
	mu  sync.Mutex
	got map[string][]response
}

func (a *answers) add(key string, r response) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.got[key] = append(a.got[key], r)
}

// TestReplaysThroughRedisFaults: transfers under concurrent load, each key sent several
// times at once and again later, while Redis is killed, flushed, restarted with an old
// snapshot and hung. Every request succeeds; every key is posted once; every answer to a
// key is the first answer, byte for byte; the ledger verifies clean; and replays were
// answered from Redis while it was well.
func TestReplaysThroughRedisFaults(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	db := pgtest.NewShardDB(t, 0)
	cache := newCache(t, srv, reg)
	c := newClientOver(t, []*pgtest.DB{db}, nil, func(svc *service.Service, _ *httpapi.API) { svc.WithIdempotencyCache(cache) })
	name(t, c, cache)
	c.asset("USD", 2)
	from, to := c.account("alice", "USD"), c.account("bob", "USD")
	c.must(201, c.transfer("deposit", "external", from, "1000000", "USD"))

	all := &answers{got: map[string][]response{}}
	phase := func(name string, fault func()) {
		const keys, copies, workers = 40, 3, 8
		var sends []string
		for i := range keys {
			for range copies {
				sends = append(sends, fmt.Sprintf("%s-%d", name, i))
			}
		}
		rand.Shuffle(len(sends), func(i, j int) { sends[i], sends[j] = sends[j], sends[i] })
		work := make(chan string)
		var wg sync.WaitGroup
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for key := range work {
					all.add(key, c.transfer(key, from, to, amountOf(key), "USD"))
				}
			}()
		}
		for i, key := range sends {
			if i == len(sends)/2 && fault != nil {
				fault()
			}
			work <- key
		}
		close(work)
		wg.Wait()
		for key := range all.got { // every key so far, once more, after the fault
			all.add(key, c.transfer(key, from, to, amountOf(key), "USD"))
			// Another request under the key is refused, whatever Redis holds.
			if r := c.transfer(key, from, to, "0.01", "USD"); r.status != 409 || r.code() != ledger.CodeIdempotencyKeyReused {
				t.Fatalf("%s: another request under %s: %d %s", name, key, r.status, r.body)
			}
		}
		checkAnswers(t, name, all)
	}

	phase("steady", nil)
	if hits := lookups(t, reg, "hit"); hits == 0 {
		t.Fatal("with Redis well, no replay was answered from it")
	}
	phase("kill", func() {
		srv.Kill()
		time.Sleep(300 * time.Millisecond)
		srv.Restart()
	})
	phase("flushall", srv.FlushAll)
	srv.Save() // the entries of every phase so far
	phase("old-snapshot", func() {
		time.Sleep(300 * time.Millisecond) // this phase's first answers kept, then lost
		srv.Kill()
		srv.Restart()
	})
	phase("hung", func() {
		srv.Pause()
		time.AfterFunc(time.Second, srv.Resume)
	})

	var posted int
	if err := db.SuperConn(t).QueryRow(context.Background(),
		`SELECT count(*) FROM tally.transactions t WHERE EXISTS (
		   SELECT FROM tally.entries e WHERE e.transaction_id = t.id AND e.account_id = $1::uuid)`, to).Scan(&posted); err != nil {
		t.Fatal(err)
	}
	if posted != len(all.got) {
		t.Errorf("%d transfers posted for %d distinct keys", posted, len(all.got))
	}
	violations, err := c.set.Shards()[0].Verify(context.Background())
	if err != nil || len(violations) > 0 {
		t.Errorf("verify: %v %v", violations, err)
	}
}

// amountOf gives each key its own amount, so that answers differ between keys.
func amountOf(key string) string {
	var n int
	for _, b := range []byte(key) {
		n = (n*31 + int(b)) % 9973
	}
	return fmt.Sprintf("%d.%02d", n/100+1, n%100)
}

// checkAnswers: every answer to a key succeeded and is the first, byte for byte.
func checkAnswers(t *testing.T, phase string, all *answers) {
	t.Helper()
	for key, rs := range all.got {
		first := rs[0]
		if first.status != 201 {
			t.Fatalf("%s: %s answered %d: %s", phase, key, first.status, first.body)
		}
		for _, r := range rs[1:] {
			if r.status != first.status || !bytes.Equal(r.body, first.body) {
				t.Fatalf("%s: %s answered %d %s, then %d %s", phase, key, first.status, first.body, r.status, r.body)
			}
		}
	}
}

// TestCacheNeverAnswersForAnotherDatabase: a Redis that outlives its database (the
// ledger made anew) holds answers the new database never gave. The same request to the
// new database gets the new database's answer, not the old one's.
func TestCacheNeverAnswersForAnotherDatabase(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	oldCache := newCache(t, srv, reg)
	old := newClientOver(t, []*pgtest.DB{pgtest.NewShardDB(t, 0)}, nil, func(svc *service.Service, _ *httpapi.API) { svc.WithIdempotencyCache(oldCache) })
	name(t, old, oldCache)
	old.asset("USD", 2)
	from := old.account("alice", "USD")
	first := old.must(201, old.transfer("k", "external", from, "5", "USD"))
	deadline := time.Now().Add(10 * time.Second)
	for lookups(t, reg, "hit") == 0 { // kept in the background
		if time.Now().After(deadline) {
			t.Fatal("the old database's answer was never answered from Redis")
		}
		if r := old.transfer("k", "external", from, "5", "USD"); !bytes.Equal(r.body, first.body) {
			t.Fatalf("replay: %s, first %s", r.body, first.body)
		}
		time.Sleep(10 * time.Millisecond)
	}

	newCache := newCache(t, srv, prometheus.NewRegistry())
	anew := newClientOver(t, []*pgtest.DB{pgtest.NewShardDB(t, 0)}, nil, func(svc *service.Service, _ *httpapi.API) { svc.WithIdempotencyCache(newCache) })
	name(t, anew, newCache)
	anew.asset("USD", 2)
	r := anew.transfer("k", "external", from, "5", "USD")
	if r.status != 404 || r.code() != ledger.CodeAccountNotFound || r.header.Get("Idempotent-Replayed") != "" {
		t.Errorf("the new database, which has no such account: %d %s (replayed %q)", r.status, r.body, r.header.Get("Idempotent-Replayed"))
	}
}

// TestEveryWriteReplaysFromRedis: each kind of idempotent write (a transaction, a
// pending transfer, a post, a reversal, a transfer between shards, a refusal) is
// answered from Redis on a replay, with its first answer's status and bytes.
func TestEveryWriteReplaysFromRedis(t *testing.T) {
	srv := redistest.Start(t)
	reg := prometheus.NewRegistry()
	cache := newCache(t, srv, reg)
	c := newClientOver(t, []*pgtest.DB{pgtest.NewShardDB(t, 0), pgtest.NewShardDB(t, 1)}, nil,
		func(svc *service.Service, _ *httpapi.API) { svc.WithIdempotencyCache(cache) })
	name(t, c, cache)
	c.asset("USD", 2)
	owners := c.ownerPerShard(2)
	a, b, far := c.account(owners[0], "USD"), c.account(owners[0], "USD"), c.account(owners[1], "USD")
	c.must(201, c.transfer("deposit", "external", a, "100", "USD"))
	pending := c.must(201, c.do("POST", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"5","asset":"USD","pending":true}`, a, b), "Idempotency-Key", "hold"))
	paid := c.must(201, c.transfer("pay", a, b, "3", "USD"))
	writes := []struct {
		name, path, body, key string
		status                int
	}{
		{"transaction", "/v1/transactions", fmt.Sprintf(`{"postings":[{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD"}]}`, a, b), "tx", 201},
		{"pending transfer", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1","asset":"USD","pending":true}`, a, b), "hold-2", 201},
		{"post", "/v1/transfers/" + pending.field("id") + "/post", `{"amount":"2"}`, "post", 201},
		{"reversal", "/v1/transactions/" + paid.field("id") + "/reverse", "", "rev", 201},
		{"between shards", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"4","asset":"USD"}`, a, far), "across", 201},
		{"refusal", "/v1/transfers", fmt.Sprintf(`{"from_account":%q,"to_account":%q,"amount":"1000","asset":"USD"}`, a, b), "broke", 422},
	}
	for _, w := range writes {
		first := c.do("POST", w.path, w.body, "Idempotency-Key", w.key)
		if first.status != w.status {
			t.Fatalf("%s: %d %s", w.name, first.status, first.body)
		}
		hits := lookups(t, reg, "hit")
		deadline := time.Now().Add(10 * time.Second)
		for lookups(t, reg, "hit") == hits { // kept in the background
			if time.Now().After(deadline) {
				t.Fatalf("%s: never answered from Redis", w.name)
			}
			r := c.do("POST", w.path, w.body, "Idempotency-Key", w.key)
			if r.status != first.status || !bytes.Equal(r.body, first.body) || r.header.Get("Idempotent-Replayed") != "true" {
				t.Fatalf("%s: replay %d %s, first %d %s", w.name, r.status, r.body, first.status, first.body)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
