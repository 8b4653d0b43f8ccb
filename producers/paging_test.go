package producers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// pagedUpstream serves misuse incidents in pages of 10, page n at
// ?page=n, with a "next" link on each page but the last (pages 0: endless).
// fail reports whether a request for a page fails with 502.
type pagedUpstream struct {
	pages int
	fail  func(page, attempt int) bool

	mu       sync.Mutex
	requests map[int]int
}

func (u *pagedUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	page := 1
	if p := r.URL.Query().Get("page"); p != "" {
		page, _ = strconv.Atoi(p)
	}
	u.mu.Lock()
	u.requests[page]++
	attempt := u.requests[page]
	u.mu.Unlock()
	if u.fail != nil && u.fail(page, attempt) {
		http.Error(w, "bad gateway", http.StatusBadGateway)
		return
	}
	var items []string
	for i := range 10 {
		n := (page-1)*10 + i
		items = append(items, fmt.Sprintf(`{"priority":"low","employee_id":%d,"timestamp":%d}`, n, n))
	}
	next := "null"
	if u.pages == 0 || page < u.pages {
		next = fmt.Sprintf(`"http://%s/incidents/misuse/?page=%d"`, r.Host, page+1)
	}
	fmt.Fprintf(w, `{"next":%s,"results":[%s]}`, next, strings.Join(items, ","))
}

func (u *pagedUpstream) count(page int) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.requests[page]
}

