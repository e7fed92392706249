// Package ratelimit limits each caller's requests per class of route. The allowance is
// shared by every ledger replica through Redis (GCRA, go-redis/redis_rate); when Redis
// is unreachable or slow, each replica falls back to an allowance of its own in memory
// for a while, so a limiter that is down never fails a request. Far from a caller's
// limit a replica admits on a lease and charges Redis later (leaseShare).
package ratelimit

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/time/rate"

	"github.com/tallyhq/tally/internal/redisconn"
)

// Class is a kind of route with its own allowance.
type Class string

// The classes: writes (transfers, transactions, accounts, every POST) and reads.
const (
	Writes Class = "writes"
	Reads  Class = "reads"
)

// maxLocal bounds the in-memory limiters of the fallback, and the leases.
const maxLocal = 100_000

// A replica admits a caller's requests on its own, asking Redis nothing, while Redis last
// said (within leaseFresh) that more than a leaseShare-th of the burst remains, and up to
// that share; the request that would pass it asks Redis, charging it with every request
// admitted since. Near the limit every request asks Redis, so the allowance there is
// exact; far from it, replicas may together admit at most a leaseShare-th of the burst
// each beyond it. A burst under leaseShare is always exact. Without this, a limit nobody
// reaches costs every request a call to Redis.
const (
	leaseShare = 64
	leaseFresh = time.Second
)

// Limit allows Rate requests per Period, in bursts of up to Burst.
type Limit struct {
	Rate   int
	Period time.Duration
	Burst  int
}

// ParseLimit reads a limit written as RATE/UNIT, with UNIT s, m or h, and optionally
// :BURST (default: RATE), for example 600/m or 100/s:200.
func ParseLimit(s string) (Limit, error) {
	spec, burst, hasBurst := strings.Cut(s, ":")
	n, unit, ok := strings.Cut(spec, "/")
	periods := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour}
	l := Limit{Period: periods[unit]}
	var err error
	if l.Rate, err = strconv.Atoi(n); err != nil || !ok || l.Period == 0 || l.Rate < 1 {
		return Limit{}, fmt.Errorf("ratelimit: %q is not RATE/UNIT[:BURST] with a positive RATE and UNIT s, m or h", s)
	}
	l.Burst = l.Rate
	if hasBurst {
		if l.Burst, err = strconv.Atoi(burst); err != nil || l.Burst < 1 {
			return Limit{}, fmt.Errorf("ratelimit: burst %q of %q is not a positive number", burst, s)
		}
	}
	return l, nil
}

// String writes the limit as ParseLimit reads it.
func (l Limit) String() string {
	unit := map[time.Duration]string{time.Second: "s", time.Minute: "m", time.Hour: "h"}[l.Period]
	return fmt.Sprintf("%d/%s:%d", l.Rate, unit, l.Burst)
}

// Config is what a Limiter needs.
type Config struct {
	// Limits per class; a class without one is not limited.
	Limits map[Class]Limit
	// Redis shares the allowance between replicas; nil keeps each replica's own.
	Redis *redisconn.Client
	Log   *slog.Logger
	// Registerer receives the limiter's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Decision is the answer for one request.
type Decision struct {
	Allowed bool
	Limit   Limit
	// Remaining is how many more requests would be allowed now.
	Remaining int
	// RetryAfter is when the next request will be allowed (when not Allowed);
	// ResetAfter when the whole burst will be available again.
	RetryAfter, ResetAfter time.Duration
}

// Limiter decides whether a caller's request may go on.
type Limiter struct {
	cfg       Config
	shared    *redis_rate.Limiter
	decisions *prometheus.CounterVec

	mu     sync.Mutex
	local  map[string]*rate.Limiter
	leases map[string]*lease
}

// lease is what a replica may admit of a key on its own.
type lease struct {
	remaining  int // what Redis said remains, after its last charge
	resetAfter time.Duration
	at         time.Time // when Redis said it
	granted    int       // admitted here since, not yet charged to Redis
}

// New returns a limiter.
func New(cfg Config) *Limiter {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	l := &Limiter{cfg: cfg, local: map[string]*rate.Limiter{}, leases: map[string]*lease{},
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tally_ratelimit_decisions_total",
			Help: "Rate limit decisions, by class, outcome (allowed, limited) and where they were taken (redis; lease: by this replica, far from the limit, charged to Redis later; memory: Redis unreachable or not configured).",
		}, []string{"class", "outcome", "source"})}
	if cfg.Redis != nil {
		l.shared = redis_rate.NewLimiter(batchedScripts{cfg.Redis.Redis, cfg.Redis})
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(l.decisions)
	}
	return l
}

// Warm makes a first shared decision: it connects to Redis and loads the limiter's
// script before a request needs them. An error means Redis is not there yet; requests
// then fall back until it is.
func (l *Limiter) Warm(ctx context.Context) error {
	if l.shared == nil {
		return nil
	}
	_, err := l.shared.Allow(ctx, "tally:rl:warm", redis_rate.PerSecond(1))
	return err
}

