package pipeline_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

var (
	start      = pipelinetest.Start
	get        = pipelinetest.Get
	waitExact  = pipelinetest.WaitExact
	sumMetric  = pipelinetest.SumMetric
	capture    = pipelinetest.CaptureUpstream
	upstreamPW = pipelinetest.UpstreamPassword
)

// TestConformanceOnTheCapture serves the shared capture through a flaky,
// slow, paging upstream and expects exactly expected-incidents.json, which
// stays exact over further polls.
func TestConformanceOnTheCapture(t *testing.T) {
	sim, hs, expected := capture(t, simulator.Faults{Latency: 20 * time.Millisecond, FailRate: 0.3, PageSize: 50})
	r := start(t, t.TempDir(), hs.URL, nil)
	waitExact(t, r.URL, expected, 90*time.Second)

	// More polls of the same data change nothing.
	polls := sim.Requests("/incidents/denial/")
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return sim.Requests("/incidents/denial/") >= polls+12, "waiting for more polls"
	})
	waitExact(t, r.URL, expected, 5*time.Second)
	_, metrics, err := get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got := sumMetric(t, metrics, "incidents_published_total"); got != 2100 {
		t.Errorf("incidents_published_total = %v after many polls, want 2100 distinct incidents", got)
	}
	if got := sumMetric(t, metrics, "incidents_view_incidents"); got != 2100 {
		t.Errorf("incidents_view_incidents = %v, want 2100", got)
	}
	if got := sumMetric(t, metrics, "incidents_dlq_total"); got != 0 {
		t.Errorf("incidents_dlq_total = %v on valid data", got)
	}
	// The upstream password (and its basic-auth encoding) is nowhere: not in
	// logs, metrics or any response.
	seen := r.Logs.String() + string(metrics)
	for _, path := range []string{"/incidents", "/unattributed", "/healthz", "/readyz", "/incidents/none", "/nowhere"} {
		_, body, err := get(r.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		seen += string(body)
	}
	for _, secret := range []string{upstreamPW, "dXNlcjpzM2NyZXQtdXBzdHJlYW0tcGFzc3dvcmQ"} {
		if strings.Contains(seen, secret) {
			t.Errorf("the upstream password appears in logs, metrics or responses")
		}
	}
}

// TestRestartServesLastViewWithUpstreamDown stops the pipeline gracefully
// and restarts it on the same data with the upstream answering only errors:
// the last view is served at once, and is still exact after failed polls.
func TestRestartServesLastViewWithUpstreamDown(t *testing.T) {
	sim, hs, expected := capture(t, simulator.Faults{})
	dataDir := t.TempDir()
	r := start(t, dataDir, hs.URL, nil)
	waitExact(t, r.URL, expected, 60*time.Second)
	r.Stop(t)

	sim.SetFaults(simulator.Faults{FailRate: 1})
	r = start(t, dataDir, hs.URL, nil)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		code, _, _ := get(r.URL + "/readyz")
		return code == http.StatusOK, "waiting for /readyz"
	})
	waitExact(t, r.URL, expected, time.Second)
	before := sim.Requests("/incidents/misuse/")
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return sim.Requests("/incidents/misuse/") >= before+3, "waiting for failing polls"
	})
	waitExact(t, r.URL, expected, time.Second)
	if !strings.Contains(r.Logs.String(), "upstream request failed") {
		t.Error("failed polls were not logged")
	}
}

// TestStandaloneWithNATSURL: with NATS_URL set the standalone starts no
// server of its own and runs every stage against the one named (it panicked
// on a nil embedded server before).
func TestStandaloneWithNATSURL(t *testing.T) {
	ns := testkit.JetStream(t)
	_, hs, expected := capture(t, simulator.Faults{})
	r := start(t, t.TempDir(), hs.URL, map[string]string{"NATS_URL": ns.ClientURL()})
	if r.NATS != ns.ClientURL() {
		t.Fatalf("pipeline reports NATS %q, want the server named by NATS_URL %q", r.NATS, ns.ClientURL())
	}
	waitExact(t, r.URL, expected, 60*time.Second)
}
