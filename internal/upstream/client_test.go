package upstream

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
)

func fastRetry() RetryPolicy {
	return RetryPolicy{MaxAttempts: 8, MaxElapsed: 10 * time.Second, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond}
}

func items(n int) []json.RawMessage {
	out := make([]json.RawMessage, n)
	for i := range out {
		out[i] = json.RawMessage(fmt.Sprintf(`{"priority":"low","employee_id":%d,"timestamp":%d.50}`, i, 1000+i))
	}
	return out
}

func TestIncidentsFollowsPagesThroughFaults(t *testing.T) {
	sim := simulator.NewServer("u", "p", simulator.Faults{FailRate: 0.3, PageSize: 7}, 3)
	sim.SetIncidents(incident.Misuse, items(50))
	hs := httptest.NewServer(sim)
	defer hs.Close()
	reg := prometheus.NewRegistry()
	c, err := New(Options{BaseURL: hs.URL, User: "u", Password: "p", Retry: fastRetry(), Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		got, err := c.Incidents(context.Background(), incident.Misuse)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 50 {
			t.Fatalf("got %d incidents, want 50", len(got))
		}
		for i, raw := range got {
			want := fmt.Sprintf(`{"priority":"low","employee_id":%d,"timestamp":%d.50}`, i, 1000+i)
			if string(raw) != want {
				t.Fatalf("incident %d = %s, want the bytes as served %s", i, raw, want)
			}
		}
	}
	if n := testutil.ToFloat64(c.metrics.requests.WithLabelValues("incidents/misuse", "ok")); n != 5*8 {
		t.Errorf("ok requests = %v, want 40 (8 pages, 5 polls)", n)
	}
}

func TestErrorsAreNeverPartialData(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
		want    error
	}{
		{"always 502", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "bad gateway", http.StatusBadGateway) }, nil},
		{"not json", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>oops</html>") }, nil},
		{"cut off", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "1000")
			fmt.Fprint(w, `{"results": [{"priority": "hi`)
		}, nil},
		{"no results", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{"detail":"x"}`) }, nil},
		{"unauthorized", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusUnauthorized) }, ErrUnauthorized},
		{"forbidden", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) }, ErrUnauthorized},
		{"too large", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"results":[{"a":1},{"a":"`+strings.Repeat("x", 3000)+`"},{"a":1}]}`)
		}, ErrTooLarge},
		{"second page fails", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Query().Get("page") == "" {
				fmt.Fprintf(w, `{"next":"http://%s/incidents/misuse/?page=2","results":[{"a":1}]}`, r.Host)
				return
			}
			http.Error(w, "down", 500)
		}, nil},
		{"next leaves host", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, `{"next":"http://127.0.0.2:1/steal","results":[{"a":1}]}`)
		}, nil},
		{"next loops", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, `{"next":"http://%s/incidents/misuse/","results":[{"a":1}]}`, r.Host)
		}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				calls.Add(1)
				tt.handler(w, r)
			}))
			defer hs.Close()
			c, err := New(Options{BaseURL: hs.URL, User: "u", Password: "p", MaxBody: 2048, Retry: fastRetry()})
			if err != nil {
				t.Fatal(err)
			}
			got, err := c.Incidents(context.Background(), incident.Misuse)
			if err == nil || got != nil {
				t.Fatalf("got %d incidents, err %v; want an error and no data", len(got), err)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if errors.Is(err, ErrUnauthorized) && calls.Load() != 1 {
				t.Errorf("refused credentials were tried %d times, want once", calls.Load())
			}
			if strings.Contains(err.Error(), "p@") || strings.Contains(err.Error(), "dTpw") {
				t.Errorf("error leaks credentials: %v", err)
			}
		})
	}
}

func TestRetriesAreBounded(t *testing.T) {
	var calls atomic.Int32
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer hs.Close()
	c, _ := New(Options{BaseURL: hs.URL, Retry: RetryPolicy{MaxAttempts: 4, BaseDelay: time.Millisecond, MaxDelay: 2 * time.Millisecond}})
	if _, err := c.Identities(context.Background()); err == nil {
		t.Fatal("want an error")
	}
	if calls.Load() != 4 {
		t.Errorf("made %d attempts, want 4", calls.Load())
	}
}

func TestTimeoutPerRequest(t *testing.T) {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer hs.Close()
	c, _ := New(Options{BaseURL: hs.URL, Timeout: 50 * time.Millisecond, Retry: RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}})
	start := time.Now()
	if _, err := c.Identities(context.Background()); err == nil {
		t.Fatal("want a timeout error")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("two timed-out attempts took %s", d)
	}
}

func TestCredentialsStayOnTheUpstreamHost(t *testing.T) {
	var leaked atomic.Value
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Store(r.Header.Get("Authorization"))
		fmt.Fprint(w, `{"10.0.0.1": 1}`)
	}))
	defer other.Close()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") == "" {
			t.Error("no credentials sent to the upstream itself")
		}
		http.Redirect(w, r, other.URL+"/identities/", http.StatusFound)
	}))
	defer up.Close()
	c, _ := New(Options{BaseURL: up.URL, User: "u", Password: "p", Retry: fastRetry()})
	if _, err := c.Identities(context.Background()); err != nil {
		t.Fatal(err)
	}
	if v, _ := leaked.Load().(string); v != "" {
		t.Errorf("the other host received Authorization %q", v)
	}
}

