package httpapi

import (
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

// cachedReplay answers the request from the idempotency cache if it holds this very
// request's answer (caller, key and hash), exactly as PostgreSQL's record would, and
// reports whether it did. A duplicate of a request still in flight finds nothing here:
// it goes to PostgreSQL, waits there for the first to commit, and answers its outcome.
func (a *API) cachedReplay(w http.ResponseWriter, r *http.Request, kind, key string, hash [32]byte) bool {
	if a.cache == nil {
		return false
	}
	ans, ok := a.cache.Lookup(r.Context(), callerOf(r.Context()).Name, key, hash)
	if !ok {
		return false
	}
	a.metrics.observeTransaction(kind, "replayed", "")
	w.Header().Set("Idempotent-Replayed", "true")
	writeRaw(w, ans.Status, contentTypeOf(ans.Status), ans.Body)
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
