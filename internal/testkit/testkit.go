// Package testkit is what the pipeline's tests share: a real embedded
// JetStream server, the shared upstream capture, a bounded wait, and the
// comparison of GET /incidents documents as the contract reads them.
package testkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
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
	return JetStreamWith(t, embedded.Options{StoreDir: dir})
}

// JetStreamWith starts an embedded server with o, on a free loopback port
// and a temporary directory unless o names them.
func JetStreamWith(t testing.TB, o embedded.Options) *server.Server {
	t.Helper()
	if o.Listen == "" {
		o.Listen = "127.0.0.1:-1"
	}
	if o.StoreDir == "" {
		o.StoreDir = t.TempDir()
	}
	s, err := embedded.Start(o)
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

// CaptureDir returns the repository's copy of a real capture of the
// upstream API (testdata/upstream-2021-08-25) with the document it must
// produce (expected-incidents.json).
func CaptureDir(t testing.TB) string {
	t.Helper()
	root, err := WorkspaceRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "testdata", "upstream-2021-08-25")
	if _, err := os.Stat(filepath.Join(dir, "expected-incidents.json")); err != nil {
		t.Fatalf("the capture is missing from the repository: %v", err)
	}
	return dir
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
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// built holds the binaries Build made, by package, for this test process.
var built sync.Map // package → func() (string, error)

// Build compiles a package of the workspace, or a tool its modules require
// (such as github.com/nats-io/natscli/nats), once per test process, and
// returns the binary's path: tests need nothing installed beyond Go.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	f, _ := built.LoadOrStore(pkg, sync.OnceValues(func() (string, error) {
		root, err := WorkspaceRoot()
		if err != nil {
			return "", err
		}
		dir, err := os.MkdirTemp("", "testkit-bin-")
		if err != nil {
			return "", err
		}
		bin := filepath.Join(dir, filepath.Base(pkg))
		cmd := exec.Command("go", "build", "-o", bin, pkg)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
		return bin, nil
	}))
	bin, err := f.(func() (string, error))()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// WorkspaceRoot is the directory of go.work above the working directory.
func WorkspaceRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.work not found above the test's directory")
		}
		dir = parent
	}
}

// FillStore fills the server's JetStream storage (capped by
// embedded.Options.MaxStore) with a stream of its own until it refuses
// more, as a full disk would, and returns a function that frees it again.
func FillStore(t testing.TB, js jetstream.JetStream) (free func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "FILLER", Subjects: []string{"filler"}, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{1 << 20, 64 << 10, 4 << 10, 256} {
		data := make([]byte, size)
		for range 100_000 {
			if _, err := js.Publish(ctx, "filler", data); err != nil {
				break
			}
		}
	}
	return func() {
		if err := s.Purge(context.Background()); err != nil {
			t.Errorf("freeing the store: %v", err)
		}
	}
}

// SyncBuffer is a log sink safe for concurrent writers.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
