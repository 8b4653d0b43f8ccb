package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	requests         *prometheus.HistogramVec
	viewEmployees    prometheus.Gauge
	viewIncidents    *prometheus.GaugeVec
	viewUnattributed prometheus.Gauge
	viewUpdated      prometheus.Gauge
	snapshotSeconds  prometheus.Histogram
	eventStreams     prometheus.GaugeFunc
	streamsRefused   *prometheus.CounterVec
	streamsEnded     *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "http_request_duration_seconds",
			Help:    "Duration of HTTP requests, by route pattern, method and status code.",
			Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
		}, []string{"route", "method", "code"}),
		viewEmployees: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "incidents_view_employees",
			Help: "Employees with at least one incident in the served view.",
		}),
		viewIncidents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "incidents_view_incidents",
			Help: "Incidents in the served view, by priority.",
		}, []string{"priority"}),
		viewUnattributed: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "incidents_view_unattributed",
			Help: "Incidents whose IP no identity covers yet.",
		}),
		viewUpdated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "incidents_view_last_update_timestamp_seconds",
			Help: "When the served view last changed.",
		}),
		snapshotSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "incidents_api_snapshot_seconds",
			Help:    "Time to prepare what the API serves after the view changed; the next is prepared no sooner than 5x this later.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
		}),
		streamsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_api_event_streams_refused_total",
			Help: "/events streams refused (503), by the limit reached: total or client.",
		}, []string{"limit"}),
		streamsEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_api_event_streams_ended_total",
			Help: "/events streams the server ended, by why: lifetime, revoked, stopping or behind.",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.streamsRefused, m.streamsEnded)
	reg.MustRegister(m.requests, m.viewEmployees, m.viewIncidents, m.viewUnattributed, m.viewUpdated, m.snapshotSeconds)
	return m
}

// methodLabel is r's method as a label value: one of a fixed set, so that
// made-up methods (sent by anyone, answered 401 or 405) cannot grow the
// metrics without bound.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "other"
}

// instrument records each request under its chi route pattern, never the raw
// path, so that label values stay bounded.
func (m *metrics) instrument(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		next.ServeHTTP(ww, r)
		route := "unmatched"
		if rc := chi.RouteContext(r.Context()); rc != nil && rc.RoutePattern() != "" {
			route = rc.RoutePattern()
		}
		code := ww.Status()
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(route, methodLabel(r.Method), strconv.Itoa(code)).Observe(time.Since(start).Seconds())
	})
}
