package projector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// RebuildOptions configure Rebuild.
type RebuildOptions struct {
	// Progress is called about every second with the messages of
	// INCIDENTS_ENRICHED replayed so far and the total to replay.
	Progress func(replayed, total uint64)
	// Lease is how long the rebuild marker holds without being renewed
	// (default RebuildLease): the rebuild renews it while it runs, and a
	// projector that finds it expired knows the rebuild died half-way and
	// runs it again.
	Lease time.Duration
	// Projector folds the replay.
	Projector Options
	// Memory bounds what is folded in memory before it is written
	// (default rebuildMemory).
	Memory int
}

// RebuildLease is how long a rebuild marker holds unless renewed.
const RebuildLease = 15 * time.Second

// rebuildMemory bounds what a rebuild folds in memory before it writes:
// a view that fits is written once, each employee in one write.
const rebuildMemory = 512 << 20

// Rebuild rebuilds INCIDENT_VIEW from INCIDENTS_ENRICHED while the pipeline
// runs: it marks the rebuild (the API keeps serving the previous view),
// empties the view, and folds the stream as it was when the rebuild began
// in memory, writing what it holds whenever it reaches o.Memory and at the
// end (each employee once, for a view that fits). The projectors go on
// meanwhile: every write is a compare-and-set and folding is idempotent,
// so what they add and what the rebuild adds make the same view in any
// order.
func Rebuild(ctx context.Context, js jetstream.JetStream, o RebuildOptions) error {
	if o.Lease <= 0 {
		o.Lease = RebuildLease
	}
	if o.Memory <= 0 {
		o.Memory = rebuildMemory
	}
	o.Projector.JS = js
	stream, err := js.Stream(ctx, topology.StreamEnriched)
	if err != nil {
		return fmt.Errorf("rebuild: opening %s: %w", topology.StreamEnriched, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	first, target := info.State.FirstSeq, info.State.LastSeq
	kv, err := js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		return fmt.Errorf("rebuild: opening %s: %w", topology.BucketView, err)
	}
	if err := markRebuild(ctx, kv, o.Lease); err != nil {
		return fmt.Errorf("rebuild: marking the rebuild: %w", err)
	}
	// However it ends, the API must not stay on the old view. A rebuild
	// that dies without this leaves a marker that expires instead.
	defer func() { _ = kv.Delete(context.WithoutCancel(ctx), topology.RebuildKey) }()
	// The renewals stop, and the last of them is done, before the marker
	// is deleted: a renewal landing after the delete would hold the view
	// for a lease and have a projector run the rebuild again.
	renewing, stopRenewing := context.WithCancel(ctx)
	renewed := make(chan struct{})
	go func() { defer close(renewed); renewRebuild(renewing, kv, o.Lease, o.Projector.Logger) }()
	defer func() { stopRenewing(); <-renewed }()

	if err := purgeView(ctx, js, kv); err != nil {
		return err
	}
	p, err := New(o.Projector)
	if err != nil {
		return err
	}
	total := uint64(0)
	if target >= first && target > 0 {
		total = target - first + 1
		if err := p.replay(ctx, kv, first, target, o.Memory, o.Progress); err != nil {
			return err
		}
	}
	if o.Progress != nil {
		o.Progress(total, total)
	}
	return nil
}

// markRebuild sets the rebuild marker to hold for lease from now.
func markRebuild(ctx context.Context, kv jetstream.KeyValue, lease time.Duration) error {
	_, err := kv.PutString(ctx, topology.RebuildKey, rebuildUntil(lease))
	return err
}

func rebuildUntil(lease time.Duration) string {
	return time.Now().Add(lease).UTC().Format(time.RFC3339)
}

// renewRebuild renews the marker's lease until ctx ends.
func renewRebuild(ctx context.Context, kv jetstream.KeyValue, lease time.Duration, log *slog.Logger) {
	t := time.NewTicker(lease / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := markRebuild(ctx, kv, lease); err != nil && ctx.Err() == nil && log != nil {
			log.Warn("renewing the rebuild marker failed; will try again", "error", err)
		}
	}
}

// replay folds INCIDENTS_ENRICHED from first to last into the view, in
// memory up to memory bytes at a time. What a live projector would
// dead-letter was dead-lettered when it first came: it is skipped.
func (p *Projector) replay(ctx context.Context, kv jetstream.KeyValue, first, last uint64, memory int, progress func(done, total uint64)) error {
	cons, err := p.js.OrderedConsumer(ctx, topology.StreamEnriched, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{topology.EnrichedSubjects},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    first,
	})
	if err != nil {
		return fmt.Errorf("rebuild: reading %s: %w", topology.StreamEnriched, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return fmt.Errorf("rebuild: reading %s: %w", topology.StreamEnriched, err)
	}
	defer it.Stop()
	b := newBatch()
	skipped := 0
	flush := func() error {
		defer func() { b = newBatch() }()
		order := b.order
		for attempt := 1; len(order) > 0; attempt++ {
			var failed []string
			var last error
			for key, err := range p.write(ctx, kv, b.plans, order) {
				switch {
				case err == nil:
				case errors.Is(err, nats.ErrMaxPayload):
					// Dead-lettered as too large when first projected.
					p.log.Warn("rebuild skipped a document too large for NATS", "key", key, "error", err)
				default:
					failed, last = append(failed, key), err
				}
			}
			if len(failed) > 0 && attempt == 3 {
				return fmt.Errorf("rebuild: writing %d documents: %w", len(failed), last)
			}
			order = failed
		}
		return nil
	}
	total := last - first + 1
	lastProgress := time.Now()
	for {
		m, err := it.Next(jetstream.NextMaxWait(30 * time.Second))
		if errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
			break // the last messages went (MaxAge) while they were replayed
		}
		if err != nil {
			return fmt.Errorf("rebuild: reading %s: %w", topology.StreamEnriched, err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("rebuild: %w", err)
		}
		seq := meta.Sequence.Stream
		if seq > last {
			break
		}
		if _, rejected := b.plan(m.Subject(), m.Data(), m.Headers()); rejected != nil {
			skipped++
		}
		if b.bytes >= memory {
			if err := flush(); err != nil {
				return err
			}
		}
		if progress != nil && time.Since(lastProgress) >= time.Second {
			progress(seq-first+1, total)
			lastProgress = time.Now()
		}
		if seq == last {
			break
		}
	}
	if skipped > 0 {
		p.log.Warn("rebuild skipped invalid incidents (dead-lettered when first projected)", "count", skipped)
	}
	return flush()
}

// purgeView removes every document, with purge markers so that watchers
// (the API) see each removal. The markers are published together, not one
// round trip each: a large view holds hundreds of thousands of keys.
func purgeView(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) error {
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return fmt.Errorf("rebuild: listing the view: %w", err)
	}
	var msgs []*nats.Msg
	for k := range keys.Keys() {
		if k != topology.RebuildKey {
			msgs = append(msgs, purgeMsg(k))
		}
	}
	if _, err := stage.PublishAll(ctx, js, msgs); err != nil {
		return fmt.Errorf("rebuild: purging the view: %w", err)
	}
	return nil
}
