package enricher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
)

type metrics struct {
	enriched     *prometheus.CounterVec
	reattributed prometheus.Counter
	dlq          *prometheus.CounterVec
	lag          *stage.Lag
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		enriched: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_enriched_total",
			Help: "Raw incidents enriched, by type and outcome (attributed, unattributed).",
		}, []string{"type", "outcome"}),
		reattributed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "incidents_reattributed_total",
			Help: "Unattributed incidents attributed after their identity appeared.",
		}),
		dlq: dlq.NewCounter(reg, topology.StageEnricher),
		lag: stage.NewLag(reg, topology.ConsumerEnricher),
	}
	reg.MustRegister(m.enriched, m.reattributed)
	for _, t := range incident.Types() {
		m.enriched.WithLabelValues(string(t), "attributed")
		m.enriched.WithLabelValues(string(t), "unattributed")
	}
	return m
}
