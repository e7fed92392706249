package httpapi

import (
	"net/http"
	"strings"

	"github.com/tallyhq/tally/ledger"
)

// statusWriter remembers the status written, for metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
}

// WriteHeader records the first status.
func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write records 200 if no status was written yet.
func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// problemsForMux answers unknown paths and wrong methods with problem documents too,
// instead of ServeMux's plain text.
func problemsForMux(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := mux.Handler(r); pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		mux.ServeHTTP(&plainErrorRewriter{ResponseWriter: w}, r)
	})
}

// plainErrorRewriter replaces the mux's own text/plain 404 and 405 with problems.
type plainErrorRewriter struct {
	http.ResponseWriter
	swallow bool
}

// WriteHeader sends a problem instead of the mux's plain 404 or 405.
func (w *plainErrorRewriter) WriteHeader(code int) {
	if (code == http.StatusNotFound || code == http.StatusMethodNotAllowed) &&
		strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		w.swallow = true
		w.Header().Del("X-Content-Type-Options")
		if code == http.StatusNotFound {
			writeProblem(w.ResponseWriter, ledger.Errorf(ledger.CodeNotFound, "no such endpoint").Problem())
		} else {
			writeProblem(w.ResponseWriter, ledger.Errorf(ledger.CodeMethodNotAllowed, "allowed: %s", w.Header().Get("Allow")).Problem())
		}
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write drops the mux's plain text after a problem was sent.
func (w *plainErrorRewriter) Write(b []byte) (int, error) {
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}
