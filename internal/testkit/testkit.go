// Package testkit is what the pipeline's tests share: a real embedded
// JetStream server, the shared upstream capture, a bounded wait, and the
// comparison of GET /incidents documents as the contract reads them.
package testkit

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// JetStream starts an embedded NATS server with JetStream on a free loopback
// port, storing in a temporary directory; it stops when the test ends.
func JetStream(t testing.TB) *server.Server {
	t.Helper()
	return JetStreamAt(t, t.TempDir())
}

// JetStreamAt is JetStream with a given store directory, so that a test can
// restart a server on the same data.
func JetStreamAt(t testing.TB, dir string) *server.Server {
	t.Helper()
	s, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:-1", StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Connect connects to s with the topology in place.
func Connect(t testing.TB, s *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{URL: s.ClientURL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	if err := topology.Ensure(ctx, js, topology.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// CaptureDir returns the shared upstream capture, ../shared/fixtures/
// upstream-2021-08-25 beside the repository. Without it the test is skipped,
// except under CI=true, where it fails: CI must never pass by skipping.
func CaptureDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		candidate := filepath.Join(dir, "..", "shared", "fixtures", "upstream-2021-08-25")
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			if _, err := os.Stat(filepath.Join(candidate, "expected-incidents.json")); err != nil {
				Require(t, "the shared upstream capture (../shared/fixtures/upstream-2021-08-25 beside the repository)")
			}
			return candidate
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.work not found above the test's directory")
		}
		dir = parent
	}
}

// Require skips the test for lack of what, or fails it under CI=true.
func Require(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing %s, which CI must provide", what)
	}
	t.Skipf("skipped: missing %s", what)
}

// Eventually calls cond until it reports true or timeout passes, then fails
// with cond's last explanation.
func Eventually(t testing.TB, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	wait := 20 * time.Millisecond
	for {
		ok, why := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", timeout, why)
		}
		time.Sleep(wait)
		wait = min(wait*2, 500*time.Millisecond)
	}
}

// FreeAddr returns a loopback address with a port free at the moment.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// StreamMsgs returns how many messages a stream holds.
func StreamMsgs(t testing.TB, js jetstream.JetStream, stream string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}
