package prometheus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// stallAlerts are the alerts that say a stage is stuck.
const stallAlerts = `ALERTS{alertstate="firing",alertname=~"IncidentsStageNotProgressing|IncidentsConsumerLagUnknown"}`

// TestStallAlertsWithARealPrometheus: a real Prometheus evaluates
// rules.yml every second against a running standalone. Through an ingest
// of 100,000 incidents no stall alert fires; once the view's storage
// refuses writes (as a full disk does), IncidentsStageNotProgressing
// fires for the projector within 60 s, and the stage resumes once it has
// room again.
func TestStallAlertsWithARealPrometheus(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 100,000 incidents")
	}
	bin := tool(t, "prometheus")
	sim := simulator.NewServer("user", pipelinetest.UpstreamPassword, simulator.Faults{PageSize: 1000}, 1)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	r := pipelinetest.Start(t, t.TempDir(), hs.URL, nil)
	prom := startPrometheus(t, bin, strings.TrimPrefix(r.URL, "http://"), true)
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		up, ok := prom.value(`up{job="standalone"}`)
		return ok && up == 1, "prometheus has not scraped the standalone yet\n" + tail(prom.log.String())
	})
	viewIncidents := func() float64 {
		_, m, err := pipelinetest.Get(r.URL + "/metrics")
		if err != nil {
			return -1
		}
		return pipelinetest.SumMetric(t, m, "incidents_view_incidents")
	}
	firing := func() []map[string]string {
		labels, _, ok := prom.results(stallAlerts)
		if !ok {
			t.Fatalf("querying the alerts failed\n%s", tail(prom.log.String()))
		}
		return labels
	}
	list := func(from, n int) {
		raws := make([]json.RawMessage, n)
		for i := range raws {
			k := from + i
			raws[i] = json.RawMessage(fmt.Sprintf(`{"priority":%q,"employee_id":%d,"timestamp":%d}`,
				incident.Priorities()[k%4], 100000+k%10000, 1700000000+k))
		}
		sim.AppendIncidents(incident.Misuse, raws...)
	}

	const n = 100_000
	start := time.Now()
	list(0, n)
	for deadline := time.Now().Add(4 * time.Minute); viewIncidents() < n; time.Sleep(time.Second) {
		if f := firing(); len(f) > 0 {
			t.Fatalf("a stall alert fired during the ingest, %s in: %v", time.Since(start).Round(time.Second), f)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the view holds %v of %d incidents after 4 minutes", viewIncidents(), n)
		}
	}
	ingest := time.Since(start)
	// Past the alerts' windows (20 s without progress, for 15 s), still silent.
	for range 40 {
		if f := firing(); len(f) > 0 {
			t.Fatalf("a stall alert fired after the ingest: %v", f)
		}
		time.Sleep(time.Second)
	}
	t.Logf("%d incidents ingested in %s, no stall alert", n, ingest.Round(time.Second))

	// The view's storage refuses writes: the projector stalls.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: r.NATS, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	view, err := js.Stream(ctx, topology.KVStream(topology.BucketView))
	if err != nil {
		t.Fatal(err)
	}
	full := view.CachedInfo().Config
	room := full.MaxBytes
	full.MaxBytes = int64(view.CachedInfo().State.Bytes)
	if _, err := js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	stalled := time.Now()
	list(n, 100)
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		for _, l := range firing() {
			if l["alertname"] == "IncidentsStageNotProgressing" && l["stage"] == "projector" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("IncidentsStageNotProgressing is not firing for the projector %s after the stall", time.Since(stalled).Round(time.Second))
	})
	t.Logf("IncidentsStageNotProgressing fired %s after the view's storage filled", time.Since(stalled).Round(time.Second))

	full.MaxBytes = room
	if _, err := js.UpdateStream(context.Background(), full); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		got := viewIncidents()
		return got == n+100 && len(firing()) == 0, fmt.Sprintf("the view holds %v incidents, alerts %v", got, firing())
	})
}
