package projector

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
)

type metrics struct {
	projected *prometheus.CounterVec
	conflicts prometheus.Counter
	dlq       *prometheus.CounterVec
	lag       *stage.Lag
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		projected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "incidents_projected_total",
			Help: "Enriched incidents folded into the view, by outcome (added, duplicate).",
		}, []string{"outcome"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "incidents_view_write_conflicts_total",
			Help: "Compare-and-set conflicts writing INCIDENT_VIEW (another projector wrote first).",
		}),
		dlq: dlq.NewCounter(reg, topology.StageProjector),
		lag: stage.NewLag(reg, topology.ConsumerProjector),
	}
	reg.MustRegister(m.projected, m.conflicts)
	m.projected.WithLabelValues("added")
	m.projected.WithLabelValues("duplicate")
	return m
}
