package httpapi

import (
	"context"
	"net/http"
	"time"

	"github.com/tallyhq/tally/ledger"
)

// Limits of the HTTP server and of each request.
const (
	// MaxHeaderBytes bounds a request's header lines; a larger header is answered with a
	// 431 problem document.
	MaxHeaderBytes = 64 << 10
	// headerReadBytes is what the server reads of a header before giving up with its own
	// plain-text 431: far above MaxHeaderBytes, so that a header a client could plausibly
	// send by mistake still gets a problem document that says what went wrong.
	headerReadBytes = 4 << 20
	// RequestTimeout bounds one request's work: past it the request answers 503 and its
	// transfer, if any was queued and not yet taken by a writer, is never applied.
	RequestTimeout = 30 * time.Second
	// DefaultMaxConcurrentRequests bounds the requests served at once; beyond it a
	// request is answered 503 at once instead of queueing without bound.
	DefaultMaxConcurrentRequests = 4096
	readHeaderTimeout            = 10 * time.Second
	readTimeout                  = 30 * time.Second
	writeTimeout                 = RequestTimeout + 10*time.Second
	idleTimeout                  = 2 * time.Minute
)

// Server returns an http.Server for the API with every limit set: header size, read,
// write and idle timeouts, and, through Handler, the per-request deadline and the bound
// on concurrent requests.
func (a *API) Server() *http.Server {
	return &http.Server{
		Handler:           a.Handler(),
		MaxHeaderBytes:    headerReadBytes,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
	}
}

// limit applies the per-request limits in front of the routes.
func (a *API) limit(next http.Handler) http.Handler {
	slots := make(chan struct{}, a.maxConcurrent)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if headerBytes(r) > MaxHeaderBytes {
			writeProblem(w, ledger.Errorf(ledger.CodeHeaderTooLarge, "the request's header exceeds %d bytes", MaxHeaderBytes).Problem())
			return
		}
		select {
		case slots <- struct{}{}:
			defer func() { <-slots }()
		default:
			w.Header().Set("Retry-After", retryAfterSeconds)
			writeProblem(w, ledger.Errorf(ledger.CodeUnavailable, "the service is serving its limit of %d requests at once", a.maxConcurrent).Problem())
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), RequestTimeout)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// headerBytes approximates the header's size on the wire.
func headerBytes(r *http.Request) int {
	n := len(r.RequestURI)
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}
