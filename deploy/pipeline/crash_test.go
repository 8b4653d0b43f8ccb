package pipeline_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/enricher"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
	"github.com/incidentpipe/pipeline/producers"
	"github.com/incidentpipe/pipeline/projector"
)

// stage runs one stage on a connection of its own; crash drops the
// connection without draining, as a killed process would.
type stage struct {
	cancel context.CancelFunc
	done   chan error
	crash  func()
}

func runStage(t *testing.T, s *server.Server, name string, run func(ctx context.Context, js jetstream.JetStream) error) *stage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: s.ClientURL(), Name: name})
	if err != nil {
		t.Fatal(err)
	}
	st := &stage{cancel: cancel, done: make(chan error, 1)}
	st.crash = func() {
		nc.Close() // no drain: in-flight publishes and acks are lost
		cancel()
		select {
		case <-st.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("%s did not stop after its connection died", name)
		}
	}
	go func() { st.done <- run(ctx, js) }()
	t.Cleanup(func() { cancel(); nc.Close() })
	return st
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestStagesCrashMidStream crashes the producers, the enricher and the
// projector at random points while the capture streams through, restarting
// each, and expects the exact view: no loss, no duplicate.
func TestStagesCrashMidStream(t *testing.T) {
	dir := testkit.CaptureDir(t)
	expected, err := os.ReadFile(filepath.Join(dir, "expected-incidents.json"))
	if err != nil {
		t.Fatal(err)
	}
	sim := simulator.NewServer("u", "p", simulator.Faults{Latency: 5 * time.Millisecond, PageSize: 25}, 5)
	if err := sim.LoadDir(dir); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	srv := testkit.JetStream(t)
	_, js := testkit.Connect(t, srv)
	client, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "u", Password: "p"})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))

	startProducers := func() *stage {
		return runStage(t, srv, "producers", func(ctx context.Context, js jetstream.JetStream) error {
			p, err := producers.New(producers.Options{Upstream: client, JS: js, Interval: time.Second})
			if err != nil {
				return err
			}
			return p.Run(ctx)
		})
	}
	startEnricher := func() *stage {
		return runStage(t, srv, "enricher", func(ctx context.Context, js jetstream.JetStream) error {
			e, err := enricher.New(enricher.Options{JS: js, Batch: 50})
			if err != nil {
				return err
			}
			return e.Run(ctx)
		})
	}
	startProjector := func() *stage {
		return runStage(t, srv, "projector", func(ctx context.Context, js jetstream.JetStream) error {
			p, err := projector.New(projector.Options{JS: js, Batch: 50})
			if err != nil {
				return err
			}
			return p.Run(ctx)
		})
	}

	// Crash each stage a few times while data is still flowing through it.
	prod, enr, proj := startProducers(), startEnricher(), startProjector()
	for round := range 3 {
		waitGrowth(t, js, topology.StreamRaw, uint64(100*(round+1)))
		prod.crash()
		prod = startProducers()
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		enr.crash()
		enr = startEnricher()
		waitGrowth(t, js, topology.StreamEnriched, uint64(50*(round+1)))
		time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
		proj.crash()
		proj = startProjector()
	}

	a, err := api.New(api.Options{JS: js})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = a.Run(ctx) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hsAPI := &http.Server{Handler: a.Handler()}
	go func() { _ = hsAPI.Serve(l) }()
	defer hsAPI.Close()
	waitExact(t, "http://"+l.Addr().String(), expected, 90*time.Second)
	if n := streamMsgs(t, js, topology.StreamRaw); n != 2100 {
		t.Errorf("INCIDENTS_RAW holds %d messages after crashes, want 2100", n)
	}
}

// waitGrowth waits until stream holds at least n messages.
func waitGrowth(t *testing.T, js jetstream.JetStream, stream string, n uint64) {
	t.Helper()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		got := streamMsgs(t, js, stream)
		return got >= n, fmt.Sprintf("%s holds %d, waiting for %d", stream, got, n)
	})
}
