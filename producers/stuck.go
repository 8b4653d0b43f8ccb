package producers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// pollState is how an endpoint's polls went lately.
type pollState struct {
	failing int       // polls failed in a row
	since   time.Time // when the first of them failed
	err     string    // the last one's error
}

// StuckAfter is how many polls of an endpoint must fail in a row before it
// counts as unable to advance (in /readyz, /status and the alert).
const StuckAfter = 3

// polled records the outcome of one poll of endpoint and returns how many
// polls of it have failed in a row, now and before this one.
func (p *Producers) polled(endpoint string, err error) (failing, before int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := p.polls[endpoint]
	before = st.failing
	if err == nil {
		st = pollState{}
	} else {
		if st.failing == 0 {
			st.since = time.Now()
		}
		st.failing++
		st.err = bounded(err.Error(), 300)
	}
	p.polls[endpoint] = st
	p.metrics.failing.WithLabelValues(endpoint).Set(float64(st.failing))
	return st.failing, before
}

// Stuck returns, by endpoint, why each that cannot advance (StuckAfter
// polls or more failed in a row) cannot.
func (p *Producers) Stuck() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]string{}
	for endpoint, st := range p.polls {
		if st.failing >= StuckAfter {
			out[endpoint] = fmt.Sprintf("%d polls failed in a row since %s: %s", st.failing, st.since.UTC().Format(time.RFC3339), st.err)
		}
	}
	return out
}

// Advancing is an advisory readiness check: it names every endpoint whose
// polls cannot advance. The view keeps what it has; restarting would not
// help, so it does not fail readiness.
func (p *Producers) Advancing(context.Context) error {
	stuck := p.Stuck()
	if len(stuck) == 0 {
		return nil
	}
	endpoints := make([]string, 0, len(stuck))
	for e := range stuck {
		endpoints = append(endpoints, e)
	}
	slices.Sort(endpoints)
	parts := make([]string, len(endpoints))
	for i, e := range endpoints {
		parts[i] = e + ": " + stuck[e]
	}
	return errors.New(strings.Join(parts, "; "))
}

// bounded cuts s to at most n bytes, on a rune boundary.
func bounded(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
