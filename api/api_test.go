package api

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

const doc42 = `{"low":{"count":1,"incidents":[{"type":"misuse","priority":"low","employee_id":42,"timestamp":1}]},"medium":{"count":0,"incidents":[]},"high":{"count":0,"incidents":[]},"critical":{"count":0,"incidents":[]}}`

// serveAPI runs the API over a real JetStream view holding employee 42.
func serveAPI(t *testing.T, o Options) (*httptest.Server, jetstream.KeyValue, *API) {
	t.Helper()
	_, js := testkit.Connect(t, testkit.JetStream(t))
	kv, err := js.KeyValue(context.Background(), topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(context.Background(), "42", doc42); err != nil {
		t.Fatal(err)
	}
	o.JS = js
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = a.Run(ctx) }()
	hs := httptest.NewServer(a.Handler())
	t.Cleanup(hs.Close)
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		return a.store.loaded.Load(), "waiting for the view"
	})
	return hs, kv, a
}

func do(t *testing.T, method, url, token string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func writeTokens(t *testing.T, path string, tokens ...string) {
	t.Helper()
	var b strings.Builder
	b.WriteString("# API readers\n\n")
	for _, tok := range tokens {
		b.WriteString(TokenLine(tok) + "  # a reader\n")
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestBearerTokens(t *testing.T) {
	file := filepath.Join(t.TempDir(), "tokens")
	writeTokens(t, file, "alpha-token")
	hs, _, a := serveAPI(t, Options{TokensFile: file, MetricsAuth: true, Metrics: promhttp.Handler()})

	for _, path := range []string{"/incidents", "/incidents/42", "/unattributed", "/metrics"} {
		for _, token := range []string{"", "wrong-token", "alpha-token-but-longer"} {
			resp, body := do(t, http.MethodGet, hs.URL+path, token)
			if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("GET %s with %q: %d %q", path, token, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
			}
			if token != "" && bytes.Contains(body, []byte(token)) {
				t.Errorf("the 401 echoes the token")
			}
		}
		if resp, _ := do(t, http.MethodGet, hs.URL+path, "alpha-token"); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s with the right token: %d", path, resp.StatusCode)
		}
	}
	for _, path := range []string{"/healthz", "/readyz"} {
		if resp, _ := do(t, http.MethodGet, hs.URL+path, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token: %d, want 200", path, resp.StatusCode)
		}
	}

	// Rotation: the file changes, the old token stops working without a restart.
	writeTokens(t, file, "beta-token")
	testkit.Eventually(t, 15*time.Second, func() (bool, string) {
		old, _ := do(t, http.MethodGet, hs.URL+"/incidents", "alpha-token")
		neu, _ := do(t, http.MethodGet, hs.URL+"/incidents", "beta-token")
		return old.StatusCode == 401 && neu.StatusCode == 200, "waiting for the rotated tokens"
	})
	// A broken file keeps the tokens loaded before.
	if err := os.WriteFile(file, []byte("not a token line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a.ReloadTokens() // what the watcher or SIGHUP does
	if resp, _ := do(t, http.MethodGet, hs.URL+"/incidents", "beta-token"); resp.StatusCode != 200 {
		t.Errorf("after a broken tokens file the valid token gets %d", resp.StatusCode)
	}
}

func TestParseTokens(t *testing.T) {
	good := "# comment\n\n" + TokenLine("x") + "\n  " + TokenLine("y") + " # trailing\n"
	if d, err := ParseTokens([]byte(good)); err != nil || len(d) != 2 {
		t.Fatalf("ParseTokens: %d %v", len(d), err)
	}
	for _, bad := range []string{"secret-token\n", "sha256:abc\n", "sha1:" + strings.Repeat("a", 40) + "\n"} {
		_, err := ParseTokens([]byte(bad))
		if err == nil {
			t.Errorf("ParseTokens(%q) accepted", bad)
		} else if strings.Contains(err.Error(), strings.TrimSpace(bad)) {
			t.Errorf("the error echoes the line: %v", err)
		}
	}
}

func TestDataResponses(t *testing.T) {
	hs, kv, _ := serveAPI(t, Options{})
	resp, body := do(t, http.MethodGet, hs.URL+"/incidents", "")
	if resp.StatusCode != 200 || string(body) != `{"42":`+doc42+`}` {
		t.Fatalf("GET /incidents: %d %s", resp.StatusCode, body)
	}
	h := resp.Header
	if h.Get("Content-Type") != "application/json" || h.Get("X-Content-Type-Options") != "nosniff" ||
		!strings.Contains(h.Get("Cache-Control"), "no-store") || h.Get("ETag") == "" {
		t.Errorf("headers %v", h)
	}
	if resp, _ := do(t, http.MethodGet, hs.URL+"/incidents", "", "If-None-Match", h.Get("ETag")); resp.StatusCode != http.StatusNotModified {
		t.Errorf("If-None-Match: %d, want 304", resp.StatusCode)
	}
	resp, gz := do(t, http.MethodGet, hs.URL+"/incidents", "", "Accept-Encoding", "gzip")
	zr, err := gzip.NewReader(bytes.NewReader(gz))
	if err != nil || resp.Header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("gzip: %v %v", err, resp.Header)
	}
	plain, _ := io.ReadAll(zr)
	if !bytes.Equal(plain, body) {
		t.Error("gzip body differs from the plain one")
	}
	if resp, b := do(t, http.MethodHead, hs.URL+"/incidents", ""); resp.StatusCode != 200 || len(b) != 0 || resp.ContentLength != int64(len(body)) {
		t.Errorf("HEAD: %d, %d bytes, length %d", resp.StatusCode, len(b), resp.ContentLength)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		if resp, _ := do(t, m, hs.URL+"/incidents", ""); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s /incidents: %d, want 405", m, resp.StatusCode)
		}
	}
	if resp, b := do(t, http.MethodGet, hs.URL+"/incidents/7", ""); resp.StatusCode != 404 || !strings.Contains(string(b), "error") {
		t.Errorf("unknown employee: %d %s", resp.StatusCode, b)
	}
	// A change shows up, with a new ETag.
	if err := kv.Delete(context.Background(), "42"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		r, b := do(t, http.MethodGet, hs.URL+"/incidents", "")
		return string(b) == "{}" && r.Header.Get("ETag") != h.Get("ETag"), string(b)
	})
}

func TestRateLimit(t *testing.T) {
	hs, _, _ := serveAPI(t, Options{RateLimit: 2})
	limited := 0
	for range 20 {
		if resp, _ := do(t, http.MethodGet, hs.URL+"/incidents", ""); resp.StatusCode == http.StatusTooManyRequests {
			limited++
			if resp.Header.Get("Retry-After") == "" {
				t.Error("429 without Retry-After")
			}
		}
	}
	if limited < 10 {
		t.Errorf("%d of 20 quick requests limited at 2/s, want most", limited)
	}
}

func TestFiltersAndPaging(t *testing.T) {
	hs, kv, _ := serveAPI(t, Options{})
	docs := map[string]string{
		"7":   `{"low":{"count":1,"incidents":[{"type":"probing","priority":"low","ip":"10.0.0.1","timestamp":5}]},"medium":{"count":0,"incidents":[]},"high":{"count":2,"incidents":[{"type":"misuse","priority":"high","employee_id":7,"timestamp":1},{"type":"denial","priority":"high","reported_by":7,"timestamp":9}]},"critical":{"count":0,"incidents":[]}}`,
		"100": `{"low":{"count":0,"incidents":[]},"medium":{"count":1,"incidents":[{"type":"misuse","priority":"medium","employee_id":100,"timestamp":3}]},"high":{"count":0,"incidents":[]},"critical":{"count":0,"incidents":[]}}`,
	}
	for k, v := range docs {
		if _, err := kv.PutString(context.Background(), k, v); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		_, b := do(t, http.MethodGet, hs.URL+"/incidents", "")
		return strings.Contains(string(b), `"100"`) && strings.Contains(string(b), `"7"`), string(b)
	})
	tests := []struct {
		query, want string
	}{
		{"priority=high", `{"7":{"low":{"count":0,"incidents":[]},"medium":{"count":0,"incidents":[]},"high":{"count":2,"incidents":[{"type":"misuse","priority":"high","employee_id":7,"timestamp":1},{"type":"denial","priority":"high","reported_by":7,"timestamp":9}]},"critical":{"count":0,"incidents":[]}}}`},
		{"type=misuse&since=2", `{"100":` + docs["100"] + `}`},
		{"priority=low,medium&until=4", `{"42":` + doc42 + `,"100":` + docs["100"] + `}`},
		{"type=denial&type=probing&since=5&until=9", `{"7":{"low":{"count":1,"incidents":[{"type":"probing","priority":"low","ip":"10.0.0.1","timestamp":5}]},"medium":{"count":0,"incidents":[]},"high":{"count":1,"incidents":[{"type":"denial","priority":"high","reported_by":7,"timestamp":9}]},"critical":{"count":0,"incidents":[]}}}`},
		{"limit=2", `{"7":` + docs["7"] + `,"42":` + doc42 + `}`},
		{"limit=2&cursor=42", `{"100":` + docs["100"] + `}`},
		{"priority=critical", `{}`},
	}
	for _, tt := range tests {
		resp, b := do(t, http.MethodGet, hs.URL+"/incidents?"+tt.query, "")
		if resp.StatusCode != 200 || string(b) != tt.want {
			t.Errorf("?%s: %d\n%s\nwant\n%s", tt.query, resp.StatusCode, b, tt.want)
		}
	}
	resp, _ := do(t, http.MethodGet, hs.URL+"/incidents?limit=1", "")
	if resp.Header.Get("X-Next-Cursor") != "7" || !strings.Contains(resp.Header.Get("Link"), "cursor=7") {
		t.Errorf("paging headers %v", resp.Header)
	}
	resp, _ = do(t, http.MethodGet, hs.URL+"/incidents?limit=5", "")
	if resp.Header.Get("X-Next-Cursor") != "" {
		t.Errorf("last page has a next cursor %q", resp.Header.Get("X-Next-Cursor"))
	}
	// Cursors and employee ids are read as upstream data reads them: 0042 is 42.
	if resp, b := do(t, http.MethodGet, hs.URL+"/incidents?limit=1&cursor=0042", ""); resp.StatusCode != 200 || string(b) != `{"100":`+docs["100"]+`}` {
		t.Errorf("cursor=0042: %d %s", resp.StatusCode, b)
	}
	if resp, b := do(t, http.MethodGet, hs.URL+"/incidents/0042", ""); resp.StatusCode != 200 || string(b) != doc42 {
		t.Errorf("/incidents/0042: %d %s", resp.StatusCode, b)
	}
	for _, bad := range []string{"priority=urgent", "type=phishing", "since=yesterday", "limit=0", "limit=100000", "cursor=abc", "colour=red",
		"since=NaN", "until=Inf", "since=-Inf", "since=0x1p31", "until=1e999", "since=+5", "since=1&since=2",
		"limit=1&limit=abc", "limit=+1", "cursor=7&cursor=42", "%zz", "since=1&%zz"} {
		if resp, b := do(t, http.MethodGet, hs.URL+"/incidents?"+bad, ""); resp.StatusCode != 400 || !strings.Contains(string(b), "error") {
			t.Errorf("?%s: %d %s, want 400", bad, resp.StatusCode, b)
		}
	}
}

