package httpapi

import (
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/tallyhq/tally/ledger"
	"github.com/tallyhq/tally/ledger/auth"
	"github.com/tallyhq/tally/ledger/ratelimit"
)

// rateLimit counts the request against its caller's allowance for its class and says
// where it stands in the RateLimit-* headers (the IETF draft's names); over the limit it
// answers 429 rate_limited with Retry-After.
func (a *API) rateLimit(w http.ResponseWriter, r *http.Request, caller auth.Caller) error {
	if a.limiter == nil {
		return nil
	}
	class := ratelimit.Writes
	if r.Method == http.MethodGet {
		class = ratelimit.Reads
	}
	d := a.limiter.Allow(r.Context(), caller.Name, class)
	if d.Limit.Rate == 0 {
		return nil // the class is not limited
	}
	h := w.Header()
	h.Set("RateLimit-Limit", strconv.Itoa(d.Limit.Burst))
	h.Set("RateLimit-Remaining", strconv.Itoa(d.Remaining))
	h.Set("RateLimit-Reset", seconds(d.ResetAfter))
	h.Set("RateLimit-Policy", strconv.Itoa(d.Limit.Burst)+";w="+seconds(d.Limit.Period*time.Duration(d.Limit.Burst)/time.Duration(d.Limit.Rate)))
	if d.Allowed {
		return nil
	}
	h.Set("Retry-After", seconds(d.RetryAfter))
	return ledger.Errorf(ledger.CodeRateLimited, "%s are limited to %s per caller; retry after %s", class, d.Limit, d.RetryAfter.Round(time.Millisecond))
}

// seconds is a duration in whole seconds, rounded up: a client that waits that long is
// never early.
func seconds(d time.Duration) string {
	return strconv.Itoa(int(math.Ceil(d.Seconds())))
}
