// Package dlq dead-letters what a stage cannot process to INCIDENTS_DLQ,
// with the reason in headers, so that nothing is silently dropped.
package dlq

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// Letter is one message that could not be processed.
type Letter struct {
	Type    string // incident type, or "" when unknown
	ID      string // de-duplication id, so redelivery dead-letters once
	Subject string // where the message was read from
	Data    []byte // the message exactly as read
	Err     error  // why; its incident.Reason becomes the reason header
}

// Reasons beyond an incident's own (incident.Reason).
const (
	// ReasonTooLarge: the document the incident belongs to would outgrow
	// the largest message NATS carries.
	ReasonTooLarge incident.Reason = "document_too_large"
	// ReasonUnprocessable: any other failure that retrying cannot fix.
	ReasonUnprocessable incident.Reason = "unprocessable"
)

// Reason returns the short reason token of l.
func (l Letter) Reason() string {
	if r := incident.ReasonOf(l.Err); r != "" {
		return string(r)
	}
	return string(ReasonUnprocessable)
}

// NewCounter registers incidents_dlq_total{stage,reason} on reg, every
// reason of stage starting at zero. Each stage registers it on its own
// registry; the families merge in one /metrics.
func NewCounter(reg prometheus.Registerer, stage string) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "incidents_dlq_total",
		Help: "Incidents dead-lettered to INCIDENTS_DLQ, by stage and reason.",
	}, []string{"stage", "reason"})
	reg.MustRegister(c)
	for _, r := range append(incident.Reasons(), ReasonTooLarge, ReasonUnprocessable) {
		c.WithLabelValues(stage, string(r))
	}
	return c
}

// Publisher dead-letters messages of one stage.
type Publisher struct {
	JS    jetstream.JetStream
	Stage string
}

// Publish stores l on incidents.dlq.<stage>.<type> and waits for the ack.
func (p Publisher) Publish(ctx context.Context, l Letter) error {
	msg := nats.NewMsg(topology.DLQSubject(p.Stage, l.Type))
	msg.Data = l.Data
	msg.Header.Set(topology.HeaderDLQReason, l.Reason())
	msg.Header.Set(topology.HeaderDLQError, l.Err.Error())
	msg.Header.Set(topology.HeaderDLQSubject, l.Subject)
	if l.ID != "" {
		msg.Header.Set(topology.HeaderMsgID, p.Stage+"."+l.ID)
	}
	if _, err := p.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("dead-lettering %s from %s: %w", l.ID, l.Subject, err)
	}
	return nil
}
