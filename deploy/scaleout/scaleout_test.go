// Package scaleout_test runs the four binaries as separate processes (two
// enrichers, two projectors) against a separately started nats-server with
// JetStream on loopback, and expects the exact view.
package scaleout_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// build compiles the binaries, statically, into dir.
func build(t *testing.T, dir string, pkgs ...string) {
	t.Helper()
	cmd := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...)
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// spawn starts a binary with env and stops it (SIGINT) when the test ends.
func spawn(t *testing.T, bin string, env ...string) *pipelinetest.SyncBuffer {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), env...)
	return start(t, cmd)
}

// spawnArgs starts a binary with arguments.
func spawnArgs(t *testing.T, bin string, args ...string) *pipelinetest.SyncBuffer {
	t.Helper()
	return start(t, exec.Command(bin, args...))
}

func start(t *testing.T, cmd *exec.Cmd) *pipelinetest.SyncBuffer {
	t.Helper()
	bin := cmd.Path
	logs := &pipelinetest.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Errorf("%s did not stop on SIGINT", filepath.Base(bin))
		}
	})
	return logs
}

func TestSeparateProcessesGiveTheExactView(t *testing.T) {
	bin := t.TempDir()
	build(t, bin, "github.com/nats-io/nats-server/v2", "./producers/cmd/producers", "./enricher/cmd/enricher",
		"./projector/cmd/projector", "./api/cmd/api")

	natsAddr := testkit.FreeAddr(t)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: %q\nmax_payload: 8MB\njetstream { store_dir: %q }\n", natsAddr, t.TempDir())), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	spawnArgs(t, filepath.Join(bin, "nats-server"), "-c", conf)
	natsURL := "nats://" + natsAddr
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: natsURL, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	sim, hs, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{Latency: 10 * time.Millisecond, FailRate: 0.2, PageSize: 50})
	common := []string{"NATS_URL=" + natsURL, "LOG_FORMAT=text"}
	apiAddr := testkit.FreeAddr(t)
	var logs []*pipelinetest.SyncBuffer
	run := func(name string, env ...string) {
		logs = append(logs, spawn(t, filepath.Join(bin, name), append(append(env, common...), "METRICS_ADDR="+testkit.FreeAddr(t))...))
	}
	run("enricher")
	run("enricher")
	run("projector")
	run("projector")
	run("api", "API_ADDR="+apiAddr)
	run("producers", "UPSTREAM_URL="+hs.URL, "UPSTREAM_USER=user", "UPSTREAM_PASSWORD="+pipelinetest.UpstreamPassword, "POLL_INTERVAL=1s")

	api := "http://" + apiAddr
	pipelinetest.WaitExact(t, api, expected, 120*time.Second)
	// Further polls keep it exact.
	polls := sim.Requests("/incidents/other/")
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		return sim.Requests("/incidents/other/") >= polls+10, "waiting for more polls"
	})
	pipelinetest.WaitExact(t, api, expected, 10*time.Second)
	// The connection's context was for connecting only; the waits above
	// took longer.
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 2100 {
		t.Errorf("INCIDENTS_RAW holds %d messages, want 2100", n)
	}
	if code, _, _ := pipelinetest.Get(api + "/readyz"); code != http.StatusOK {
		t.Errorf("api /readyz = %d", code)
	}
	for _, l := range logs {
		if strings.Contains(l.String(), pipelinetest.UpstreamPassword) {
			t.Error("a process logged the upstream password")
		}
	}
}

// TestStagesWaitForJetStream: stages started before NATS has JetStream
// (a cluster still electing its leaders) wait, not ready, and become ready
// once it has, without exiting.
func TestStagesWaitForJetStream(t *testing.T) {
	bin := t.TempDir()
	build(t, bin, "github.com/nats-io/nats-server/v2", "./enricher/cmd/enricher", "./projector/cmd/projector")
	natsAddr := testkit.FreeAddr(t)
	plain := filepath.Join(t.TempDir(), "plain.conf")
	if err := os.WriteFile(plain, []byte(fmt.Sprintf("listen: %q\n", natsAddr)), 0o600); err != nil {
		t.Fatal(err)
	}
	// First a server without JetStream: every request for the topology fails.
	cmd := exec.Command(filepath.Join(bin, "nats-server"), "-c", plain)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	metrics := map[string]string{"enricher": testkit.FreeAddr(t), "projector": testkit.FreeAddr(t)}
	var logs []*pipelinetest.SyncBuffer
	for name, addr := range metrics {
		logs = append(logs, spawn(t, filepath.Join(bin, name), "NATS_URL=nats://"+natsAddr, "METRICS_ADDR="+addr, "LOG_FORMAT=text"))
	}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		for _, l := range logs {
			if !strings.Contains(l.String(), "NATS not ready for the topology; waiting") {
				return false, "waiting for both stages to say they wait"
			}
		}
		return true, ""
	})
	_ = cmd.Process.Kill()
	_ = cmd.Wait()

	js := filepath.Join(t.TempDir(), "js.conf")
	if err := os.WriteFile(js, []byte(fmt.Sprintf("listen: %q\njetstream { store_dir: %q }\n", natsAddr, t.TempDir())), 0o600); err != nil {
		t.Fatal(err)
	}
	spawnArgs(t, filepath.Join(bin, "nats-server"), "-c", js)
	for name, addr := range metrics {
		testkit.Eventually(t, 60*time.Second, func() (bool, string) {
			code, body, err := pipelinetest.Get("http://" + addr + "/readyz")
			return code == http.StatusOK, fmt.Sprintf("%s /readyz: %d %s %v", name, code, body, err)
		})
	}
	for _, l := range logs {
		if strings.Contains(l.String(), "exiting") {
			t.Errorf("a stage exited while waiting for JetStream:\n%s", l.String())
		}
	}
}
