// Package dlq dead-letters what a stage cannot process to INCIDENTS_DLQ,
// with the reason in headers, so that nothing is silently dropped.
package dlq

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
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
	// Stream and Sequence locate the message in the stream it was read
	// from ("" and 0 when it never was in one, e.g. from the upstream).
	Stream   string
	Sequence uint64
	Data     []byte // the message exactly as read, or its beginning
	// Size is the original size when Data holds only its beginning.
	Size int
	Err  error // why; its incident.Reason becomes the reason header
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
// A message too large to be carried beside its letter's headers keeps its
// beginning, with its original size in Incident-Dlq-Cut: its own content
// never makes dead-lettering fail.
func (p Publisher) Publish(ctx context.Context, l Letter) error {
	msg := nats.NewMsg(topology.DLQSubject(p.Stage, l.Type))
	msg.Header.Set(topology.HeaderDLQReason, l.Reason())
	msg.Header.Set(topology.HeaderDLQError, headerValue(l.Err.Error()))
	msg.Header.Set(topology.HeaderDLQSubject, headerValue(l.Subject))
	if l.Stream != "" {
		msg.Header.Set(topology.HeaderDLQStream, headerValue(l.Stream))
		msg.Header.Set(topology.HeaderDLQSequence, strconv.FormatUint(l.Sequence, 10))
	}
	if l.ID != "" {
		msg.Header.Set(topology.HeaderMsgID, messageID(p.Stage, l.ID))
	}
	msg.Data = l.Data
	cut := l.Size
	if room := p.JS.Conn().MaxPayload() - headerBytes(msg.Header) - 64; int64(len(l.Data)) > room {
		msg.Data, cut = l.Data[:max(room, 0)], max(cut, len(l.Data))
	}
	if cut > 0 {
		msg.Header.Set(topology.HeaderDLQCut, strconv.Itoa(cut))
	}
	ctx, cancel := context.WithTimeout(ctx, natsutil.PublishTimeout)
	defer cancel()
	if _, err := p.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("dead-lettering %s from %s: %w", headerValue(l.ID), headerValue(l.Subject), err)
	}
	return nil
}

// headerBytes is the size of h on the wire, within a few bytes.
func headerBytes(h nats.Header) int64 {
	n := int64(len("NATS/1.0\r\n\r\n"))
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(": \r\n") + len(v))
		}
	}
	return n
}

// maxMessageID bounds the de-duplication id of a letter; a longer one is
// replaced by its hash.
const maxMessageID = 256

func messageID(stage, id string) string {
	id = stage + "." + id
	if len(id) <= maxMessageID && headerValue(id) == id {
		return id
	}
	sum := sha256.Sum256([]byte(id))
	return stage + ".sha256-" + hex.EncodeToString(sum[:16])
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
