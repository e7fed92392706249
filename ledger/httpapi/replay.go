package httpapi

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/idemcache"
)

// WithIdempotencyCache answers replays of completed writes from the cache when it holds
// their answers, and keeps every first answer there (idemcache says why that is safe).
func (a *API) WithIdempotencyCache(c *idemcache.Cache) *API {
	a.cache = c
	return a
}

// sideLookup is the cache's lookup of a write's answer, made beside its way to
// PostgreSQL rather than before it: a first attempt (a miss) waits for Redis not at all,
// so it joins its shard's batch as soon as without a cache, and batches stay as large.
// A replay found in the cache ends its request's context, and the batcher drops a
// request whose context ended before its batch was sent, never applied: then PostgreSQL
// is never touched. Found after its batch was sent, the replay is answered by PostgreSQL
// as without a cache, with the same bytes. While most lookups find an answer (a storm of
// retries), the write waits for the lookup first, so the storm stays off PostgreSQL.
type sideLookup struct {
	ctx    context.Context // the write's context, ended by a hit
	cancel context.CancelFunc
	done   chan struct{} // closed once the lookup is over; nil without a cache
	answer idemcache.Answer
	hit    bool
}

// lookupBeside starts looking the request (caller, key and hash) up in the cache.
func (a *API) lookupBeside(r *http.Request, key string, hash [32]byte) *sideLookup {
	ctx, cancel := context.WithCancel(r.Context())
	l := &sideLookup{ctx: ctx, cancel: cancel}
	if a.cache == nil {
		return l
	}
	l.done = make(chan struct{})
	caller := callerOf(r.Context()).Name
	go func() {
		defer close(l.done)
		// Not cancelled when the request ends: the call is over within Redis's timeouts.
		l.answer, l.hit = a.cache.Lookup(context.WithoutCancel(r.Context()), caller, key, hash)
		if l.hit {
			cancel()
		}
	}()
	if a.cache.ReplaysDominate() {
		<-l.done
	}
	return l
}

// replayedFirst answers the write from the cache if the lookup found its answer before
// the write set out for PostgreSQL; it reports whether it did.
func (a *API) replayedFirst(w http.ResponseWriter, kind string, l *sideLookup) bool {
	if l.done == nil {
		return false
	}
	select {
	case <-l.done:
		return l.hit && a.cachedReplay(w, kind, l, errFoundFirst)
	default:
		return false
	}
}

// errFoundFirst stands for PostgreSQL's answer to a write the cache answered first.
var errFoundFirst = errors.New("httpapi: answered from the idempotency cache")

// cachedReplay answers the write from the cache when PostgreSQL did not (err: the hit
// ended its context, or the database failed) and the cache holds this very request's
// answer, exactly as PostgreSQL's record would; it reports whether it did. An answer
// from PostgreSQL always wins. A duplicate of a request still in flight finds nothing in
// the cache: it waits in PostgreSQL for the first to commit and answers its outcome.
func (a *API) cachedReplay(w http.ResponseWriter, kind string, l *sideLookup, err error) bool {
	defer l.cancel()
	if err == nil || l.done == nil {
		return false
	}
	<-l.done
	if !l.hit {
		return false
	}
	a.metrics.observeTransaction(kind, "replayed", "")
	w.Header().Set("Idempotent-Replayed", "true")
	writeRaw(w, l.answer.Status, contentTypeOf(l.answer.Status), l.answer.Body)
	return true
}

// remember keeps a write's first answer for its replays. Only an answer PostgreSQL has
// recorded is kept: a 409 for a key used by another request is not the key's answer.
func (a *API) remember(r *http.Request, key string, hash [32]byte, started time.Time, status int, body []byte) {
	if a.cache == nil || status >= 300 && problemCodeOf(body) == ledger.CodeIdempotencyKeyReused {
		return
	}
	a.cache.Remember(callerOf(r.Context()).Name, key, idemcache.Answer{Hash: hash, Status: status, Body: body}, started)
}

func contentTypeOf(status int) string {
	if status >= 300 {
		return "application/problem+json"
	}
	return "application/json"
}
