// Package dlq dead-letters what a stage cannot process to INCIDENTS_DLQ,
// with the reason in headers, so that nothing is silently dropped.
package dlq

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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

// Reason returns the short reason token of l.
func (l Letter) Reason() string {
	if r := incident.ReasonOf(l.Err); r != "" {
		return string(r)
	}
	return "unprocessable"
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