// Allow decides on one request of the caller in the class.
func (l *Limiter) Allow(ctx context.Context, caller string, class Class) Decision {
	limit, ok := l.cfg.Limits[class]
	if !ok {
		return Decision{Allowed: true}
	}
	key := "tally:rl:" + string(class) + ":" + caller
	d, source := l.allowShared(ctx, key, limit)
	if source == "" {
		d, source = l.allowLocal(key, limit), "memory"
	}
	outcome := "allowed"
	if !d.Allowed {
		outcome = "limited"
	}
	l.decisions.WithLabelValues(string(class), outcome, source).Inc()
	return d
}

// allowShared asks Redis, unless it is skipped or the key's lease admits the request;
// source is "" when it gave no answer.
func (l *Limiter) allowShared(ctx context.Context, key string, limit Limit) (Decision, string) {
	if l.shared == nil || l.cfg.Redis.Breaker.Open() {
		return Decision{}, ""
	}
	share := limit.Burst / leaseShare
	l.mu.Lock()
	ls := l.leases[key]
	if ls != nil && share > 0 && ls.granted < share && ls.remaining-ls.granted > share && time.Since(ls.at) < leaseFresh {
		ls.granted++
		d := Decision{Allowed: true, Limit: limit, Remaining: ls.remaining - ls.granted, ResetAfter: ls.resetAfter}
		l.mu.Unlock()
		return d, "lease"
	}
	charge := 1
	if ls != nil {
		charge += ls.granted
		ls.granted = 0
	}
	l.mu.Unlock()
	// The requests admitted on the lease were allowed already: this one is allowed if
	// Redis allows all of them and it.
	res, err := l.shared.AllowAtMost(ctx, key, redis_rate.Limit{Rate: limit.Rate, Period: limit.Period, Burst: limit.Burst}, charge)
	if err != nil {
		if ctx.Err() == nil { // a request that went away is not Redis's fault
			l.cfg.Redis.Breaker.Fail(err, "rate limits fall back to each replica's memory, and replays to PostgreSQL")
		}
		return Decision{}, ""
	}
	d := Decision{Allowed: res.Allowed >= charge, Limit: limit, Remaining: res.Remaining, RetryAfter: max(res.RetryAfter, 0), ResetAfter: res.ResetAfter}
	if !d.Allowed && d.RetryAfter == 0 {
		d.RetryAfter = limit.Period / time.Duration(limit.Rate) // Redis let the lease's requests in, not this one
	}
	if share > 0 {
		l.mu.Lock()
		if ls = l.leases[key]; ls == nil {
			if len(l.leases) >= maxLocal {
				for k := range l.leases { // map order is random: a random entry makes room
					delete(l.leases, k)
					break
				}
			}
			ls = &lease{}
			l.leases[key] = ls
		}
		ls.remaining, ls.resetAfter, ls.at = res.Remaining, res.ResetAfter, time.Now()
		l.mu.Unlock()
	}
	return d, "redis"
}

// allowLocal decides with this replica's own token bucket for the key.
func (l *Limiter) allowLocal(key string, limit Limit) Decision {
	l.mu.Lock()
	lim, ok := l.local[key]
	if !ok {
		if len(l.local) >= maxLocal {
			for k := range l.local { // map order is random: a random entry makes room
				delete(l.local, k)
				break
			}
		}
		lim = rate.NewLimiter(rate.Limit(float64(limit.Rate)/limit.Period.Seconds()), limit.Burst)
		l.local[key] = lim
	}
	l.mu.Unlock()
	now := time.Now()
	r := lim.ReserveN(now, 1)
	d := Decision{Limit: limit}
	if delay := r.DelayFrom(now); delay > 0 {
		r.CancelAt(now)
		d.RetryAfter = delay
	} else {
		d.Allowed = true
	}
	tokens := lim.TokensAt(now)
	d.Remaining = max(int(tokens), 0)
	d.ResetAfter = time.Duration((float64(limit.Burst) - tokens) / float64(lim.Limit()) * float64(time.Second))
	return d
}

// batchedScripts runs the limiter's script (EVALSHA) batched with the other requests' of
// the moment (redisconn.Client.Do); its other, rare, commands go straight to Redis.
type batchedScripts struct {
	redis.UniversalClient
	batched *redisconn.Client
}

// EvalSha runs a loaded script in the next pipeline.
func (b batchedScripts) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	cmdArgs := make([]any, 0, 3+len(keys)+len(args))
	cmdArgs = append(cmdArgs, "evalsha", sha1, len(keys))
	for _, k := range keys {
		cmdArgs = append(cmdArgs, k)
	}
	cmd := redis.NewCmd(ctx, append(cmdArgs, args...)...)
	if err := b.batched.Do(ctx, cmd); err != nil {
		failed := redis.NewCmd(ctx) // cmd may still be on its way
		failed.SetErr(err)
		return failed
	}
	return cmd
}
