// Package idemcache is the idempotency fast path: the answers of completed writes, kept
// in Redis so that a replay is answered without PostgreSQL. PostgreSQL stays the truth,
// and the cache only ever holds what it already says:
//
//   - An answer is kept only after PostgreSQL committed the request (synchronously
//     replicated, so no failover forgets it), and only a first answer: a replay's answer
//     comes from PostgreSQL anyway.
//   - An entry answers only the very request it was kept for: same caller, same key,
//     same request hash. Any other request under the key goes to PostgreSQL, which
//     answers 409 as before.
//   - An entry expires a tenth of the retention before PostgreSQL may forget the key, so
//     an entry, even one from an old snapshot, never answers for a key the database no
//     longer knows (and a new request under it would apply).
//   - Entries live under the database's identity (store.Identity): a database made anew
//     never inherits the answers kept for the one before.
//
// A cache that is down, slow, flushed or restarted with old data costs time, never
// correctness: every miss goes to PostgreSQL. Keeping an answer happens after the
// response, in the background, batched, so the first attempt never waits for Redis.
package idemcache

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/tallyhq/tally/internal/redisconn"
)

// entryVersion leads every entry, so a later layout is never misread.
const entryVersion = 1

// Answer is a completed write's response, as its first attempt answered it.
type Answer struct {
	// Hash is the request's hash: the entry answers that request only.
	Hash   [32]byte
	Status int
	Body   []byte
}

// Config is what a Cache needs.
type Config struct {
	// Redis holds the entries.
	Redis *redisconn.Client
	// Retention is how long PostgreSQL keeps idempotency records; entries expire a
	// tenth of it sooner.
	Retention time.Duration
	Log       *slog.Logger
	// Registerer receives the cache's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Cache is the fast path; its methods are safe for concurrent use.
type Cache struct {
	cfg       Config
	namespace atomic.Pointer[string] // the key prefix under the ledger's identity; nil: not known yet
	lookups   *prometheus.CounterVec
	writes    *prometheus.CounterVec
	// The hits among the latest lookups (a window of hitWindow), and whether they were
	// most of the last full window: a storm of retries.
	windowHits, windowLookups atomic.Int64
	replaysDominate           atomic.Bool
}

// hitWindow is how many lookups ReplaysDominate judges by.
const hitWindow = 256

// New returns a cache that looks nothing up and keeps nothing until SetIdentity.
func New(cfg Config) *Cache {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	c := &Cache{cfg: cfg,
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_idempotency_cache_lookups_total",
			Help: "Lookups of a write's answer in Redis, by result: hit (answered from Redis), miss, other_request (the key answers another request), skipped (Redis down or identity not known yet), error.",
		}, []string{"result"}),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_idempotency_cache_writes_total",
			Help: "Answers kept in Redis, by result: written, dropped (Redis down, queue full, or too late to expire in time), error.",
		}, []string{"result"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(c.lookups, c.writes)
	}
	return c
}

// SetIdentity names the database the answers come from (store.Identity); a new one
// leaves every entry kept under the old one unread.
func (c *Cache) SetIdentity(id string) {
	ns := "tally:idem:" + id + ":"
	c.namespace.Store(&ns)
}

// key is where the answer to the caller's key lives: hashed, so neither the caller nor
// the key is written to Redis as such, and any bytes make a valid Redis key.
func (c *Cache) key(caller, key string) (string, bool) {
	ns := c.namespace.Load()
	if ns == nil {
		return "", false
	}
	h := sha256.New()
	h.Write([]byte(caller))
	h.Write([]byte{0})
	h.Write([]byte(key))
	return *ns + hex.EncodeToString(h.Sum(nil)), true
}

