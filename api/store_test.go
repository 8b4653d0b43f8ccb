package api

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// bodyBytes returns a body uncompressed, in one piece.
func bodyBytes(b *body) []byte {
	if b.parts == nil {
		return b.raw
	}
	return bytes.Join(b.parts, nil)
}

// storeWith returns a store holding n employees' documents of about 1 KB.
func storeWith(n int) *store {
	s := newStore(slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry()))
	for i := range n {
		s.employees[fmt.Sprint(100000+i)] = newBody([]byte(doc42))
		s.counts[fmt.Sprint(100000+i)] = [4]int{1, 0, 0, 0}
	}
	s.employeesDirty = true
	return s
}

// BenchmarkPrepareDocument prepares the full GET /incidents document of
// 10,000 employees after a change.
func BenchmarkPrepareDocument(b *testing.B) {
	s := storeWith(10000)
	b.ReportAllocs()
	for b.Loop() {
		s.employeesDirty = true
		s.rebuild()
	}
	b.SetBytes(int64(len(bodyBytes(s.snap.Load().all))))
}

// BenchmarkSnapshot100k prepares a snapshot of 100,000 employees after
// one of them changed, as the API does at a million incidents.
func BenchmarkSnapshot100k(b *testing.B) {
	s := storeWith(100_000)
	s.rebuild()
	b.ReportAllocs()
	for b.Loop() {
		s.employees["100007"] = newBody([]byte(doc42))
		s.counts["100007"] = [4]int{2, 0, 0, 0}
		s.changed["100007"] = true
		s.employeesDirty = true
		s.rebuild()
	}
}

// TestRankMovesOnlyTheChanged: a ranking updated from the last one for a
// few changed, added and removed employees is the one a full sort gives.
func TestRankMovesOnlyTheChanged(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := storeWith(3000)
	for emp := range s.counts {
		s.counts[emp] = [4]int{rng.IntN(5), rng.IntN(5), rng.IntN(3), rng.IntN(2)}
	}
	prev := s.rank(nil)
	for round := range 20 {
		for range 40 {
			emp := fmt.Sprint(100000 + rng.IntN(3200))
			switch rng.IntN(3) {
			case 0:
				delete(s.counts, emp)
			default:
				s.counts[emp] = [4]int{rng.IntN(5), rng.IntN(5), rng.IntN(3), rng.IntN(2)}
			}
			s.changed[emp] = true
		}
		got := s.rank(prev)
		clear(s.changed) // as rebuild does once the snapshot is out
		s.rerankAll = true
		want := s.rank(nil)
		if !slices.Equal(got, want) {
			t.Fatalf("round %d: the updated ranking differs from a full sort", round)
		}
		prev = got
	}
}

// BenchmarkServeFullDocument serves the prepared document of 1,000
// employees through the API's handler (no network).
func BenchmarkServeFullDocument(b *testing.B) {
	s := storeWith(1000)
	s.rebuild()
	a := &API{store: s}
	req := httptest.NewRequest(http.MethodGet, "/incidents", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		a.all(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// TestFullDocumentFromParts: a full document too large to copy is served
// from the employees' bodies, byte for byte what the copied one is, plain,
// gzip and HEAD; an employee removed leaves no trace of itself.
func TestFullDocumentFromParts(t *testing.T) {
	get := func(s *store, method string, h map[string]string) *httptest.ResponseRecorder {
		a := &API{store: s}
		req := httptest.NewRequest(method, "/incidents", nil)
		for k, v := range h {
			req.Header.Set(k, v)
		}
		w := httptest.NewRecorder()
		a.all(w, req)
		return w
	}
	copied, parted := storeWith(300), storeWith(300)
	parted.maxCopied = 0
	copied.rebuild()
	parted.rebuild()
	if parted.snap.Load().all.parts == nil || copied.snap.Load().all.parts != nil {
		t.Fatal("the test wants one document copied and one from parts")
	}
	want := get(copied, http.MethodGet, nil).Body.String()
	if !json.Valid([]byte(want)) {
		t.Fatalf("copied document is not JSON: %.80s", want)
	}
	if got := get(parted, http.MethodGet, nil); got.Body.String() != want || got.Header().Get("Content-Length") != fmt.Sprint(len(want)) {
		t.Fatalf("from parts: %d bytes (Content-Length %s), want %d", got.Body.Len(), got.Header().Get("Content-Length"), len(want))
	}
	gz := get(parted, http.MethodGet, map[string]string{"Accept-Encoding": "gzip"})
	zr, err := gzip.NewReader(gz.Body)
	if err != nil {
		t.Fatal(err)
	}
	if plain, _ := io.ReadAll(zr); string(plain) != want {
		t.Fatal("gzip from parts differs")
	}
	if head := get(parted, http.MethodHead, nil); head.Body.Len() != 0 || head.Header().Get("Content-Length") != fmt.Sprint(len(want)) {
		t.Fatalf("HEAD: %d bytes, Content-Length %s", head.Body.Len(), head.Header().Get("Content-Length"))
	}
	for _, s := range []*store{copied, parted} {
		delete(s.employees, "100000")
		delete(s.prefixes, "100000")
		s.employeesDirty = true
		s.rebuild()
	}
	if got, want := get(parted, http.MethodGet, nil).Body.String(), get(copied, http.MethodGet, nil).Body.String(); got != want || strings.Contains(got, `"100000"`) {
		t.Fatalf("after a removal, from parts: %.60s…, copied: %.60s…", got, want)
	}
}
