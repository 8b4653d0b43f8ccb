// Package pipelinetest runs the whole pipeline in-process for tests, against
// an upstream simulator on loopback, and reads its API.
package pipelinetest

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

// UpstreamPassword is the password of test upstreams: tests look for it
// where it must never appear.
const UpstreamPassword = "s3cret-upstream-password"

// Running is a pipeline started in-process.
type Running struct {
	URL  string // the API, http://127.0.0.1:port
	NATS string // the embedded server's client URL
	Logs *SyncBuffer

	cancel context.CancelFunc
	done   chan error
}

// Start runs the pipeline on dataDir against upstream until the test ends
// (or Stop). env overrides configuration variables.
func Start(t *testing.T, dataDir, upstream string, env map[string]string) *Running {
	t.Helper()
	vars := map[string]string{
		"UPSTREAM_URL": upstream, "UPSTREAM_USER": "user", "UPSTREAM_PASSWORD": UpstreamPassword,
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
	logs := &SyncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{URL: "http://" + l.Addr().String(), cancel: cancel, done: make(chan error, 1), Logs: logs}
	started := make(chan struct{})
	hooks := pipeline.Hooks{APIListener: l, Started: func(_, natsURL string) { r.NATS = natsURL; close(started) }}
	go func() { r.done <- pipeline.Run(ctx, cfg, log, hooks) }()
	select {
	case <-started:
	case err := <-r.done:
		t.Fatalf("pipeline did not start: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("pipeline did not start within 30s")
	}
	t.Cleanup(func() { r.Stop(t) })
	return r
}

// Stop cancels the pipeline and waits for a clean stop.
func (r *Running) Stop(t *testing.T) {
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

// Get fetches url.
func Get(url string) (int, []byte, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// WaitExact waits until GET /incidents of api equals expected.
func WaitExact(t *testing.T, api string, expected []byte, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() (bool, string) {
		code, body, err := Get(api + "/incidents")
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

// CaptureUpstream serves the shared capture through a simulator with faults
// and returns it, its server, and the expected GET /incidents document.
func CaptureUpstream(t *testing.T, faults simulator.Faults) (*simulator.Server, *httptest.Server, []byte) {
	t.Helper()
	dir := testkit.CaptureDir(t)
	expected, err := os.ReadFile(filepath.Join(dir, "expected-incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.NewServer("user", UpstreamPassword, faults, 7)
	if err := sim.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	return sim, hs, expected
}

// SumMetric sums every sample of a metric family in a text exposition.
func SumMetric(t *testing.T, exposition []byte, name string) float64 {
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

// SyncBuffer is a log sink safe for concurrent writers.
type SyncBuffer = testkit.SyncBuffer
