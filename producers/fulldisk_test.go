package producers

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// TestFullStoreStallsVisiblyAndResumes: with JetStream out of storage, the
// producers keep polling, say once that they are stalled (log line, gauge,
// readiness) and publish by themselves once storage is free again.
func TestFullStoreStallsVisiblyAndResumes(t *testing.T) {
	s := testkit.JetStreamWith(t, embedded.Options{MaxStore: 16 << 20})
	_, js := testkit.Connect(t, s)
	sim := simulator.NewServer("u", "p", simulator.Faults{}, 1)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	c, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "u", Password: "p",
		Retry: upstream.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var items []json.RawMessage
	for i := range 50 {
		items = append(items, json.RawMessage(fmt.Sprintf(`{"priority":"low","employee_id":%d,"timestamp":%d}`, i, i)))
	}
	sim.SetIncidents(incident.Misuse, items)
	free := testkit.FillStore(t, js)

	logs := &testkit.SyncBuffer{}
	reg := prometheus.NewRegistry()
	p, err := New(Options{Upstream: c, JS: js, Interval: 100 * time.Millisecond, Types: []incident.Type{incident.Misuse},
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	runProducers(t, p)

	stalled := func() float64 {
		return testutil.ToFloat64(p.progress.StalledGauge())
	}
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		return p.Ready(context.Background()) != nil && stalled() == 1, "producers not reported stalled with the store full"
	})
	// Several more failing polls: still one line for the one stall.
	polls := func() float64 {
		return testutil.ToFloat64(p.metrics.polls.WithLabelValues(upstream.Endpoint(incident.Misuse), "error"))
	}
	before := polls()
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return polls() >= before+5, "polls stopped while stalled"
	})
	if n := strings.Count(logs.String(), "stage stalled"); n != 1 {
		t.Errorf("%d 'stage stalled' lines for one stall, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "poll failed"); n > 1 {
		t.Errorf("%d 'poll failed' lines for a stall already reported", n)
	}

	free()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		n := testkit.StreamMsgs(t, js, topology.StreamRaw)
		return n == 50 && p.Ready(context.Background()) == nil && stalled() == 0, fmt.Sprintf("%d incidents stored, ready: %v", n, p.Ready(context.Background()))
	})
	if !strings.Contains(logs.String(), "stage resumed") {
		t.Errorf("no 'stage resumed' line:\n%s", logs.String())
	}
}