// Lookup returns the answer kept for this request (the caller's key, with this hash),
// if any. Anything else (no entry, another request's, Redis down) is not found, and the
// request goes to PostgreSQL.
func (c *Cache) Lookup(ctx context.Context, caller, key string, hash [32]byte) (Answer, bool) {
	k, ok := c.key(caller, key)
	if !ok || c.cfg.Redis.Breaker.Open() {
		c.lookups.WithLabelValues("skipped").Inc()
		return Answer{}, false
	}
	get := redis.NewStringCmd(ctx, "get", k)
	err := c.cfg.Redis.Do(ctx, get) // with the other requests' of the moment
	var raw []byte
	if err == nil {
		raw, err = get.Bytes()
	}
	switch {
	case errors.Is(err, redis.Nil):
		c.lookups.WithLabelValues("miss").Inc()
		c.judge(false)
		return Answer{}, false
	case err != nil:
		if ctx.Err() == nil { // a request that went away is not Redis's fault
			c.cfg.Redis.Breaker.Fail(err, "replays go to PostgreSQL, rate limits to each replica's memory")
		}
		c.lookups.WithLabelValues("error").Inc()
		return Answer{}, false
	}
	a, ok := decode(raw)
	if !ok || a.Hash != hash {
		c.lookups.WithLabelValues("other_request").Inc()
		c.judge(false)
		return Answer{}, false
	}
	c.lookups.WithLabelValues("hit").Inc()
	c.judge(true)
	return a, true
}

// judge counts a lookup Redis answered into the window, and judges each full window.
func (c *Cache) judge(hit bool) {
	if hit {
		c.windowHits.Add(1)
	}
	if c.windowLookups.Add(1) == hitWindow {
		c.replaysDominate.Store(2*c.windowHits.Swap(0) > hitWindow)
		c.windowLookups.Store(0)
	}
}

// ReplaysDominate reports whether most of the latest lookups found an answer: a storm
// of retries (clients retrying what an outage left unanswered, say), when waiting for
// Redis before PostgreSQL takes the storm off PostgreSQL. Otherwise a write is better
// sent to PostgreSQL at once and looked up beside it.
func (c *Cache) ReplaysDominate() bool { return c.replaysDominate.Load() }

// Remember keeps the first answer to the caller's key, sent in the next pipeline with
// the other requests' commands; nothing waits for it. started is when the request
// began, before PostgreSQL recorded the key, so PostgreSQL keeps the key at least until
// started+Retention; the entry goes a tenth of the retention before. The time it waits
// in the client's queue is bounded by the client's timeouts, far inside that margin.
func (c *Cache) Remember(caller, key string, a Answer, started time.Time) {
	k, ok := c.key(caller, key)
	ttl := c.cfg.Retention - c.cfg.Retention/10 - time.Since(started)
	if !ok || ttl < time.Millisecond || c.cfg.Redis.Breaker.Open() {
		c.writes.WithLabelValues("dropped").Inc()
		return
	}
	set := redis.NewStatusCmd(context.Background(), "set", k, encode(a), "px", ttl.Milliseconds())
	sent := c.cfg.Redis.Send(set, func(err error) {
		if err != nil {
			c.cfg.Redis.Breaker.Fail(err, "replays go to PostgreSQL, rate limits to each replica's memory")
			c.writes.WithLabelValues("error").Inc()
			return
		}
		c.writes.WithLabelValues("written").Inc()
	})
	if !sent {
		c.writes.WithLabelValues("dropped").Inc()
	}
}

// encode lays an answer out as: version, hash, status (2 bytes), body.
func encode(a Answer) []byte {
	b := make([]byte, 0, 1+len(a.Hash)+2+len(a.Body))
	b = append(b, entryVersion)
	b = append(b, a.Hash[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(a.Status))
	return append(b, a.Body...)
}

// decode reads what encode wrote; anything else is not an answer.
func decode(b []byte) (Answer, bool) {
	const head = 1 + 32 + 2
	if len(b) < head || b[0] != entryVersion {
		return Answer{}, false
	}
	var a Answer
	copy(a.Hash[:], b[1:33])
	a.Status = int(binary.BigEndian.Uint16(b[33:head]))
	a.Body = b[head:]
	return a, a.Status >= 200 && a.Status < 600
}
