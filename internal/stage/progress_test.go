package stage

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestProgressLogsOncePerChange: a failure repeated many times is one log
// line (and a count), not one line each.
func TestProgressLogsOncePerChange(t *testing.T) {
	var buf bytes.Buffer
	p := NewProgress("test", prometheus.NewRegistry(), slog.New(slog.NewTextHandler(&buf, nil)))
	for range 1000 {
		p.Stalled(errors.New("insufficient storage"))
		p.MessageFailed(KindMessage, errors.New("bad message"))
	}
	if n := strings.Count(buf.String(), "\n"); n != 2 {
		t.Fatalf("%d log lines for 2000 failures, want 2 (one per kind):\n%s", n, buf.String())
	}
	if got := testutil.ToFloat64(p.failures.WithLabelValues(KindInfrastructure)); got != 1000 {
		t.Errorf("infrastructure failures counted %v, want 1000", got)
	}
	if p.Check(context.Background()) == nil {
		t.Error("Check passes while stalled")
	}
	p.OK()
	p.OK()
	if err := p.Check(context.Background()); err != nil {
		t.Errorf("Check after OK: %v", err)
	}
	if n := strings.Count(buf.String(), "stage resumed"); n != 1 {
		t.Errorf("%d 'stage resumed' lines, want 1", n)
	}
}

// TestReadinessFollowsWaitingWork: a stage is not ready once work waits and
// none is done for the quiet limit, or once its lag cannot be read for as
// long; an idle stage, and one that progresses, stay ready.
func TestReadinessFollowsWaitingWork(t *testing.T) {
	const quiet = 40 * time.Millisecond
	tests := []struct {
		name  string
		steps func(p *Progress)
		ready bool
	}{
		{"idle", func(p *Progress) { p.lag(0); time.Sleep(2 * quiet); p.lag(0) }, true},
		{"work just arrived", func(p *Progress) { time.Sleep(2 * quiet); p.lag(5) }, true},
		{"work waits, none done", func(p *Progress) { p.lag(5); time.Sleep(2 * quiet); p.lag(5) }, false},
		{"work waits, some done", func(p *Progress) { p.lag(5); time.Sleep(2 * quiet); p.OK(); p.lag(3) }, true},
		{"lag unreadable briefly", func(p *Progress) { p.lagUnknown(errors.New("timeout")) }, true},
		{"lag unreadable for long", func(p *Progress) {
			p.lagUnknown(errors.New("timeout"))
			time.Sleep(2 * quiet)
			p.lagUnknown(errors.New("timeout"))
		}, false},
		{"lag readable again", func(p *Progress) { p.lagUnknown(errors.New("timeout")); time.Sleep(2 * quiet); p.lag(0) }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := NewProgress("test", prometheus.NewRegistry(), nil)
			p.quietMax = quiet
			tc.steps(p)
			if err := p.Check(context.Background()); (err == nil) != tc.ready {
				t.Errorf("ready %v (%v), want %v", err == nil, err, tc.ready)
			}
		})
	}
}
