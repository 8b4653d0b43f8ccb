package main_test

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// buildStandalone compiles this command once per test binary.
var buildStandalone = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "standalone-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "standalone")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// process is a running standalone binary.
type process struct {
	cmd  *exec.Cmd
	api  string
	logs *bytes.Buffer
	mu   *sync.Mutex
}

func startBinary(t *testing.T, env []string) *process {
	t.Helper()
	return startBinaryAt(t, append([]string{"NATS_LISTEN=" + testkit.FreeAddr(t)}, env...), testkit.FreeAddr(t))
}

// startBinaryAt starts the standalone with env, serving the API on api.
func startBinaryAt(t *testing.T, env []string, api string) *process {
	t.Helper()
	bin, err := buildStandalone()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), append([]string{"API_ADDR=" + api}, env...)...)
	p := &process{cmd: cmd, api: "http://" + api, logs: &bytes.Buffer{}, mu: &sync.Mutex{}}
	cmd.Stdout = lockedWriter{p}
	cmd.Stderr = lockedWriter{p}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return p
}

type lockedWriter struct{ p *process }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.logs.Write(b)
}

func (p *process) Logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.logs.String()
}

func get(url string) (int, []byte) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func waitExact(t *testing.T, p *process, expected []byte, timeout time.Duration) {
	t.Helper()
	testkit.Eventually(t, timeout, func() (bool, string) {
		code, body := get(p.api + "/incidents")
		if code != http.StatusOK {
			return false, fmt.Sprintf("GET /incidents: %d", code)
		}
		problems := testkit.CompareIncidents(expected, body)
		if len(problems) == 0 {
			return true, ""
		}
		return false, fmt.Sprintf("%d problems, first: %s", len(problems), problems[0])
	})
}

// TestStandaloneSurvivesSIGKILLAndSIGTERM runs the standalone binary on the
// capture, kills it with SIGKILL mid-ingest, restarts it, expects the exact
// view, stops it with SIGTERM, and restarts it with the upstream down: the
// same view is served at once.
func TestStandaloneSurvivesSIGKILLAndSIGTERM(t *testing.T) {
	dir := testkit.CaptureDir(t)
	expected, err := os.ReadFile(filepath.Join(dir, "expected-incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.NewServer("user", "pa55word-never-logged", simulator.Faults{Latency: 30 * time.Millisecond, PageSize: 10}, 3)
	if err := sim.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	env := []string{"UPSTREAM_URL=" + hs.URL, "UPSTREAM_USER=user", "UPSTREAM_PASSWORD=pa55word-never-logged",
		"POLL_INTERVAL=2s", "DATA_DIR=" + t.TempDir()}

	p := startBinary(t, env)
	// Kill it once part of the capture is in the view.
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		_, body := get(p.api + "/incidents")
		return len(body) > 1000, "waiting for the first incidents"
	})
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()

	p = startBinary(t, env)
	waitExact(t, p, expected, 90*time.Second)

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("SIGTERM: exit %v\n%s", err, p.Logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no clean exit within 30s of SIGTERM")
	}
	if strings.Contains(p.Logs(), "pa55word-never-logged") {
		t.Error("the upstream password appears in the logs")
	}

	sim.SetFaults(simulator.Faults{FailRate: 1})
	p = startBinary(t, env)
	testkit.Eventually(t, 15*time.Second, func() (bool, string) {
		code, _ := get(p.api + "/readyz")
		return code == http.StatusOK, fmt.Sprintf("readyz %d", code)
	})
	waitExact(t, p, expected, time.Second)
}
