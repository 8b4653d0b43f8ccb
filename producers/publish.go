package producers

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
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
func publishRaw(ctx context.Context, js jetstream.JetStream, t incident.Type, items []rawIncident) ([]storedIncident, error) {
	stored := make([]storedIncident, 0, len(items))
	for len(items) > 0 {
		n := min(len(items), publishChunk)
		var err error
		if stored, err = publishChunkRaw(ctx, js, t, items[:n], stored); err != nil {
			return stored, err
		}
		items = items[n:]
	}
	return stored, nil
}

// publishChunk is how many messages publishRaw makes at once.
const publishChunk = 4096

func publishChunkRaw(ctx context.Context, js jetstream.JetStream, t incident.Type, items []rawIncident, stored []storedIncident) ([]storedIncident, error) {
	// An incident larger than NATS carries cannot be stored whole: it is
	// dead-lettered (its beginning, with its id and the reason), so that it
	// neither stops its type nor disappears unseen.
	limit := js.Conn().MaxPayload() - maxHeaderBytes
	msgs := make([]*nats.Msg, 0, len(items))
	sent := make([]rawIncident, 0, len(items))
	subject := topology.RawSubject(t)
	for _, r := range items {
		if int64(len(r.data)) > limit {
			letter := dlq.Letter{Type: string(t), ID: r.id, Subject: subject, Data: r.data[:min(len(r.data), tooLargeKept)], Size: len(r.data),
				Err: &incident.InvalidError{Reason: dlq.ReasonIncidentTooLarge, Detail: fmt.Sprintf("%d bytes; NATS carries at most %d", len(r.data), limit)}}
			if err := (dlq.Publisher{JS: js, Stage: topology.StageProducers}).Publish(ctx, letter); err != nil {
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

// maxHeaderBytes is room left for a message's headers under MaxPayload.
const maxHeaderBytes = 4096

// tooLargeKept is how much of an incident too large for NATS its dead
// letter keeps.
const tooLargeKept = 64 << 10

// putAll puts many keys of a KV bucket at once: a KV put is a publish to
// $KV.<bucket>.<key>, so they go out together rather than one round trip
// each. It returns how many were stored.
func putAll(ctx context.Context, js jetstream.JetStream, bucket string, entries []rawIncident) (int, error) {
	msgs := make([]*nats.Msg, len(entries))
	for i, e := range entries {
		msgs[i] = &nats.Msg{Subject: "$KV." + bucket + "." + e.id, Data: e.data}
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
