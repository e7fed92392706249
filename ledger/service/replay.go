package service

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/idemcache"
)

// sideLookup is the cache's lookup of a write's answer, made beside its way to
// PostgreSQL rather than before it: a first attempt (a miss) waits for Redis not at all,
// so it joins its shard's batch as soon as without a cache, and batches stay as large.
// A replay found in the cache ends its write's context, and the batcher drops a request
// whose context ended before its batch was sent, never applied: then PostgreSQL is
// never touched. Found after its batch was sent, the replay is answered by PostgreSQL as
// without a cache, with the same bytes. While most lookups find an answer (a storm of
// retries), the write waits for the lookup first, so the storm stays off PostgreSQL.
type sideLookup struct {
	ctx    context.Context // the write's context, ended by a hit
	cancel context.CancelFunc
	done   chan struct{} // closed once the lookup is over; nil without a cache
	answer idemcache.Answer
	hit    bool
}

// lookupBeside starts looking the write (caller, key and hash) up in the cache.
func (s *Service) lookupBeside(ctx context.Context, caller, key string, hash [32]byte) *sideLookup {
	wctx, cancel := context.WithCancel(ctx)
	l := &sideLookup{ctx: wctx, cancel: cancel}
	if s.cache == nil {
		return l
	}
	l.done = make(chan struct{})
	go func() {
		defer close(l.done)
		// Not cancelled when the write ends: the call is over within Redis's timeouts.
		l.answer, l.hit = s.cache.Lookup(context.WithoutCancel(ctx), caller, key, hash)
		if l.hit {
			cancel()
		}
	}()
	if s.cache.ReplaysDominate() {
		<-l.done
	}
	return l
}

// replayedFirst is the cache's answer if the lookup found it before the write set out
// for PostgreSQL.
func (s *Service) replayedFirst(kind string, l *sideLookup) (Answer, bool) {
	if l.done == nil {
		return Answer{}, false
	}
	select {
	case <-l.done:
		if !l.hit {
			return Answer{}, false
		}
		return s.cachedReplay(kind, l, errFoundFirst)
	default:
		return Answer{}, false
	}
}

// errFoundFirst stands for PostgreSQL's answer to a write the cache answered first.
var errFoundFirst = errors.New("service: answered from the idempotency cache")

// cachedReplay is the cache's answer when PostgreSQL gave none (err: the hit ended its
// context, or the database failed) and the cache holds this very request's answer,
// exactly as PostgreSQL's record would. An answer from PostgreSQL always wins. A
// duplicate of a request still in flight finds nothing in the cache: it waits in
// PostgreSQL for the first to commit and answers its outcome.
func (s *Service) cachedReplay(kind string, l *sideLookup, err error) (Answer, bool) {
	defer l.cancel()
	if err == nil || l.done == nil {
		return Answer{}, false
	}
	<-l.done
	if !l.hit {
		return Answer{}, false
	}
	s.metrics.observeTransaction(kind, "replayed", "")
	return Answer{Status: l.answer.Status, Body: l.answer.Body, Replayed: true}, true
}

// remember keeps a write's first answer for its replays. Only an answer PostgreSQL has
// recorded is kept: a 409 for a key used by another request is not the key's answer.
func (s *Service) remember(caller, key string, hash [32]byte, started time.Time, a Answer) {
	if s.cache == nil || a.Refused() && problemCodeOf(a.Body) == ledger.CodeIdempotencyKeyReused {
		return
	}
	s.cache.Remember(caller, key, idemcache.Answer{Hash: hash, Status: a.Status, Body: a.Body}, started)
}

func problemCodeOf(body []byte) ledger.Code {
	var p ledger.Problem
	_ = json.Unmarshal(body, &p)
	return p.Code
}
