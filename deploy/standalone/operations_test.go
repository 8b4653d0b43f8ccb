package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// natsCLI builds natscli at the version deploy/go.mod pins as a tool (the
// version the README's commands are written for).
func natsCLI(t *testing.T) string {
	t.Helper()
	return testkit.Build(t, "github.com/nats-io/natscli/nats")
}

// opsBlocks reads the README's operations blocks: <!-- ops:NAME --> followed
// by a ```sh block.
func opsBlocks(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)<!-- ops:([a-z-]+) -->\\s*```sh\\n(.*?)```")
	blocks := map[string]string{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		blocks[m[1]] = m[2]
	}
	return blocks
}

// shell runs a README block with the nats CLI and the standalone binary in
// place of `nats` and `go run ./deploy/standalone`; until bounds it.
func shell(t *testing.T, block, nats, standalone string, env []string, until time.Duration) (string, error) {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(nats, filepath.Join(dir, "nats")); err != nil {
		t.Fatal(err)
	}
	script := strings.ReplaceAll(block, "go run ./deploy/standalone", standalone)
	ctx, cancel := context.WithTimeout(context.Background(), until)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", script)
	cmd.Env = append(append(os.Environ(), "PATH="+dir+":"+os.Getenv("PATH")), env...)
	cmd.Stdin = nil
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return out.String(), err
}

