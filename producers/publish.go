package producers

import (
	"context"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
// returns those JetStream stored (new or already there).
func publishRaw(ctx context.Context, js jetstream.JetStream, t incident.Type, items []rawIncident) ([]storedIncident, error) {
	msgs := make([]*nats.Msg, len(items))
	for i, r := range items {
		msgs[i] = nats.NewMsg(topology.RawSubject(t))
		msgs[i].Data = r.data
		msgs[i].Header.Set(topology.HeaderMsgID, r.id)
	}
	res, err := stage.PublishAll(ctx, js, msgs)
	var stored []storedIncident
	for i, r := range res {
		if r.Ack != nil {
			stored = append(stored, storedIncident{rawIncident: items[i], new: !r.Ack.Duplicate})
		}
	}
	return stored, err
}

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