// entry is one change of the view as the watcher delivers it.
type entry struct {
	key, value string
	op         jetstream.KeyValueOp
}

func (e entry) Bucket() string                  { return topology.BucketView }
func (e entry) Key() string                     { return e.key }
func (e entry) Value() []byte                   { return []byte(e.value) }
func (e entry) Revision() uint64                { return 1 }
func (e entry) Created() time.Time              { return time.Time{} }
func (e entry) Delta() uint64                   { return 0 }
func (e entry) Operation() jetstream.KeyValueOp { return e.op }

// TestRebuildMarkerHoldsTheView: while the rebuild marker is set, changes
// are taken but not served; once it is removed, or has expired (and the
// grace for a projector to take a dead rebuild over has passed), they are.
func TestRebuildMarkerHoldsTheView(t *testing.T) {
	for _, end := range []string{"removed", "expired"} {
		t.Run(end, func(t *testing.T) {
			s := storeWith(0)
			s.rebuildGrace = 100 * time.Millisecond
			s.apply(entry{key: "42", value: doc42, op: jetstream.KeyValuePut})
			s.rebuild()
			s.loaded.Store(true)
			before := string(bodyBytes(s.snap.Load().all))

			until := time.Now().Add(time.Hour)
			if end == "expired" {
				until = time.Now().Add(50 * time.Millisecond)
			}
			s.apply(entry{key: topology.RebuildKey, value: until.UTC().Format(time.RFC3339Nano), op: jetstream.KeyValuePut})
			s.apply(entry{key: "42", op: jetstream.KeyValuePurge})
			s.apply(entry{key: "43", value: doc42, op: jetstream.KeyValuePut})
			s.rebuild()
			if got := string(bodyBytes(s.snap.Load().all)); got != before {
				t.Fatalf("served a half-rebuilt view: %s", got)
			}
			if end == "removed" {
				s.apply(entry{key: topology.RebuildKey, op: jetstream.KeyValueDelete})
			} else {
				testkit.Eventually(t, 5*time.Second, func() (bool, string) { return !s.frozen(), "waiting for the marker to expire" })
			}
			s.rebuild()
			if got := string(bodyBytes(s.snap.Load().all)); got != `{"43":`+doc42+`}` {
				t.Fatalf("after the rebuild: %s", got)
			}
		})
	}
}

