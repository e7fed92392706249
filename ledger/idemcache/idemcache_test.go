package idemcache_test

import (
	"context"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/internal/redisconn"
	"github.com/tallyhq/tally/internal/redistest"
	"github.com/tallyhq/tally/ledger/idemcache"
)

// started returns a cache over the server, named after the identity.
func started(t *testing.T, srv *redistest.Server, identity string, retention time.Duration) (*idemcache.Cache, *prometheus.Registry) {
	t.Helper()
	return startedWith(t, srv.Client(), identity, retention)
}

// startedWith is started over a client of the test's own making.
func startedWith(t *testing.T, client *redisconn.Client, identity string, retention time.Duration) (*idemcache.Cache, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	c := idemcache.New(idemcache.Config{Redis: client, Retention: retention, Registerer: reg})
	c.SetIdentity(identity)
	return c, reg
}

// eventually looks the request up until it is found (the answer is kept in the
// background) or a generous while has passed.
func eventually(c *idemcache.Cache, caller, key string, hash [32]byte) (idemcache.Answer, bool) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, ok := c.Lookup(context.Background(), caller, key, hash)
		if ok || time.Now().After(deadline) {
			return a, ok
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestAnswersOnlyTheSameRequest: an answer kept for a caller's key answers that request
// only: not another request under the key, not another caller, not another database.
func TestAnswersOnlyTheSameRequest(t *testing.T) {
	srv := redistest.Start(t)
	c, reg := started(t, srv, "db-1", time.Hour)
	hash := sha256.Sum256([]byte("transfer 1.50"))
	kept := idemcache.Answer{Hash: hash, Status: 201, Body: []byte(`{"id":"t1"}`)}
	c.Remember("shop", "k1", kept, time.Now())
	got, ok := eventually(c, "shop", "k1", hash)
	if !ok || got.Status != 201 || string(got.Body) != `{"id":"t1"}` || got.Hash != hash {
		t.Fatalf("kept answer: %+v %v", got, ok)
	}
	if _, ok := c.Lookup(context.Background(), "shop", "k1", sha256.Sum256([]byte("transfer 2"))); ok {
		t.Error("another request under the key was answered")
	}
	if _, ok := c.Lookup(context.Background(), "bank", "k1", hash); ok {
		t.Error("another caller's key was answered")
	}
	other, _ := started(t, srv, "db-2", time.Hour)
	if _, ok := other.Lookup(context.Background(), "shop", "k1", hash); ok {
		t.Error("a database made anew inherited the old one's answers")
	}
	// A refusal is an answer like any other.
	refusal := idemcache.Answer{Hash: hash, Status: 422, Body: []byte(`{"code":"insufficient_funds"}`)}
	c.Remember("shop", "k2", refusal, time.Now())
	if got, ok := eventually(c, "shop", "k2", hash); !ok || got.Status != 422 {
		t.Errorf("refusal: %+v %v", got, ok)
	}
	if n := count(t, reg, "tally_idempotency_cache_lookups_total", "other_request"); n != 1 {
		t.Errorf("lookups of another request: %v, want 1", n)
	}
}

// TestEntriesExpireBeforeTheDatabaseForgets: an entry lives at most the retention less
// a tenth from when its request began; one whose request began too long ago is not kept.
func TestEntriesExpireBeforeTheDatabaseForgets(t *testing.T) {
	srv := redistest.Start(t)
	retention := time.Hour
	c, reg := started(t, srv, "db", retention)
	hash := sha256.Sum256([]byte("r"))
	begun := time.Now().Add(-10 * time.Minute)
	c.Remember("shop", "k", idemcache.Answer{Hash: hash, Status: 201, Body: []byte("{}")}, begun)
	if _, ok := eventually(c, "shop", "k", hash); !ok {
		t.Fatal("not kept")
	}
	keys, err := srv.Client().Redis.Keys(context.Background(), "tally:idem:db:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v %v", keys, err)
	}
	ttl, err := srv.Client().Redis.PTTL(context.Background(), keys[0]).Result()
	// The TTL is counted when the answer is handed to the client, so the entry may
	// outlive the bound by the time it waited to be sent, which the client's timeouts
	// keep under a second (the margin is six minutes here).
	if limit := retention - retention/10 - time.Since(begun) + time.Second; err != nil || ttl <= 0 || ttl > limit {
		t.Errorf("TTL %v (%v), want at most %v", ttl, err, limit)
	}
	c.Remember("shop", "late", idemcache.Answer{Hash: hash, Status: 201, Body: []byte("{}")}, time.Now().Add(-retention))
	deadline := time.Now().Add(10 * time.Second)
	for count(t, reg, "tally_idempotency_cache_writes_total", "dropped") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("an answer too old to expire in time was not dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := c.Lookup(context.Background(), "shop", "late", hash); ok {
		t.Error("an answer too old to expire in time was kept")
	}
}