func pagedSetup(t *testing.T, u *pagedUpstream, limits upstream.Limits) (*Producers, func() uint64) {
	t.Helper()
	u.requests = map[int]int{}
	hs := httptest.NewServer(u)
	t.Cleanup(hs.Close)
	c, err := upstream.New(upstream.Options{BaseURL: hs.URL, Limits: limits,
		Retry: upstream.RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	_, js := testkit.Connect(t, testkit.JetStream(t))
	p, err := New(Options{Upstream: c, JS: js, Types: []incident.Type{incident.Misuse}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	return p, func() uint64 { return testkit.StreamMsgs(t, js, topology.StreamRaw) }
}

// TestFailingPageKeepsWhatWasRead: a poll that fails at page 5 has
// published pages 1 to 4, and the next poll resumes at page 5.
func TestFailingPageKeepsWhatWasRead(t *testing.T) {
	u := &pagedUpstream{pages: 8, fail: func(page, attempt int) bool { return page == 5 && attempt <= 2 }}
	p, stored := pagedSetup(t, u, upstream.Limits{})
	ctx := context.Background()
	res, err := p.Poll(ctx, incident.Misuse)
	if err == nil {
		t.Fatal("poll with a failing page succeeded")
	}
	if res.Published != 40 || stored() != 40 {
		t.Fatalf("published %d (stream holds %d) before the failing page, want 40", res.Published, stored())
	}
	if _, err := p.Poll(ctx, incident.Misuse); err != nil {
		t.Fatal(err)
	}
	if stored() != 80 {
		t.Fatalf("stream holds %d after the resumed poll, want 80", stored())
	}
	if n := u.count(1); n != 1 {
		t.Errorf("page 1 requested %d times; the second poll must resume at page 5", n)
	}
	// A complete poll starts over at page 1 next time.
	if _, err := p.Poll(ctx, incident.Misuse); err != nil {
		t.Fatal(err)
	}
	if n := u.count(1); n != 2 {
		t.Errorf("page 1 requested %d times after a complete poll, want 2", n)
	}
}

// TestEndlessPagingIsBounded: a "next" chain that never ends stops at the
// poll's page limit with a clear error, keeps what it published, and the
// next poll goes on past it.
func TestEndlessPagingIsBounded(t *testing.T) {
	u := &pagedUpstream{pages: 0}
	p, stored := pagedSetup(t, u, upstream.Limits{MaxPages: 5})
	ctx := context.Background()
	_, err := p.Poll(ctx, incident.Misuse)
	if !errors.Is(err, upstream.ErrLimit) {
		t.Fatalf("endless paging: %v, want ErrLimit", err)
	}
	if stored() != 50 {
		t.Fatalf("stream holds %d, want the 50 incidents of 5 pages", stored())
	}
	if _, err := p.Poll(ctx, incident.Misuse); !errors.Is(err, upstream.ErrLimit) {
		t.Fatalf("second poll: %v", err)
	}
	if stored() != 100 || u.count(1) != 1 || u.count(10) != 1 {
		t.Fatalf("second poll: stream %d, page 1 requested %d times, page 10 %d times; want 100, 1, 1", stored(), u.count(1), u.count(10))
	}
}

// TestBadElementsCutOut: elements a parser refuses (NaN, too deep, stray
// bytes, invalid UTF-8) do not stop their page; each is published once as
// received (the enricher dead-letters it), never again on later polls.
func TestBadElementsCutOut(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 100_000) + "1" + strings.Repeat("}", 100_000)
	page := `{"next":null,"results":[` +
		`{"priority":"low","employee_id":1,"timestamp":1},` +
		`{"priority":"low","employee_id":2,"timestamp":NaN},` +
		deep + `,` +
		`{"priority":"low","employee_id":3,"timestamp":3} garbage,` +
		"{\"priority\":\"low\",\"employee_id\":4,\"timestamp\":4,\"note\":\"\xff\xfe\"}," +
		"{\"priority\":\"low\",\"employee_id\":4,\"timestamp\":4,\"note\":\"\xfe\xfd\"}," +
		`{"priority":"high","employee_id":5,"timestamp":5}]}`
	js := pollPage(t, page, embedded.Options{}, 3)
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 7 {
		t.Fatalf("stream holds %d, want all 7 elements once each (two differ only in invalid bytes)", n)
	}
}

// TestIncidentLargerThanNATSCarries: one incident over the server's max
// payload is dead-lettered once (its beginning, with the reason) and the
// rest of its page is published; it does not stop its type.
func TestIncidentLargerThanNATSCarries(t *testing.T) {
	huge := `{"priority":"low","employee_id":1,"timestamp":1,"blob":"` + strings.Repeat("x", 1_500_000) + `"}`
	page := `{"next":null,"results":[` + huge + `,{"priority":"low","employee_id":2,"timestamp":2}]}`
	js := pollPage(t, page, embedded.Options{MaxPayload: 1 << 20}, 3)
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 1 {
		t.Errorf("INCIDENTS_RAW holds %d, want the 1 that fits", n)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 1 {
		t.Fatalf("INCIDENTS_DLQ holds %d, want the huge one once", n)
	}
	s, _ := js.Stream(context.Background(), topology.StreamDLQ)
	m, err := s.GetLastMsgForSubject(context.Background(), topology.DLQSubject(topology.StageProducers, "misuse"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(topology.HeaderDLQReason) != "incident_too_large" || len(m.Data) != 64<<10 {
		t.Errorf("letter: reason %q, %d bytes", m.Header.Get(topology.HeaderDLQReason), len(m.Data))
	}
}

// pollPage serves page as the misuse list and polls it polls times into a
// server started with o; it returns the server's JetStream.
func pollPage(t *testing.T, page string, o embedded.Options, polls int) jetstream.JetStream {
	t.Helper()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(page)) }))
	t.Cleanup(hs.Close)
	c, err := upstream.New(upstream.Options{BaseURL: hs.URL})
	if err != nil {
		t.Fatal(err)
	}
	_, js := testkit.Connect(t, testkit.JetStreamWith(t, o))
	p, err := New(Options{Upstream: c, JS: js, Types: []incident.Type{incident.Misuse}, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	for range polls {
		if _, err := p.Poll(context.Background(), incident.Misuse); err != nil {
			t.Fatal(err)
		}
	}
	return js
}

// TestIncidentLargerThanMaxBodyCostsOnlyItself: one incident longer than
// UPSTREAM_MAX_BODY inside page 2 of 3 is dead-lettered once (its
// beginning, its size, the reason), across polls and a restart, and every
// other incident of its page and of the pages after it is published.
func TestIncidentLargerThanMaxBodyCostsOnlyItself(t *testing.T) {
	const maxBody = 64 << 10
	huge := `{"priority":"low","employee_id":99,"timestamp":99,"blob":"` + strings.Repeat("x", 4*maxBody) + `"}`
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		page, _ := strconv.Atoi(r.URL.Query().Get("page"))
		page = max(page, 1)
		var items []string
		for i := range 10 {
			n := (page-1)*10 + i
			items = append(items, fmt.Sprintf(`{"priority":"low","employee_id":%d,"timestamp":%d}`, n, n))
		}
		if page == 2 {
			items[4] = huge
		}
		next := "null"
		if page < 3 {
			next = fmt.Sprintf(`"http://%s/incidents/misuse/?page=%d"`, r.Host, page+1)
		}
		fmt.Fprintf(w, `{"next":%s,"results":[%s]}`, next, strings.Join(items, ","))
	}))
	t.Cleanup(hs.Close)
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	producers := func() (*Producers, prometheus.Gatherer) {
		c, err := upstream.New(upstream.Options{BaseURL: hs.URL, MaxBody: maxBody})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		p, err := New(Options{Upstream: c, JS: js, Types: []incident.Type{incident.Misuse}, Registerer: reg})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.loadSeen(ctx); err != nil {
			t.Fatal(err)
		}
		return p, reg
	}
	p, _ := producers()
	for i := range 3 {
		res, err := p.Poll(ctx, incident.Misuse)
		if err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
		if want := max(0, 1-i); res.Pages != 3 || res.TooLarge != want {
			t.Fatalf("poll %d: %+v; want 3 pages, %d dead-lettered", i, res, want)
		}
	}
	if got := testutil.ToFloat64(p.metrics.dlq.WithLabelValues(topology.StageProducers, "incident_too_large")); got != 1 {
		t.Errorf("incidents_dlq_total{stage=producers,reason=incident_too_large} = %v, want 1", got)
	}
	again, _ := producers() // a restart knows it was dead-lettered
	if res, err := again.Poll(ctx, incident.Misuse); err != nil || res.TooLarge != 0 {
		t.Fatalf("after a restart: %+v, %v; want it not dead-lettered again", res, err)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 29 {
		t.Errorf("INCIDENTS_RAW holds %d, want the 29 others", n)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamDLQ); n != 1 {
		t.Fatalf("INCIDENTS_DLQ holds %d, want the huge one once", n)
	}
	s, _ := js.Stream(ctx, topology.StreamDLQ)
	m, err := s.GetLastMsgForSubject(ctx, topology.DLQSubject(topology.StageProducers, "misuse"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(topology.HeaderDLQReason) != "incident_too_large" || m.Header.Get(topology.HeaderDLQCut) != strconv.Itoa(len(huge)) ||
		!strings.HasPrefix(huge, string(m.Data)) || len(m.Data) != incident.OversizeHead {
		t.Errorf("letter: %d bytes, headers %v", len(m.Data), m.Header)
	}
}
