package producers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

type rawIncident struct {
	id      string
	data    []byte
	rawHash uint64
}

type storedIncident struct {
	rawIncident
	new bool // false when JetStream already had it (another copy published it)
}

// publishRaw publishes incidents, each with its id as Nats-Msg-Id, and
// returns those JetStream stored (new or already there). The messages are
// made a chunk at a time: a first poll of a large upstream hands it a
// million incidents at once.
func (p *Producers) publishRaw(ctx context.Context, t incident.Type, items []rawIncident) ([]storedIncident, error) {
	stored := make([]storedIncident, 0, len(items))
	for len(items) > 0 {
		n := min(len(items), publishChunk)
		var err error
		if stored, err = p.publishChunkRaw(ctx, t, items[:n], stored); err != nil {
			return stored, err
		}
		items = items[n:]
	}
	return stored, nil
}

// publishChunk is how many messages publishRaw makes at once.
const publishChunk = 4096

func (p *Producers) publishChunkRaw(ctx context.Context, t incident.Type, items []rawIncident, stored []storedIncident) ([]storedIncident, error) {
	// An incident larger than NATS carries cannot be stored whole: it is
	// dead-lettered (its beginning, with its id and the reason), so that it
	// neither stops its type nor disappears unseen.
	js := p.js
	limit := js.Conn().MaxPayload() - maxHeaderBytes
	msgs := make([]*nats.Msg, 0, len(items))
	sent := make([]rawIncident, 0, len(items))
	subject := topology.RawSubject(t)
	for _, r := range items {
		if int64(len(r.data)) > limit {
			letter := dlq.Letter{Type: string(t), ID: r.id, Subject: subject, Data: r.data[:min(len(r.data), incident.OversizeHead)], Size: len(r.data),
				Err: &incident.InvalidError{Reason: dlq.ReasonIncidentTooLarge, Detail: fmt.Sprintf("%d bytes; NATS carries at most %d", len(r.data), limit)}}
			if err := p.deadLetter(ctx, letter); err != nil {
				return stored, err
			}
			stored = append(stored, storedIncident{rawIncident: r})
			continue
		}
		msgs = append(msgs, &nats.Msg{Subject: subject, Data: r.data, Header: nats.Header{topology.HeaderMsgID: {r.id}}})
		sent = append(sent, r)
	}
	res, err := stage.PublishAtomic(ctx, js, msgs)
	for i, r := range res {
		if r.Ack != nil {
			stored = append(stored, storedIncident{rawIncident: sent[i], new: !r.Ack.Duplicate})
		}
	}
	return stored, err
}

// deadLetter stores l in INCIDENTS_DLQ and counts it.
func (p *Producers) deadLetter(ctx context.Context, l dlq.Letter) error {
	if err := (dlq.Publisher{JS: p.js, Stage: topology.StageProducers}).Publish(ctx, l); err != nil {
		return err
	}
	p.metrics.dlq.WithLabelValues(topology.StageProducers, l.Reason()).Inc()
	return nil
}

// deadLetterTooLarge dead-letters the incidents of a page longer than
// UPSTREAM_MAX_BODY, each once (by an id of its content): read past rather
// than kept, they cost themselves only, never the rest of their type.
func (p *Producers) deadLetterTooLarge(ctx context.Context, t incident.Type, page upstream.Page, seen *seenSet) (int, error) {
	n := 0
	for _, o := range page.TooLarge {
		id := tooLargeID(t, o.Sum)
		if seen.hasID(id) {
			continue
		}
		err := p.deadLetter(ctx, dlq.Letter{Type: string(t), ID: id, Subject: topology.RawSubject(t), Data: o.Head, Size: int(o.Size),
			Err: &incident.InvalidError{Reason: dlq.ReasonIncidentTooLarge,
				Detail: fmt.Sprintf("incident %d of page %d is %d bytes, over UPSTREAM_MAX_BODY", o.Index+1, page.Number, o.Size)}})
		if err != nil {
			return n, err
		}
		seen.addID(id)
		n++
		p.log.Warn("incident larger than UPSTREAM_MAX_BODY dead-lettered", "type", t, "page", page.Number, "index", o.Index, "bytes", o.Size, "id", id)
	}
	return n, nil
}

// tooLargeID identifies an incident too large to be read by its content's
// sum, so that it is dead-lettered once however often it is listed.
func tooLargeID(t incident.Type, sum [32]byte) string {
	h := sha256.New()
	h.Write([]byte("too_large\x00" + string(t) + "\x00"))
	h.Write(sum[:])
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// maxHeaderBytes is room left for a message's headers under MaxPayload.
const maxHeaderBytes = 4096

// putAll puts many keys of a KV bucket at once: a KV put is a publish to
// $KV.<bucket>.<key>, so they go out together rather than one round trip
// each. It returns how many were stored.
func putAll(ctx context.Context, js jetstream.JetStream, bucket string, entries []rawIncident) (int, error) {
	msgs := make([]*nats.Msg, len(entries))
	for i, e := range entries {
		msgs[i] = &nats.Msg{Subject: topology.KVSubject(bucket, e.id), Data: e.data}
	}
	res, err := stage.PublishAll(ctx, js, msgs)
	done := 0
	for _, r := range res {
		if r.Ack != nil {
			done++
		}
	}
	return done, err
}

// readLetterIDs calls fn with the id of every incident of type t the
// producers dead-lettered, so that a restart does not dead-letter it again.
func readLetterIDs(ctx context.Context, js jetstream.JetStream, t incident.Type, fn func(id string)) (int, error) {
	prefix := topology.StageProducers + "."
	return natsutil.ReadAll(ctx, js, topology.StreamDLQ, natsutil.ReadOptions{
		Filter:      topology.DLQSubject(topology.StageProducers, string(t)),
		HeadersOnly: true,
		Batch:       2000,
	}, func(m jetstream.Msg) error {
		if id, ok := strings.CutPrefix(m.Headers().Get(topology.HeaderMsgID), prefix); ok {
			fn(id)
		}
		return nil
	})
}

// readIDs calls fn with the id of every raw incident of type t stored.
func readIDs(ctx context.Context, js jetstream.JetStream, t incident.Type, fn func(id string)) (int, error) {
	return natsutil.ReadAll(ctx, js, topology.StreamRaw, natsutil.ReadOptions{
		Filter:      topology.RawSubject(t),
		HeadersOnly: true,
		Batch:       2000,
	}, func(m jetstream.Msg) error {
		if id := m.Headers().Get(topology.HeaderMsgID); id != "" {
			fn(id)
		}
		return nil
	})
}