// TestSickRedisCostsMilliseconds: a hung Redis fails a lookup within the call timeout,
// then is skipped without a call until the cooldown ends; garbage under a key answers
// nothing; a Redis back is used again.
func TestSickRedisCostsMilliseconds(t *testing.T) {
	srv := redistest.Start(t)
	// A cooldown no busy machine outlasts between two lookups.
	client := redisconn.New(srv.Client().Redis, redisconn.NewBreaker(2*time.Second, nil))
	t.Cleanup(client.Close)
	c, reg := startedWith(t, client, "db", time.Hour)
	hash := sha256.Sum256([]byte("r"))
	c.Remember("shop", "k", idemcache.Answer{Hash: hash, Status: 201, Body: []byte("{}")}, time.Now())
	if _, ok := eventually(c, "shop", "k", hash); !ok {
		t.Fatal("not kept")
	}
	srv.Pause()
	begun := time.Now()
	if _, ok := c.Lookup(context.Background(), "shop", "k", hash); ok {
		t.Error("a hung Redis answered")
	}
	if took := time.Since(begun); took > 10*redisconn.CallTimeout {
		t.Errorf("a lookup in a hung Redis took %v", took)
	}
	if _, ok := c.Lookup(context.Background(), "shop", "k", hash); ok {
		t.Error("answered while skipped")
	}
	if n := count(t, reg, "tally_idempotency_cache_lookups_total", "skipped"); n != 1 {
		t.Errorf("lookups skipped while Redis is hung: %v, want 1", n)
	}
	srv.Resume()
	if _, ok := eventually(c, "shop", "k", hash); !ok {
		t.Error("Redis back, yet the answer is not read")
	}
	if err := srv.Client().Redis.Set(context.Background(), keyOf(t, srv), "garbage", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Lookup(context.Background(), "shop", "k", hash); ok {
		t.Error("garbage answered")
	}
}

// keyOf is the one key the server holds.
func keyOf(t *testing.T, srv *redistest.Server) string {
	t.Helper()
	keys, err := srv.Client().Redis.Keys(context.Background(), "tally:idem:*").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("keys %v %v", keys, err)
	}
	return keys[0]
}

// count is the counter of the family with that result.
func count(t *testing.T, reg *prometheus.Registry, family, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			if mf.GetName() == family && m.GetLabel()[0].GetValue() == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestStormsOfRetriesAreNoticed: once most of a window of lookups found answers, the
// cache says replays dominate; once most of one found none, it says they no longer do.
func TestStormsOfRetriesAreNoticed(t *testing.T) {
	srv := redistest.Start(t)
	c, _ := started(t, srv, "db", time.Hour)
	hash := sha256.Sum256([]byte("r"))
	c.Remember("shop", "k", idemcache.Answer{Hash: hash, Status: 201, Body: []byte("{}")}, time.Now())
	if _, ok := eventually(c, "shop", "k", hash); !ok {
		t.Fatal("not kept")
	}
	for range 300 {
		c.Lookup(context.Background(), "shop", "k", hash)
	}
	if !c.ReplaysDominate() {
		t.Error("300 hits in a row, yet replays do not dominate")
	}
	for range 300 {
		c.Lookup(context.Background(), "shop", "new", hash)
	}
	if c.ReplaysDominate() {
		t.Error("300 misses in a row, yet replays dominate")
	}
}
