package api

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// stream is one GET /events as a client sees it: its status, its
// Retry-After and, when it is open, its event names and how to close it.
type stream struct {
	status     int
	retryAfter string
	events     chan string // event names, closed when the stream ends
	close      func()
}

// openStream opens GET /events with token.
func openStream(t testing.TB, url, token string) stream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/events", nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		cancel()
		t.Fatalf("GET /events: %v", err)
	}
	s := stream{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), events: make(chan string, 64),
		close: func() { cancel(); resp.Body.Close() }}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		cancel()
		close(s.events)
		return s
	}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if name, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				select {
				case s.events <- name:
				default:
				}
			}
		}
	}()
	return s
}

// endedWith waits for the stream to end and reports whether its last event
// was "end"; it says what it saw otherwise.
func (s stream) endedWith(within time.Duration) (bool, string) {
	var got []string
	deadline := time.After(within)
	for {
		select {
		case name, ok := <-s.events:
			if !ok {
				return len(got) > 0 && got[len(got)-1] == "end", fmt.Sprintf("ended after the events %v", got)
			}
			got = append(got, name)
		case <-deadline:
			return false, fmt.Sprintf("still open after %s (events %v)", within, got)
		}
	}
}

// TestEventStreamLimits: past the streams allowed to one client, or in all,
// a new stream is answered 503 with Retry-After; a closed stream frees its
// place.
func TestEventStreamLimits(t *testing.T) {
	tests := []struct {
		name              string
		tokens            []string // empty: the API is open (clients by address)
		perClient, total  int
		opens             []string // the token of each stream opened, in order
		want              []int    // the status of each
		refusedByClient   float64
		refusedByTotal    float64
		afterClosingFirst int // the status of one more stream once the first is closed
	}{
		{name: "one address", perClient: 3, total: 100,
			opens: []string{"", "", "", ""}, want: []int{200, 200, 200, 503},
			refusedByClient: 1, afterClosingFirst: 200},
		{name: "per token, then in all", tokens: []string{"a", "b"}, perClient: 2, total: 3,
			opens: []string{"a", "a", "a", "b", "b"}, want: []int{200, 200, 503, 200, 503},
			refusedByClient: 1, refusedByTotal: 1, afterClosingFirst: 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := Options{EventsMaxPerClient: tc.perClient, EventsMaxStreams: tc.total}
			if len(tc.tokens) > 0 {
				o.TokensFile = filepath.Join(t.TempDir(), "tokens")
				writeTokens(t, o.TokensFile, tc.tokens...)
			}
			hs, _, a := serveAPI(t, o)
			var open []stream
			for i, tok := range tc.opens {
				s := openStream(t, hs.URL, tok)
				if s.status != tc.want[i] {
					t.Fatalf("stream %d (token %q): %d, want %d", i, tok, s.status, tc.want[i])
				}
				if s.status == http.StatusServiceUnavailable && s.retryAfter == "" {
					t.Errorf("stream %d: 503 without Retry-After", i)
				}
				if s.status == http.StatusOK {
					open = append(open, s)
				}
			}
			t.Cleanup(func() {
				for _, s := range open {
					s.close()
				}
			})
			if got := testutil.ToFloat64(a.metrics.streamsRefused.WithLabelValues("client")); got != tc.refusedByClient {
				t.Errorf("refused by the client limit: %v, want %v", got, tc.refusedByClient)
			}
			if got := testutil.ToFloat64(a.metrics.streamsRefused.WithLabelValues("total")); got != tc.refusedByTotal {
				t.Errorf("refused by the total limit: %v, want %v", got, tc.refusedByTotal)
			}
			open[0].close()
			testkit.Eventually(t, 5*time.Second, func() (bool, string) {
				return a.streams.openStreams() == len(open)-1, fmt.Sprintf("%d streams open", a.streams.openStreams())
			})
			if s := openStream(t, hs.URL, tc.opens[0]); s.status != tc.afterClosingFirst {
				t.Errorf("after closing one: %d, want %d", s.status, tc.afterClosingFirst)
			} else {
				s.close()
			}
		})
	}
}

