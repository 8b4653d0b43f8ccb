package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/testkit"
)

// composeRun is one compose project of the test, on ports of its own.
type composeRun struct {
	t                     *testing.T
	project               string
	files                 []string
	env                   []string
	api, prometheus, nats string // host addresses
}

// requireCompose skips (fails under CI=true) without docker compose and a
// running engine.
func requireCompose(t *testing.T) {
	t.Helper()
	if exec.Command("docker", "compose", "version").Run() != nil || exec.Command("docker", "info").Run() != nil {
		testkit.Require(t, "docker with the compose v2 plugin and a running engine (and the base images the compose files name)")
	}
}

func newComposeRun(t *testing.T, name string, extra ...string) *composeRun {
	t.Helper()
	c := &composeRun{t: t, project: fmt.Sprintf("incidents-e2e-%s-%d", name, os.Getpid()),
		api: testkit.FreeAddr(t), prometheus: testkit.FreeAddr(t), nats: testkit.FreeAddr(t)}
	// Host ports of their own, so the test runs beside anything on 9000.
	override := filepath.Join(t.TempDir(), "ports.yml")
	err := os.WriteFile(override, []byte(fmt.Sprintf(`services:
  api:
    ports: !override ["%s:9000"]
  prometheus:
    ports: !override ["%s:9090"]
  nats:
    ports: !override ["%s:4222"]
`, c.api, c.prometheus, c.nats)), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := filepath.Abs("..")
	c.files = append([]string{filepath.Join(root, "docker-compose.yml")}, extra...)
	c.files = append(c.files, override)
	// The classic builder (BuildKit would fetch its frontend from a
	// registry), one image at a time: the first builds the layer of every
	// binary, the others reuse it.
	c.env = append(os.Environ(), "UPSTREAM_URL=http://simulator:8000", "POLL_INTERVAL=2s", "DOCKER_BUILDKIT=0",
		"COMPOSE_BAKE=false", "COMPOSE_PARALLEL_LIMIT=1")
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := c.compose(2*time.Minute, "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", out)
		}
		// With the demo profile: down leaves a profile's services running
		// unless it is named.
		if out, err := c.compose(3*time.Minute, "--profile", "demo", "down", "-v", "--remove-orphans"); err != nil {
			t.Logf("compose down: %v\n%s", err, out)
		}
	})
	return c
}

