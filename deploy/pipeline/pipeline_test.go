package pipeline_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// running is a pipeline started in-process for a test.
type running struct {
	url    string
	nats   string // the embedded server's client URL
	cancel context.CancelFunc
	done   chan error
	logs   *syncBuffer
}

// start runs the pipeline on dataDir against upstream until stop.
func start(t *testing.T, dataDir, upstream string, env map[string]string) *running {
	t.Helper()
	vars := map[string]string{
		"UPSTREAM_URL": upstream, "UPSTREAM_USER": "user", "UPSTREAM_PASSWORD": "s3cret-upstream-password",
		"POLL_INTERVAL": "1s", "DATA_DIR": dataDir, "NATS_LISTEN": "127.0.0.1:-1", "UPSTREAM_TIMEOUT": "5s",
	}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.Load("test", nil, func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{url: "http://" + l.Addr().String(), cancel: cancel, done: make(chan error, 1), logs: logs}
	started := make(chan struct{})
	hooks := pipeline.Hooks{APIListener: l, Started: func(_, natsURL string) { r.nats = natsURL; close(started) }}
	go func() { r.done <- pipeline.Run(ctx, cfg, log, hooks) }()
	select {
	case <-started:
	case err := <-r.done:
		t.Fatalf("pipeline did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline did not start within 30s")
	}
	t.Cleanup(func() { r.stop(t) })
	return r
}

func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("pipeline: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline did not stop within 30s of cancellation")
	}
}

func get(url string) (int, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// waitExact waits until GET /incidents equals the expected document.
func waitExact(t *testing.T, url string, expected []byte, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() (bool, string) {
		code, body, err := get(url + "/incidents")
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("GET /incidents: %d %v", code, err)
		}
		problems := testkit.CompareIncidents(expected, body)
		if len(problems) == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("%d problems, first: %s", len(problems), problems[0])
	})
}

func captureUpstream(t *testing.T, faults simulator.Faults) (*simulator.Server, *httptest.Server, []byte) {
	t.Helper()
	dir := testkit.CaptureDir(t)
	expected, err := os.ReadFile(filepath.Join(dir, "expected-incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.NewServer("user", "s3cret-upstream-password", faults, 7)
	if err := sim.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	return sim, hs, expected
}

// TestConformanceOnTheCapture serves the shared capture through a flaky,
// slow, paging upstream and expects exactly expected-incidents.json, which
// stays exact over further polls.
func TestConformanceOnTheCapture(t *testing.T) {
	sim, hs, expected := captureUpstream(t, simulator.Faults{Latency: 20 * time.Millisecond, FailRate: 0.3, PageSize: 50})
	r := start(t, t.TempDir(), hs.URL, nil)
	waitExact(t, r.url, expected, 90*time.Second)

	// More polls of the same data change nothing.
	polls := sim.Requests("/incidents/denial/")
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return sim.Requests("/incidents/denial/") >= polls+12, "waiting for more polls"
	})
	waitExact(t, r.url, expected, 5*time.Second)
	_, metrics, err := get(r.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got := sumMetric(t, metrics, "incidents_published_total"); got != 2100 {
		t.Errorf("incidents_published_total = %v after many polls, want 2100 distinct incidents", got)
	}
	if got := sumMetric(t, metrics, "incidents_view_incidents"); got != 2100 {
		t.Errorf("incidents_view_incidents = %v, want 2100", got)
	}
	for _, secret := range []string{"s3cret-upstream-password", "dXNlcjpzM2NyZXQtdXBzdHJlYW0tcGFzc3dvcmQ"} {
		if strings.Contains(string(metrics), secret) || strings.Contains(r.logs.String(), secret) {
			t.Errorf("the upstream password appears in metrics or logs")
		}
	}
}

// TestRestartServesLastViewWithUpstreamDown stops the pipeline gracefully
// and restarts it on the same data with the upstream answering only errors:
// the last view is served at once, and is still exact after failed polls.
func TestRestartServesLastViewWithUpstreamDown(t *testing.T) {
	sim, hs, expected := captureUpstream(t, simulator.Faults{})
	dataDir := t.TempDir()
	r := start(t, dataDir, hs.URL, nil)
	waitExact(t, r.url, expected, 60*time.Second)
	r.stop(t)

	sim.SetFaults(simulator.Faults{FailRate: 1})
	r = start(t, dataDir, hs.URL, nil)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		code, _, err := get(r.url + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("readyz %d %v", code, err)
	})
	waitExact(t, r.url, expected, time.Second)
	before := sim.Requests("/incidents/misuse/")
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		return sim.Requests("/incidents/misuse/") >= before+3, "waiting for failing polls"
	})
	waitExact(t, r.url, expected, time.Second)
	if !strings.Contains(r.logs.String(), "upstream request failed") {
		t.Error("failed polls were not logged")
	}
}

func sumMetric(t *testing.T, exposition []byte, name string) float64 {
	t.Helper()
	var sum float64
	found := false
	for _, line := range strings.Split(string(exposition), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		var v float64
		if _, err := fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v); err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		t.Fatalf("metric %s not exposed", name)
	}
	return sum
}
