package enricher

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// TestFullStoreStallsVisiblyAndResumes: raw incidents the enricher cannot
// store enriched (JetStream out of storage) are neither lost nor
// dead-lettered; the stage says it is stalled and resumes by itself.
func TestFullStoreStallsVisiblyAndResumes(t *testing.T) {
	s := testkit.JetStreamWith(t, embedded.Options{MaxStore: 16 << 20})
	_, js := testkit.Connect(t, s)
	ctx := context.Background()
	for i := range 100 {
		if _, err := js.Publish(ctx, topology.RawSubject("misuse"), fmt.Appendf(nil, `{"priority":"low","employee_id":%d,"timestamp":%d}`, i, i)); err != nil {
			t.Fatal(err)
		}
	}
	free := testkit.FillStore(t, js)
	e, err := New(Options{JS: js, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = e.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })

	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		return e.Ready(ctx) != nil && testutil.ToFloat64(e.progress.StalledGauge()) == 1, "enricher not reported stalled"
	})
	free()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		n := testkit.StreamMsgs(t, js, topology.StreamEnriched)
		return n == 100 && e.Ready(ctx) == nil, fmt.Sprintf("%d enriched, ready: %v", n, e.Ready(ctx))
	})
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 0 {
		t.Fatalf("%d good incidents dead-lettered for a full store", n)
	}
}
