// Package redisconn is the ledger's connection to Redis, which it uses only for what may
// be lost (rate limits, the idempotency fast path): calls that fail within milliseconds,
// and a breaker that skips Redis for a while once it failed, so a sick Redis costs a
// request nothing after the first few.
package redisconn

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of Options and of Breaker.
const (
	// CallTimeout bounds each read and write of a call.
	CallTimeout = 100 * time.Millisecond
	// dialTimeout bounds a connection, outside any request's few milliseconds: a request
	// that had to wait for one would otherwise give up, and so would the next.
	dialTimeout = time.Second
	// DefaultCooldown is how long Redis is skipped once it failed a call.
	DefaultCooldown = 5 * time.Second
)

// Options reads a redis:// or rediss:// URL into a client's options whose calls fail
// within milliseconds (CallTimeout for each read and write, never waiting for a pooled
// connection, never retried), and which keeps connections ready so that no request
// dials. A non-empty password overrides the URL's, so it need not be in any argument.
func Options(url, password string) (*redis.Options, error) {
	opts, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redisconn: redis URL: %w", err)
	}
	if password != "" {
		opts.Password = password
	}
	opts.ReadTimeout, opts.WriteTimeout, opts.PoolTimeout = CallTimeout, CallTimeout, CallTimeout
	opts.DialTimeout = dialTimeout
	opts.MinIdleConns = max(opts.MinIdleConns, 2)
	opts.MaxRetries = -1 // a failed call falls back at once; a retry would double its cost
	return opts, nil
}

// Breaker skips Redis for a cooldown after a call failed. Every user of one Redis shares
// one Breaker, so what one learns the others need not pay for again.
type Breaker struct {
	cooldown time.Duration
	log      *slog.Logger

	mu        sync.Mutex
	openUntil time.Time
}

// NewBreaker returns a closed breaker (DefaultCooldown when cooldown is not positive).
func NewBreaker(cooldown time.Duration, log *slog.Logger) *Breaker {
	if cooldown <= 0 {
		cooldown = DefaultCooldown
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Breaker{cooldown: cooldown, log: log}
}

// Open reports whether Redis is being skipped now.
func (b *Breaker) Open() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Now().Before(b.openUntil)
}

// Fail records that a call failed: Redis is skipped for the cooldown from now. The first
// failure after a quiet spell is logged, with what the callers do meanwhile.
func (b *Breaker) Fail(err error, meanwhile string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if time.Now().After(b.openUntil) {
		b.log.Warn("Redis did not answer: "+meanwhile, "for", b.cooldown, "err", err.Error())
	}
	b.openUntil = time.Now().Add(b.cooldown)
}