// TestMethodLabelsBounded: made-up methods, answered 405 or 401, never
// become metric label values.
func TestMethodLabelsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	dir := t.TempDir()
	writeTokens(t, filepath.Join(dir, "tokens"), "reader")
	hs, _, _ := serveAPI(t, Options{Registerer: reg, TokensFile: filepath.Join(dir, "tokens")})
	for i := range 50 {
		method := fmt.Sprintf("M%d%s", i, strings.Repeat("X", 1000))
		do(t, method, hs.URL+"/incidents", "")
		do(t, method, hs.URL+"/nowhere", "reader")
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if len(l.GetValue()) > 64 {
					t.Fatalf("%s has a label %s of %d bytes", mf.GetName(), l.GetName(), len(l.GetValue()))
				}
				if l.GetName() == "method" && l.GetValue() != "other" && l.GetValue() != http.MethodGet {
					t.Errorf("method label %q", l.GetValue())
				}
			}
		}
	}
}

// TestMethodNotAllowedSaysAllow: a 405 names the methods that are allowed.
func TestMethodNotAllowedSaysAllow(t *testing.T) {
	hs, _, _ := serveAPI(t, Options{})
	resp, _ := do(t, http.MethodPost, hs.URL+"/incidents", "")
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
		t.Fatalf("POST: %d, Allow %q", resp.StatusCode, resp.Header.Get("Allow"))
	}
}

