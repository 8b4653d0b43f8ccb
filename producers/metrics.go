package producers

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	published         *prometheus.CounterVec
	polls             *prometheus.CounterVec
	lastSuccess       *prometheus.GaugeVec
	invalidIdentities prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
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
			Help: "When each upstream endpoint was last polled successfully.",
		}, []string{"endpoint"}),
		invalidIdentities: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "incidents_identities_invalid",
			Help: "Identities of the last sync skipped for an invalid IP or employee id.",
		}),
	}
	reg.MustRegister(m.published, m.polls, m.lastSuccess, m.invalidIdentities)
	return m
}
