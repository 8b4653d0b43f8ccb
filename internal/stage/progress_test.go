package stage

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

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