// TestEventStreamsAtTheDefaults: with the default limits, 20,000 attempts
// to open a stream by 100 tokens hold at most a quarter of the open-file
// limit; every other attempt is answered 503 at once, and the descriptors
// of the process stay far from its limit.
func TestEventStreamsAtTheDefaults(t *testing.T) {
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	const limit = 4096 // the test's client streams share the process
	if old.Max < limit {
		t.Skipf("open-file hard limit %d < %d", old.Max, limit)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: limit, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
	total := DefaultMaxStreams()
	if total != limit/4 {
		t.Fatalf("DefaultMaxStreams = %d with an open-file limit of %d, want a quarter", total, limit)
	}
	tokens := make([]string, 100)
	for i := range tokens {
		tokens[i] = fmt.Sprintf("token-%03d", i)
	}
	file := filepath.Join(t.TempDir(), "tokens")
	writeTokens(t, file, tokens...)
	hs, _, a := serveAPI(t, Options{TokensFile: file})
	// Keep-alive connections for the refused attempts: 20,000 new
	// connections would leave as many sockets in TIME_WAIT.
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8}}
	var held []stream
	defer func() {
		for _, s := range held {
			s.close()
		}
	}()
	refused := 0
	for i := range 20000 {
		tok := tokens[i%len(tokens)]
		if a.streams.openStreams() < total {
			if s := openStream(t, hs.URL, tok); s.status == http.StatusOK {
				held = append(held, s)
				continue
			} else if s.status != http.StatusServiceUnavailable {
				t.Fatalf("attempt %d: %d", i, s.status)
			}
			refused++
			continue
		}
		req, _ := http.NewRequest(http.MethodGet, hs.URL+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("attempt %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Fatalf("attempt %d past the limit: %d, Retry-After %q", i, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		refused++
	}
	if len(held) != total || a.streams.openStreams() != total {
		t.Errorf("held %d streams (%d open), want the default %d", len(held), a.streams.openStreams(), total)
	}
	if refused != 20000-total {
		t.Errorf("%d refused, want %d", refused, 20000-total)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	// Each held stream is two descriptors here (client and server).
	if len(fds) > 2*total+200 {
		t.Errorf("%d descriptors open with %d streams held", len(fds), total)
	}
	for _, s := range held {
		s.close()
	}
	held = nil
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		return a.streams.openStreams() == 0, fmt.Sprintf("%d streams still open", a.streams.openStreams())
	})
}

// TestEventStreamEnds: a stream ends, with an "end" event, when its token
// is revoked (the file rewritten without it; the other token's stream goes
// on), and when it reaches its maximum lifetime.
func TestEventStreamEnds(t *testing.T) {
	t.Run("revoked", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "tokens")
		writeTokens(t, file, "kept", "revoked")
		hs, _, a := serveAPI(t, Options{TokensFile: file})
		revoked, kept := openStream(t, hs.URL, "revoked"), openStream(t, hs.URL, "kept")
		defer kept.close()
		writeTokens(t, file, "kept")
		if ok, what := revoked.endedWith(10 * time.Second); !ok {
			t.Errorf("revoked token's stream: %s; want an end event", what)
		}
		if n := a.streams.openStreams(); n != 1 {
			t.Errorf("%d streams open after the revocation, want the kept token's", n)
		}
		select {
		case name, ok := <-kept.events:
			t.Errorf("the kept token's stream: event %q (open %v)", name, ok)
		default:
		}
	})
	t.Run("lifetime", func(t *testing.T) {
		hs, _, _ := serveAPI(t, Options{EventsMaxLifetime: 300 * time.Millisecond})
		s := openStream(t, hs.URL, "")
		if ok, what := s.endedWith(10 * time.Second); !ok {
			t.Errorf("stream: %s; want an end event", what)
		}
	})
}

// TestEventStreamsCloseAtShutdown: when the process is told to stop, open
// streams end at once and the server's graceful shutdown completes within
// 2 s (docker stop allows 10).
func TestEventStreamsCloseAtShutdown(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	a, err := New(Options{JS: js})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = a.Run(ctx) }()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- app.Serve(ctx, l, a.Handler(), slog.New(slog.DiscardHandler)) }()
	url := "http://" + l.Addr().String()
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		return a.store.loaded.Load(), "waiting for the view"
	})
	var streams []stream
	for range 5 {
		s := openStream(t, url, "")
		if s.status != http.StatusOK {
			t.Fatalf("GET /events: %d", s.status)
		}
		streams = append(streams, s)
	}
	start := time.Now()
	stop()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("serving: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the server did not stop within 2 s with streams open")
	}
	var wg sync.WaitGroup
	for _, s := range streams {
		wg.Go(func() {
			if ok, what := s.endedWith(time.Second); !ok {
				t.Errorf("stream: %s; want an end event", what)
			}
		})
	}
	wg.Wait()
	t.Logf("stopped in %s with %d streams open", time.Since(start).Round(time.Millisecond), len(streams))
}