func (c *composeRun) compose(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := []string{"compose", "-p", c.project, "--project-directory", filepath.Dir(c.files[0])}
	for _, f := range c.files {
		full = append(full, "-f", f)
	}
	cmd := exec.CommandContext(ctx, "docker", append(full, args...)...)
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// services returns each container's service, health and restart count.
func (c *composeRun) services() (map[string][2]string, error) {
	out, err := c.compose(time.Minute, "ps", "-a", "--format", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	got := map[string][2]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var s struct{ Service, Health, State, Name string }
		if json.Unmarshal([]byte(line), &s) != nil {
			continue
		}
		restarts, _ := exec.Command("docker", "inspect", "-f", "{{.RestartCount}}", s.Name).Output()
		got[s.Service] = [2]string{s.State + "/" + s.Health, strings.TrimSpace(string(restarts))}
	}
	return got, nil
}

// upAndHealthy starts services and waits until each is healthy with no
// restart, the view is served and Prometheus scrapes every stage.
func (c *composeRun) upAndHealthy(services ...string) {
	t := c.t
	t.Helper()
	if out, err := c.compose(15*time.Minute, append([]string{"--profile", "demo", "up", "-d", "--build"}, services...)...); err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}
	testkit.Eventually(t, 4*time.Minute, func() (bool, string) {
		got, err := c.services()
		if err != nil {
			return false, err.Error()
		}
		for _, s := range services {
			if got[s][0] != "running/healthy" {
				return false, fmt.Sprintf("%s is %q", s, got[s][0])
			}
		}
		return true, ""
	})
	got, _ := c.services()
	for _, s := range services {
		if got[s][1] != "0" {
			t.Errorf("%s restarted %s times", s, got[s][1])
		}
	}
	testkit.Eventually(t, 2*time.Minute, func() (bool, string) {
		resp, err := http.Get("http://" + c.api + "/incidents")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var doc map[string]json.RawMessage
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&doc) != nil || len(doc) == 0 {
			return false, fmt.Sprintf("GET /incidents: %d, %d employees", resp.StatusCode, len(doc))
		}
		return true, ""
	})
	testkit.Eventually(t, 2*time.Minute, func() (bool, string) {
		resp, err := http.Get("http://" + c.prometheus + "/api/v1/targets")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		var r struct {
			Data struct {
				ActiveTargets []struct {
					Labels map[string]string `json:"labels"`
					Health string            `json:"health"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
			return false, err.Error()
		}
		up := map[string]bool{}
		for _, tg := range r.Data.ActiveTargets {
			up[tg.Labels["job"]] = tg.Health == "up"
		}
		for _, job := range []string{"producers", "enricher", "projector", "api"} {
			if !up[job] {
				return false, fmt.Sprintf("Prometheus target %s is not up: %v", job, up)
			}
		}
		return true, ""
	})
}

// natsCLI runs the nats CLI as the admin user against the compose NATS.
func (c *composeRun) natsCLI(args ...string) string {
	t := c.t
	t.Helper()
	bin := testkit.Build(t, "github.com/nats-io/natscli/nats")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append([]string{"--server", "nats://" + c.nats, "--user", "admin", "--password", "demo-admin"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("nats %v: %v\n%s", args, err, out)
	}
	return string(out)
}

var composeServices = []string{"nats", "producers", "enricher", "projector", "api", "prometheus", "simulator"}

// TestComposeEndToEnd runs docker-compose.yml for real: every service
// healthy with no restart, the view served, Prometheus scraping every
// stage, the nats CLI working as the admin user.
func TestComposeEndToEnd(t *testing.T) {
	requireCompose(t)
	c := newComposeRun(t, "single")
	c.upAndHealthy(composeServices...)
	out := c.natsCLI("stream", "ls")
	for _, s := range []string{"INCIDENTS_RAW", "INCIDENTS_ENRICHED", "INCIDENTS_DLQ"} {
		if !strings.Contains(out, s) {
			t.Errorf("nats stream ls does not list %s:\n%s", s, out)
		}
	}
}

// TestComposeClusterEndToEnd runs the three-node override: healthy, served,
// streams at three replicas, and still ingesting with one node stopped.
func TestComposeClusterEndToEnd(t *testing.T) {
	requireCompose(t)
	root, _ := filepath.Abs("..")
	c := newComposeRun(t, "cluster", filepath.Join(root, "deploy", "compose.cluster.yml"))
	c.upAndHealthy(append(composeServices, "nats-2", "nats-3")...)
	if out := c.natsCLI("stream", "info", "INCIDENTS_RAW", "--json"); !strings.Contains(out, `"num_replicas": 3`) {
		t.Errorf("INCIDENTS_RAW is not at 3 replicas:\n%.1500s", out)
	}
	count := func() int {
		var info struct {
			State struct {
				Messages int `json:"messages"`
			} `json:"state"`
		}
		_ = json.Unmarshal([]byte(c.natsCLI("stream", "info", "INCIDENTS_RAW", "--json")), &info)
		return info.State.Messages
	}
	if out, err := c.compose(2*time.Minute, "stop", "nats-3"); err != nil {
		t.Fatalf("stopping nats-3: %v\n%s", err, out)
	}
	before := count()
	testkit.Eventually(t, 2*time.Minute, func() (bool, string) {
		n := count()
		return n > before, fmt.Sprintf("INCIDENTS_RAW stays at %d with nats-3 stopped", n)
	})
}
