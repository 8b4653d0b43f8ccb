package scaleout_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// TestBusiestEmployeeWhole: one employee with 250,000 incidents (a document
// of about 28 MB) is exact in GET /incidents, GET /incidents/{id} and the
// filters, with every stage a separate process on a nats-server with its
// default settings (1 MB max payload), and nothing is dead-lettered.
func TestBusiestEmployeeWhole(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 250,000 incidents")
	}
	const n = 250_000
	bin := t.TempDir()
	build(t, bin, "github.com/nats-io/nats-server/v2", "./producers/cmd/producers", "./enricher/cmd/enricher",
		"./projector/cmd/projector", "./api/cmd/api")
	natsAddr := testkit.FreeAddr(t)
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: %q\njetstream { store_dir: %q }\n", natsAddr, t.TempDir())), 0o600); err != nil {
		t.Fatal(err)
	}
	spawnArgs(t, filepath.Join(bin, "nats-server"), "-c", conf)

	sim := simulator.NewServer("user", pipelinetest.UpstreamPassword, simulator.Faults{PageSize: 25_000}, 1)
	items := make([]json.RawMessage, n)
	var want [4]int
	for i := range n {
		p := incident.Priorities()[i%4]
		want[i%4]++
		// In time order, as the upstream lists them, with equal timestamps.
		items[i] = json.RawMessage(fmt.Sprintf(`{"priority":%q,"employee_id":424242,"timestamp":%d.5,"note":"incident %d of the busiest employee; padded like real upstream data"}`, p, 1629000000+i/3, i))
	}
	sim.SetIncidents(incident.Misuse, items)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)

	common := []string{"NATS_URL=nats://" + natsAddr, "LOG_FORMAT=text"}
	apiAddr := testkit.FreeAddr(t)
	run := func(name string, env ...string) *pipelinetest.SyncBuffer {
		return spawn(t, filepath.Join(bin, name), append(append(env, common...), "METRICS_ADDR="+testkit.FreeAddr(t))...)
	}
	run("enricher")
	run("projector")
	run("api", "API_ADDR="+apiAddr)
	run("producers", "UPSTREAM_URL="+hs.URL, "UPSTREAM_USER=user", "UPSTREAM_PASSWORD="+pipelinetest.UpstreamPassword, "POLL_INTERVAL=5s")
	api := "http://" + apiAddr

	var doc map[string]struct {
		Count     int `json:"count"`
		Incidents []struct {
			Timestamp json.Number `json:"timestamp"`
			Note      string      `json:"note"`
		} `json:"incidents"`
	}
	testkit.Eventually(t, 10*time.Minute, func() (bool, string) {
		code, body, err := pipelinetest.Get(api + "/incidents/424242")
		if err != nil || code != 200 {
			return false, fmt.Sprintf("GET /incidents/424242: %d %v", code, err)
		}
		doc = nil
		if err := json.Unmarshal(body, &doc); err != nil {
			return false, err.Error()
		}
		got := 0
		for _, p := range doc {
			got += len(p.Incidents)
		}
		return got == n, fmt.Sprintf("%d of %d incidents", got, n)
	})
	seen := map[string]bool{}
	for i, p := range incident.Priorities() {
		b := doc[string(p)]
		if b.Count != want[i] || len(b.Incidents) != want[i] {
			t.Errorf("%s: count %d, %d incidents, want %d", p, b.Count, len(b.Incidents), want[i])
		}
		for j, in := range b.Incidents {
			seen[in.Note] = true
			if j > 0 {
				a, _ := b.Incidents[j-1].Timestamp.Float64()
				c, _ := in.Timestamp.Float64()
				if c < a {
					t.Fatalf("%s: incident %d out of order", p, j)
				}
			}
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct incidents, want %d", len(seen), n)
	}
	// The whole document holds the same bytes for the employee.
	_, one, _ := pipelinetest.Get(api + "/incidents/424242")
	_, all, _ := pipelinetest.Get(api + "/incidents")
	if string(all) != `{"424242":`+string(one)+`}` {
		t.Errorf("GET /incidents (%d bytes) is not the employee's document (%d bytes)", len(all), len(one))
	}
	// A filter over the whole document.
	_, body, _ := pipelinetest.Get(api + "/incidents?priority=critical&since=1629050000")
	var filtered map[string]map[string]struct {
		Count int `json:"count"`
	}
	if err := json.Unmarshal(body, &filtered); err != nil {
		t.Fatalf("filtered answer: %v", err)
	}
	wantCritical := 0
	for i := 3; i < n; i += 4 {
		if 1629000000+i/3 >= 1629050000 {
			wantCritical++
		}
	}
	if got := filtered["424242"]["critical"].Count; got != wantCritical {
		t.Errorf("?priority=critical&since=1629050000: %d, want %d", got, wantCritical)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: "nats://" + natsAddr, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 0 {
		t.Errorf("%d incidents dead-lettered", n)
	}
}
