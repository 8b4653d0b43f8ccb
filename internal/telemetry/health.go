package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"
)

// Check reports why something is not ready, or nil when it is.
type Check func(ctx context.Context) error

// Health answers /healthz (the process is alive) and /readyz (every check
// passes) for one binary.
type Health struct {
	mu     sync.Mutex
	checks []namedCheck
}

type namedCheck struct {
	name     string
	check    Check
	advisory bool
}

// Add registers a readiness check.
func (h *Health) Add(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, namedCheck{name: name, check: c})
}

// AddAdvisory registers a check that /readyz reports ("<name>: degraded:
// <why>") without failing readiness: something an operator must see that
// restarting or routing around the process would not fix (an upstream
// type that cannot advance).
func (h *Health) AddAdvisory(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.checks = append(h.checks, namedCheck{name: name, check: c, advisory: true})
}

// Ready runs every check and returns the first failure.
func (h *Health) Ready(ctx context.Context) error {
	for _, r := range h.Report(ctx) {
		if r.Err != nil && !r.Advisory {
			return fmt.Errorf("%s: %w", r.Name, r.Err)
		}
	}
	return nil
}

// Result is one check's outcome.
type Result struct {
	Name     string
	Err      error
	Advisory bool // Err does not fail readiness
}

// Report runs every check, in the order added, within 2 s in all.
func (h *Health) Report(ctx context.Context) []Result {
	h.mu.Lock()
	checks := append([]namedCheck(nil), h.checks...)
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	out := make([]Result, len(checks))
	for i, c := range checks {
		out[i] = Result{Name: c.name, Err: c.check(ctx), Advisory: c.advisory}
	}
	return out
}

// Live answers 200 while the process serves HTTP.
func (h *Health) Live(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// Readiness answers 200 when every check passes, else 503; the first line
// says "ready" or "not ready: <the first failure>", then one line per
// component by name: "<name>: ok" or "<name>: <why not>".
func (h *Health) Readiness(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	results := h.Report(r.Context())
	var first *Result
	for i := range results {
		if results[i].Err != nil && !results[i].Advisory && first == nil {
			first = &results[i]
		}
	}
	if first != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintf(w, "not ready: %s: %v\n", first.Name, first.Err)
	} else {
		fmt.Fprintln(w, "ready")
	}
	for _, res := range results {
		if res.Err != nil && res.Advisory {
			fmt.Fprintf(w, "%s: degraded: %v\n", res.Name, res.Err)
		} else if res.Err != nil {
			fmt.Fprintf(w, "%s: %v\n", res.Name, res.Err)
		} else {
			fmt.Fprintf(w, "%s: ok\n", res.Name)
		}
	}
}