// TestCrossHostRefusalIsNotCalledCredentials: a redirect to another host
// that then refuses (it gets no credentials) is reported as such, not as
// the upstream refusing the credentials.
func TestCrossHostRefusalIsNotCalledCredentials(t *testing.T) {
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "who are you", http.StatusUnauthorized)
	}))
	defer other.Close()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/identities/", http.StatusFound)
	}))
	defer up.Close()
	c, _ := New(Options{BaseURL: up.URL, User: "u", Password: "p", Retry: fastRetry()})
	_, err := c.Identities(context.Background())
	if err == nil || errors.Is(err, ErrUnauthorized) || !strings.Contains(err.Error(), "redirected to another host") {
		t.Fatalf("error %v, want one saying the redirect's host refused", err)
	}
}

func TestUserInfoInURLBecomesCredentials(t *testing.T) {
	const password = "s3cret-in-the-url"
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); !ok || u != "u" || p != password {
			http.Error(w, "no", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{}`)
	}))
	defer hs.Close()
	c, err := New(Options{BaseURL: strings.Replace(hs.URL, "http://", "http://u:"+password+"@", 1), Retry: fastRetry()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Identities(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.base.User != nil || strings.Contains(c.base.String(), password) {
		t.Errorf("base URL keeps the credentials: %s", c.base.Redacted())
	}
	// Nor does an error name them.
	hs.Close()
	_, err = c.Identities(context.Background())
	if err == nil || strings.Contains(err.Error(), password) {
		t.Errorf("error %v", err)
	}
}

// TestVerifiesTheUpstreamCertificate: a certificate from an unknown CA is
// refused; with that CA given (UPSTREAM_CA_FILE) it is accepted.
func TestVerifiesTheUpstreamCertificate(t *testing.T) {
	hs := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, `{}`) }))
	defer hs.Close()
	c, _ := New(Options{BaseURL: hs.URL, Retry: fastRetry()})
	_, err := c.Identities(context.Background())
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("unknown CA: err %v, want a certificate error", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(hs.Certificate())
	c, _ = New(Options{BaseURL: hs.URL, RootCAs: pool, Retry: fastRetry()})
	if _, err := c.Identities(context.Background()); err != nil {
		t.Fatalf("with its CA: %v", err)
	}
}

// TestBytesInFlightBounded: eight endpoints streaming huge incidents
// without Content-Length at once hold about MaxInFlight bytes in all, not
// eight times MaxBody.
func TestBytesInFlightBounded(t *testing.T) {
	chunk := bytes.Repeat([]byte("x"), 64<<10)
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"results":["`))
		for range 1600 { // 100 MiB of one string, never a complete page
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer hs.Close()
	const budget = 16 << 20
	c, err := New(Options{BaseURL: hs.URL, MaxBody: budget, MaxInFlight: budget,
		Retry: RetryPolicy{MaxAttempts: 1}})
	if err != nil {
		t.Fatal(err)
	}
	// The heap, sampled while the requests run: without the budget, eight
	// 64 MiB bodies would be held at once (over 512 MiB).
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
			runtime.GC() // live bytes only, not garbage awaiting collection
			runtime.ReadMemStats(&m)
			peak.Store(max(peak.Load(), m.HeapAlloc))
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			_, err := c.Incidents(context.Background(), incident.Misuse)
			errs <- err
		})
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	busy := 0
	for err := range errs {
		if err == nil {
			t.Fatal("a 100 MiB body over a 16 MiB cap was accepted")
		}
		if errors.Is(err, ErrBusy) {
			busy++
		}
	}
	if busy == 0 {
		t.Error("no request was held back by the in-flight budget")
	}
	if grown := int64(peak.Load()) - int64(base.HeapAlloc); grown > 3*budget {
		t.Errorf("the heap grew by %d MiB while reading, budget %d MiB", grown>>20, budget>>20)
	}
}

// TestRetryAfterHonoured: a 429 or 503 with Retry-After is retried after
// the wait the upstream asked for (within MaxDelay), not the backoff's.
func TestRetryAfterHonoured(t *testing.T) {
	var calls atomic.Int32
	var first time.Time
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			first = time.Now()
			w.Header().Set("Retry-After", "1")
			http.Error(w, "slow down", http.StatusTooManyRequests)
			return
		}
		fmt.Fprint(w, `{"10.0.0.1": 1}`)
	}))
	defer hs.Close()
	c, _ := New(Options{BaseURL: hs.URL, Retry: RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond, MaxDelay: 5 * time.Second}})
	if _, err := c.Identities(context.Background()); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(first); waited < 900*time.Millisecond {
		t.Errorf("retried after %s; the upstream asked for 1s", waited)
	}
	for h, want := range map[string]time.Duration{"": 0, "3": 3 * time.Second, "-1": 0, "soon": 0, "999999999": 24 * time.Hour,
		time.Unix(1000, 0).UTC().Format(http.TimeFormat): 10 * time.Second} {
		if got := retryAfter(h, time.Unix(990, 0)); got != want {
			t.Errorf("retryAfter(%q) = %s, want %s", h, got, want)
		}
	}
}
