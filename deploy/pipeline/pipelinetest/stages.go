package pipelinetest

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/enricher"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/producers"
	"github.com/incidentpipe/pipeline/projector"
)

// StageFunc is a stage's Run over a JetStream connection.
type StageFunc func(ctx context.Context, js jetstream.JetStream) error

// Stage is one stage running on a NATS connection of its own.
type Stage struct {
	t      *testing.T
	name   string
	cancel context.CancelFunc
	done   chan error
	close  func()
}

// RunStage connects with o and runs fn until the test ends or Crash.
func RunStage(t *testing.T, o natsutil.ConnectOptions, fn StageFunc) *Stage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	connect, stop := context.WithTimeout(ctx, 20*time.Second)
	defer stop()
	nc, js, err := natsutil.Connect(connect, o)
	if err != nil {
		cancel()
		t.Fatalf("%s: %v", o.Name, err)
	}
	s := &Stage{t: t, name: o.Name, cancel: cancel, done: make(chan error, 1), close: nc.Close}
	go func() { s.done <- fn(ctx, js) }()
	t.Cleanup(func() { cancel(); nc.Close() })
	return s
}

// Crash drops the connection without draining, as a killed process would:
// in-flight publishes and acks are lost.
func (s *Stage) Crash() {
	s.t.Helper()
	s.close()
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		s.t.Fatalf("%s did not stop after its connection died", s.name)
	}
}

// Err returns the stage's error if it has stopped, without waiting.
func (s *Stage) Err() (error, bool) {
	select {
	case err := <-s.done:
		s.done <- err
		return err, true
	default:
		return nil, false
	}
}

// Producers runs the producers against up every interval.
func Producers(up producers.Upstream, interval time.Duration) StageFunc {
	return func(ctx context.Context, js jetstream.JetStream) error {
		p, err := producers.New(producers.Options{Upstream: up, JS: js, Interval: interval, Logger: Logger("producers")})
		if err != nil {
			return err
		}
		return p.Run(ctx)
	}
}

// Enricher runs an enricher fetching batch messages at a time.
func Enricher(batch int) StageFunc {
	return func(ctx context.Context, js jetstream.JetStream) error {
		e, err := enricher.New(enricher.Options{JS: js, Batch: batch, Logger: Logger("enricher")})
		if err != nil {
			return err
		}
		return e.Run(ctx)
	}
}

// Projector runs a projector fetching batch messages at a time.
func Projector(batch int) StageFunc {
	return func(ctx context.Context, js jetstream.JetStream) error {
		p, err := projector.New(projector.Options{JS: js, Batch: batch, Logger: Logger("projector")})
		if err != nil {
			return err
		}
		return p.Run(ctx)
	}
}

// ServeAPI runs the API on its own connection and serves it on loopback;
// it returns the base URL.
func ServeAPI(t *testing.T, o natsutil.ConnectOptions) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ready := make(chan http.Handler, 1)
	RunStage(t, o, func(ctx context.Context, js jetstream.JetStream) error {
		a, err := api.New(api.Options{JS: js, Logger: Logger("api")})
		if err != nil {
			return err
		}
		ready <- a.Handler()
		return a.Run(ctx)
	})
	srv := &http.Server{Handler: <-ready, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// Logger is the logger of a stage in tests: silent, unless PIPELINETEST_LOG
// is set (then text on standard error), to follow a failing test's stages.
func Logger(stage string) *slog.Logger {
	if os.Getenv("PIPELINETEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, nil)).With("test_stage", stage)
}
