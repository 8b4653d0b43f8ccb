package projector

import (
	"context"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/envelope"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// runProjector runs a projector over js, batch messages at a time, until
// the test ends.
func runProjector(t *testing.T, js jetstream.JetStream, batch int) {
	t.Helper()
	p, err := New(Options{JS: js, Batch: batch, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = p.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// publishEnriched publishes raw, a misuse incident of employee emp, as the
// enricher would, times times.
func publishEnriched(t *testing.T, js jetstream.JetStream, emp string, raw []byte, times int) {
	t.Helper()
	env := envelope.Enriched{ID: incident.ID(incident.Misuse, raw), Type: incident.Misuse, EmployeeID: emp, Incident: raw}
	b, err := env.Encode()
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(topology.EnrichedSubject(emp))
	m.Data = b
	for range times {
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
}
