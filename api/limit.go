package api

import (
	"log/slog"
	"math"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/go-chi/httprate"
)

// rateLimit limits each client address to perSecond requests a second,
// counted over a sliding window of a second (go-chi/httprate: its counters
// are dropped window by window, so memory follows the active clients). The
// client is the connection's address: forwarded headers are not trusted.
func rateLimit(perSecond float64) func(http.Handler) http.Handler {
	return httprate.LimitBy(max(1, int(math.Ceil(perSecond))), time.Second, clientAddress,
		httprate.WithLimitHandler(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1")
			writeError(w, http.StatusTooManyRequests, "too many requests")
		}))
}

// clientAddress keys a request by the address of its connection (an IPv6
// client by its /64, as httprate canonicalises it).
func clientAddress(r *http.Request) (string, error) {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return httprate.CanonicalizeIP(host), nil
}

// recoverer turns a panic into a plain 500: the stack goes to the log, never
// to the client.
func recoverer(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					log.Error("panic serving a request", "path", r.URL.Path, "panic", v, "stack", string(debug.Stack()))
					writeError(w, http.StatusInternalServerError, "internal error")
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
}
