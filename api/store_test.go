package api

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

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
	b.SetBytes(int64(len(s.snap.Load().all.raw)))
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
