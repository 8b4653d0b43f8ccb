package producers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// TestStuckEndpointIsVisible: a type whose page 2 fails at every poll
// cannot advance: after StuckAfter polls it is named, with why, by Stuck,
// by /readyz (degraded, still ready) and by its gauge; once the page reads
// again it is not.
func TestStuckEndpointIsVisible(t *testing.T) {
	var broken atomic.Bool
	broken.Store(true)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasPrefix(r.URL.Path, "/identities"):
			fmt.Fprint(w, `{"10.0.0.1":5}`)
		case r.URL.Query().Get("page") == "":
			fmt.Fprintf(w, `{"next":"http://%s/incidents/misuse/?page=2","results":[{"priority":"low","employee_id":1,"timestamp":1}]}`, r.Host)
		case broken.Load():
			fmt.Fprint(w, `{"results":[{"priority":"low"`) // cut off, every time
		default:
			fmt.Fprint(w, `{"next":null,"results":[{"priority":"low","employee_id":2,"timestamp":2}]}`)
		}
	}))
	t.Cleanup(hs.Close)
	c, err := upstream.New(upstream.Options{BaseURL: hs.URL, Retry: upstream.RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	_, js := testkit.Connect(t, testkit.JetStream(t))
	p, err := New(Options{Upstream: c, JS: js, Types: []incident.Type{incident.Misuse}, Interval: 20 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	runProducers(t, p)

	health := &telemetry.Health{}
	health.AddAdvisory("upstream", p.Advancing)
	readyz := func() (int, string) {
		rec := httptest.NewRecorder()
		health.Readiness(rec, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return rec.Code, rec.Body.String()
	}
	endpoint := upstream.Endpoint(incident.Misuse)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		return p.Stuck()[endpoint] != "", fmt.Sprintf("stuck: %v", p.Stuck())
	})
	if why := p.Stuck()[endpoint]; !strings.Contains(why, "polls failed in a row") || !strings.Contains(why, "cut off") {
		t.Errorf("why %s is stuck: %q", endpoint, why)
	}
	code, body := readyz()
	if code != http.StatusOK || !strings.Contains(body, "upstream: degraded: "+endpoint+": ") {
		t.Errorf("/readyz %d:\n%s\nwant 200 naming %s as degraded", code, body, endpoint)
	}
	if got := testutil.ToFloat64(p.metrics.failing.WithLabelValues(endpoint)); got < StuckAfter {
		t.Errorf("incidents_poll_consecutive_failures{endpoint=%q} = %v, want at least %d", endpoint, got, StuckAfter)
	}
	broken.Store(false)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		_, body := readyz()
		return len(p.Stuck()) == 0 && strings.Contains(body, "upstream: ok"), fmt.Sprintf("stuck %v; /readyz:\n%s", p.Stuck(), body)
	})
	if got := testutil.ToFloat64(p.metrics.failing.WithLabelValues(endpoint)); got != 0 {
		t.Errorf("incidents_poll_consecutive_failures after a success = %v", got)
	}
}

// runProducers runs p until the test ends.
func runProducers(t *testing.T, p *Producers) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}
