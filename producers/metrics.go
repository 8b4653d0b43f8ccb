package producers

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

type metrics struct {
	published         *prometheus.CounterVec
	polls             *prometheus.CounterVec
	lastSuccess       *prometheus.GaugeVec
	invalidIdentities prometheus.Gauge
	dlq               *prometheus.CounterVec
	failing           *prometheus.GaugeVec
}

func newMetrics(reg prometheus.Registerer, types []incident.Type) *metrics {
	m := &metrics{
		published: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_published_total",
			Help: "Incidents newly stored in INCIDENTS_RAW, by type (an incident seen again is not counted again).",
		}, []string{"type"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_polls_total",
			Help: "Completed polls of an upstream endpoint, by endpoint and outcome (ok, error).",
		}, []string{"endpoint", "outcome"}),
		lastSuccess: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "incidents_poll_last_success_timestamp_seconds",
			Help: "When each upstream endpoint was last polled successfully (the process start until the first success).",
		}, []string{"endpoint"}),
		failing: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "incidents_poll_consecutive_failures",
			Help: "Polls of an upstream endpoint failed in a row (0 after a success); at 3 the endpoint cannot advance.",
		}, []string{"endpoint"}),
		invalidIdentities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "incidents_identities_invalid",
			Help: "Identities of the last sync skipped for an invalid IP or employee id.",
		}),
	}
	reg.MustRegister(m.published, m.polls, m.lastSuccess, m.invalidIdentities, m.failing)
	m.dlq = dlq.NewCounter(reg, topology.StageProducers)
	endpoints := []string{upstream.EndpointIdentities}
	for _, t := range types {
		m.published.WithLabelValues(string(t))
		endpoints = append(endpoints, upstream.Endpoint(t))
	}
	for _, e := range endpoints {
		m.polls.WithLabelValues(e, "ok")
		m.polls.WithLabelValues(e, "error")
		m.lastSuccess.WithLabelValues(e).SetToCurrentTime()
		m.failing.WithLabelValues(e)
	}
	return m
}