// TestOperationsChapter runs every command of the README's operations chapter
// against a running standalone and checks what each does.
func TestOperationsChapter(t *testing.T) {
	nats := natsCLI(t)
	bin, err := buildStandalone()
	if err != nil {
		t.Fatal(err)
	}
	blocks := opsBlocks(t)
	for _, name := range []string{"list", "newest-raw", "employee", "watch", "lag", "replay-window", "rebuild-live",
		"rebuild-by-hand", "reenrich-by-hand", "dlq-look", "dlq-replay", "dlq-replay-by-hand"} {
		if blocks[name] == "" {
			t.Fatalf("README has no ops:%s block", name)
		}
	}
	dir := testkit.CaptureDir(t)
	expected, err := os.ReadFile(filepath.Join(dir, "expected-incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.NewServer("user", "pw", simulator.Faults{}, 1)
	if err := sim.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	natsListen := testkit.FreeAddr(t)
	env := []string{"UPSTREAM_URL=" + hs.URL, "UPSTREAM_USER=user", "UPSTREAM_PASSWORD=pw", "POLL_INTERVAL=2s",
		"DATA_DIR=" + t.TempDir(), "NATS_LISTEN=" + natsListen}
	cliEnv := []string{"NATS_URL=nats://" + natsListen, "NATS_LISTEN=" + natsListen, "LOG_FORMAT=text"}
	p := startBinaryAt(t, env, testkit.FreeAddr(t))
	waitExact(t, p, expected, 60*time.Second)
	_, before := get(p.api + "/incidents")

	run := func(name string, until time.Duration) string {
		t.Helper()
		out, err := shell(t, blocks[name], nats, bin, cliEnv, until)
		if err != nil {
			t.Fatalf("ops:%s: %v\n%s", name, err, out)
		}
		return out
	}
	mustContain := func(name, out string, wants ...string) {
		t.Helper()
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("ops:%s output lacks %q:\n%s", name, w, out)
			}
		}
	}

	out := run("list", 30*time.Second)
	mustContain("list", out, "INCIDENTS_RAW", "INCIDENTS_ENRICHED", "INCIDENTS_DLQ", "IDENTITIES", "INCIDENT_VIEW", "enricher", "projector", "2,100")

	out = run("newest-raw", 30*time.Second)
	if n := strings.Count(out, `"reported_by"`); n != 301 { // the newest, then all 300
		t.Errorf("ops:newest-raw shows %d denial incidents, want 1 + 300:\n%s", n, out)
	}

	out = run("employee", 30*time.Second)
	_, viaAPI := get(p.api + "/incidents/325375")
	doc, manifest, _ := strings.Cut(out, "\n")
	if doc != string(viaAPI) {
		t.Errorf("ops:employee document = %s\nGET /incidents/325375 = %s", doc, viaAPI)
	}
	mustContain("employee", manifest, `{"v":2,"pieces":[{"k":"","b":`) // small: its pieces inline

	// The watch runs until stopped: give it three seconds.
	out, err = shell(t, blocks["watch"], nats, bin, cliEnv, 3*time.Second)
	if err != context.DeadlineExceeded {
		t.Errorf("ops:watch ended by itself: %v", err)
	}
	mustContain("watch", out, "PUT INCIDENT_VIEW > 325375")

	out = run("lag", 30*time.Second)
	mustContain("lag", out, "enricher", "projector", "Unprocessed")

	out = run("replay-window", 30*time.Second)
	if n := strings.Count(out, `"reported_by"`); n != 300 {
		t.Errorf("ops:replay-window replayed %d denial incidents to the scratch subject, want 300:\n%s", n, out)
	}

	// Lose one employee's document first, so that only a real rebuild
	// (not the view frozen during it) brings the whole view back.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: "nats://" + natsListen, Name: t.Name()})
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	kv, err := js.KeyValue(context.Background(), topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(context.Background(), "325375"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		code, _ := get(p.api + "/incidents/325375")
		return code == http.StatusNotFound, "the deleted document is still served"
	})
	out = run("rebuild-live", 60*time.Second)
	mustContain("rebuild-live", out, "replayed 2100 of 2100 messages")
	waitSame(t, p, before)

	// By hand, then a restart.
	run("rebuild-by-hand", 30*time.Second)
	p = restart(t, p, env)
	waitSame(t, p, before)
	run("reenrich-by-hand", 30*time.Second)
	p = restart(t, p, env)
	waitSame(t, p, before)

	// The DLQ: two incidents refused by an earlier version (valid now), then
	// one still invalid.
	publish := func(subject, body string) {
		t.Helper()
		out, err := shell(t, fmt.Sprintf("nats pub %s '%s' -H Incident-Dlq-Subject:incidents.raw.misuse -H Incident-Dlq-Reason:test", subject, body),
			nats, bin, cliEnv, 10*time.Second)
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	publish("incidents.dlq.enricher.misuse", `{"priority":"high","employee_id":4242,"timestamp":1700000000.5}`)
	publish("incidents.dlq.enricher.misuse", `{"priority":"low","employee_id":4343,"timestamp":1700000001}`)
	publish("incidents.dlq.enricher.misuse", `{"priority":"urgent","employee_id":4444,"timestamp":1}`)
	out = run("dlq-look", 30*time.Second)
	mustContain("dlq-look", out, "Messages: 3", "Incident-Dlq-Subject: incidents.raw.misuse")

	if _, err := exec.LookPath("jq"); err != nil {
		testkit.Require(t, "jq (apt-get install jq), used by the README's by-hand DLQ replay")
	}
	run("dlq-replay-by-hand", 30*time.Second)
	waitEmployee(t, p, "4242")

	out = run("dlq-replay", 60*time.Second)
	mustContain("dlq-replay", out, "2 dead-lettered incidents sent back")
	waitEmployee(t, p, "4343")
	// The still invalid one was refused again: it is the DLQ's only message.
	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		out, _ := shell(t, "nats stream info INCIDENTS_DLQ", nats, bin, cliEnv, 10*time.Second)
		return strings.Contains(out, "Messages: 1"), out
	})
	if code, _ := get(p.api + "/incidents/4444"); code != http.StatusNotFound {
		t.Errorf("the invalid incident reached the view: %d", code)
	}
}

func waitSame(t *testing.T, p *process, before []byte) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		_, now := get(p.api + "/incidents")
		return bytes.Equal(now, before), fmt.Sprintf("view differs: %d bytes, was %d", len(now), len(before))
	})
}

func waitEmployee(t *testing.T, p *process, id string) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		code, body := get(p.api + "/incidents/" + id)
		var doc map[string]any
		return code == http.StatusOK && json.Unmarshal(body, &doc) == nil, fmt.Sprintf("GET /incidents/%s: %d %s", id, code, body)
	})
}

// restart stops p with SIGTERM and starts the standalone again on the same
// configuration and API address.
func restart(t *testing.T, p *process, env []string) *process {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("standalone exit: %v\n%s", err, p.Logs())
	}
	return startBinaryAt(t, env, strings.TrimPrefix(p.api, "http://"))
}
