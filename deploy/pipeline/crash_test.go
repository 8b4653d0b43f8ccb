package pipeline_test

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// TestStagesCrashMidStream crashes the producers, the enricher and the
// projector at random points while the capture streams through, restarting
// each, and expects the exact view: no loss, no duplicate.
func TestStagesCrashMidStream(t *testing.T) {
	_, hs, expected := capture(t, simulator.Faults{Latency: 5 * time.Millisecond, PageSize: 25})
	srv := testkit.JetStream(t)
	_, js := testkit.Connect(t, srv)
	client, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "user", Password: upstreamPW})
	if err != nil {
		t.Fatal(err)
	}
	conn := func(name string) natsutil.ConnectOptions {
		return natsutil.ConnectOptions{URL: srv.ClientURL(), Name: name}
	}
	run := pipelinetest.RunStage
	startProducers := func() *pipelinetest.Stage {
		return run(t, conn("producers"), pipelinetest.Producers(client, time.Second))
	}
	startEnricher := func() *pipelinetest.Stage { return run(t, conn("enricher"), pipelinetest.Enricher(50)) }
	startProjector := func() *pipelinetest.Stage { return run(t, conn("projector"), pipelinetest.Projector(50)) }
	rng := rand.New(rand.NewPCG(1, 2))

	// Crash each stage a few times while data is still flowing through it.
	prod, enr, proj := startProducers(), startEnricher(), startProjector()
	for round := range 3 {
		waitGrowth(t, js, topology.StreamRaw, uint64(100*(round+1)))
		prod.Crash()
		prod = startProducers()
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		enr.Crash()
		enr = startEnricher()
		waitGrowth(t, js, topology.StreamEnriched, uint64(50*(round+1)))
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		proj.Crash()
		proj = startProjector()
	}

	api := pipelinetest.ServeAPI(t, conn("api"))
	waitExact(t, api, expected, 90*time.Second)
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 2100 {
		t.Errorf("INCIDENTS_RAW holds %d messages after crashes, want 2100", n)
	}
}

// waitGrowth waits until stream holds at least n messages.
func waitGrowth(t *testing.T, js jetstream.JetStream, stream string, n uint64) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		got := testkit.StreamMsgs(t, js, stream)
		return got >= n, fmt.Sprintf("%s holds %d, waiting for %d", stream, got, n)
	})
}