func TestAcceptsGzip(t *testing.T) {
	for header, want := range map[string]bool{
		"":                  false,
		"gzip":              true,
		"GZIP":              true,
		"gzip;q=0":          false,
		"gzip; Q=0.0":       false,
		"gzip;q=0.5":        true,
		"*":                 true,
		"*;q=0":             false,
		"*, gzip;q=0":       false,
		"gzip;q=0, *":       false,
		"br, *;q=0.1":       true,
		"identity":          false,
		"gzip;q=nonsense":   false,
		"deflate, gzip;q=1": true,
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Header.Set("Accept-Encoding", header)
		if got := acceptsGzip(r); got != want {
			t.Errorf("Accept-Encoding %q: gzip %v, want %v", header, got, want)
		}
	}
}

// TestServiceUnavailableWhileLoading: before the view is loaded, data
// routes answer 503 with Retry-After, never an empty view or a 404.
func TestServiceUnavailableWhileLoading(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	a, err := New(Options{JS: js})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(a.Handler()) // Run not called: never loaded
	t.Cleanup(hs.Close)
	for _, path := range []string{"/incidents", "/incidents/1", "/unattributed", "/incidents?limit=1"} {
		resp, b := do(t, http.MethodGet, hs.URL+path, "")
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("%s before loading: %d %s (Retry-After %q), want 503", path, resp.StatusCode, b, resp.Header.Get("Retry-After"))
		}
	}
}

// TestStatusNamesStuckEndpoints: /status names the upstream endpoints that
// cannot advance, and why, when the API is told of them (the standalone),
// and says nothing of them otherwise.
func TestStatusNamesStuckEndpoints(t *testing.T) {
	stuck := map[string]string{"incidents/misuse": "3 polls failed in a row since 2026-12-03T07:00:00Z: page 2 cut off"}
	hs, _, _ := serveAPI(t, Options{Stuck: func() map[string]string { return stuck }})
	resp, b := do(t, http.MethodGet, hs.URL+"/status", "")
	var st struct {
		Stuck map[string]string `json:"stuck"`
	}
	if err := json.Unmarshal(b, &st); err != nil || resp.StatusCode != http.StatusOK || st.Stuck["incidents/misuse"] != stuck["incidents/misuse"] {
		t.Fatalf("/status %d %s (%v); want it to name incidents/misuse", resp.StatusCode, b, err)
	}
	hs, _, _ = serveAPI(t, Options{})
	if _, b := do(t, http.MethodGet, hs.URL+"/status", ""); strings.Contains(string(b), "stuck") {
		t.Errorf("/status without producers: %s", b)
	}
}
