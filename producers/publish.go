package producers

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
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

// publishBatch is how many publishes are in flight at once.
const publishBatch = 256

// publishRaw publishes incidents asynchronously in batches, each with its id
// as Nats-Msg-Id, and returns those JetStream acknowledged.
func publishRaw(ctx context.Context, js jetstream.JetStream, t incident.Type, items []rawIncident) ([]storedIncident, error) {
	var stored []storedIncident
	var errs []error
	for start := 0; start < len(items); start += publishBatch {
		chunk := items[start:min(start+publishBatch, len(items))]
		futures := make([]jetstream.PubAckFuture, 0, len(chunk))
		for _, r := range chunk {
			msg := nats.NewMsg(topology.RawSubject(t))
			msg.Data = r.data
			f, err := js.PublishMsgAsync(msg, jetstream.WithMsgID(r.id))
			if err != nil {
				errs = append(errs, err)
				break
			}
			futures = append(futures, f)
		}
		for i, f := range futures {
			select {
			case ack := <-f.Ok():
				stored = append(stored, storedIncident{rawIncident: chunk[i], new: !ack.Duplicate})
			case err := <-f.Err():
				errs = append(errs, err)
			case <-ctx.Done():
				return stored, ctx.Err()
			}
		}
		if len(errs) > 0 {
			return stored, fmt.Errorf("%d publishes failed: %w", len(errs), errors.Join(errs...))
		}
	}
	return stored, nil
}

// putAll puts many keys of a KV bucket at once: a KV put is a publish to
// $KV.<bucket>.<key>, so they go out asynchronously in batches rather than
// one round trip each. It returns how many were stored.
func putAll(ctx context.Context, js jetstream.JetStream, bucket string, entries []rawIncident) (int, error) {
	done := 0
	for start := 0; start < len(entries); start += publishBatch {
		chunk := entries[start:min(start+publishBatch, len(entries))]
		futures := make([]jetstream.PubAckFuture, 0, len(chunk))
		for _, e := range chunk {
			f, err := js.PublishAsync("$KV."+bucket+"."+e.id, e.data)
			if err != nil {
				return done, err
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
				done++
			case err := <-f.Err():
				return done, err
			case <-ctx.Done():
				return done, ctx.Err()
			}
		}
	}
	return done, nil
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
