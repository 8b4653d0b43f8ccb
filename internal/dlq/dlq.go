// Package dlq dead-letters what a stage cannot process to INCIDENTS_DLQ,
// with the reason in headers, so that nothing is silently dropped.
package dlq

import (
	"context"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
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

// Reasons beyond an incident's own (incident.Reason): every reason token a
// stage dead-letters with is one of these or of incident.Reasons.
const (
	// ReasonTooLarge: the unattributed document of an IP (kept whole) would outgrow
	// the largest message NATS carries.
	ReasonTooLarge incident.Reason = "document_too_large"
	// ReasonIncidentTooLarge: one upstream incident is larger than NATS
	// carries; its letter keeps its beginning.
	ReasonIncidentTooLarge incident.Reason = "incident_too_large"
	// ReasonRepeatedFailure: handling the message failed (an error about
	// it, or a panic) as often as the stage allows.
	ReasonRepeatedFailure incident.Reason = "repeated_failure"
	// ReasonUnprocessable: any other failure that retrying cannot fix.
	ReasonUnprocessable incident.Reason = "unprocessable"
)

// Reasons returns every reason token a dead letter may carry.
func Reasons() []incident.Reason {
	return append(incident.Reasons(), ReasonTooLarge, ReasonIncidentTooLarge, ReasonRepeatedFailure, ReasonUnprocessable)
}

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
	for _, r := range Reasons() {
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
	msg.Header.Set(topology.HeaderDLQError, headerValue(l.Err.Error()))
	msg.Header.Set(topology.HeaderDLQSubject, l.Subject)
	if l.ID != "" {
		msg.Header.Set(topology.HeaderMsgID, p.Stage+"."+l.ID)
	}
	ctx, cancel := context.WithTimeout(ctx, natsutil.PublishTimeout)
	defer cancel()
	if _, err := p.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("dead-lettering %s from %s: %w", l.ID, l.Subject, err)
	}
	return nil
}

// maxErrorHeader bounds the Incident-Dlq-Error header.
const maxErrorHeader = 1024

// headerValue makes s safe as a header value: one line, valid UTF-8, at most
// maxErrorHeader bytes.
func headerValue(s string) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxErrorHeader {
		cut := maxErrorHeader
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}
