package upstream

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts upstream requests by endpoint and outcome.
type Metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewMetrics registers the upstream metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_upstream_requests_total",
			Help: "Upstream HTTP requests (each attempt), by endpoint and outcome.",
		}, []string{"endpoint", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "incidents_upstream_request_duration_seconds",
			Help:    "Duration of upstream HTTP requests (each attempt), by endpoint.",
			Buckets: []float64{0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 21, 30, 60},
		}, []string{"endpoint"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *Metrics) observe(endpoint, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.requests.WithLabelValues(endpoint, outcome).Inc()
	m.duration.WithLabelValues(endpoint).Observe(d.Seconds())
}

// outcome classifies an attempt's error for the outcome label.
func outcome(err error) string {
	var se *StatusError
	var de *decodeError
	var ne net.Error
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrUnauthorized):
		return "unauthorized"
	case errors.Is(err, ErrTooLarge):
		return "too_large"
	case errors.As(err, &se) && se.Code >= 500:
		return "server_error"
	case errors.As(err, &se):
		return "client_error"
	case errors.As(err, &de):
		return "invalid_body"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	return "network_error"
}
