package projector

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// RebuildOptions configure Rebuild.
type RebuildOptions struct {
	// Progress is called about every second with the messages of
	// INCIDENTS_ENRICHED replayed so far and the total to replay.
	Progress func(replayed, total uint64)
	// Hold is how long the API keeps serving the previous view at most, in
	// case the rebuild dies half-way (default 30m).
	Hold time.Duration
	// Projector runs the replay; the projectors already running (if any)
	// share the work.
	Projector Options
}

// Rebuild rebuilds INCIDENT_VIEW from INCIDENTS_ENRICHED while the pipeline
// runs: it marks the rebuild (the API keeps serving the previous view),
// removes the projector consumer, empties the view, recreates the consumer
// from the first message, and projects until the replay reaches the end of
// the stream as it was when the rebuild began.
func Rebuild(ctx context.Context, js jetstream.JetStream, o RebuildOptions) error {
	if o.Hold <= 0 {
		o.Hold = 30 * time.Minute
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
	until := time.Now().Add(o.Hold).UTC().Format(time.RFC3339)
	if _, err := kv.PutString(ctx, topology.RebuildKey, until); err != nil {
		return fmt.Errorf("rebuild: marking the rebuild: %w", err)
	}
	// However it ends, the API must not stay on the old view.
	defer func() { _ = kv.Delete(context.WithoutCancel(ctx), topology.RebuildKey) }()

	if err := js.DeleteConsumer(ctx, topology.StreamEnriched, topology.ConsumerProjector); err != nil &&
		!errors.Is(err, jetstream.ErrConsumerNotFound) {
		return fmt.Errorf("rebuild: removing consumer %s: %w", topology.ConsumerProjector, err)
	}
	// Let batches that running projectors fetched before finish writing.
	if err := wait.For(ctx, 2*time.Second); err != nil {
		return err
	}
	if err := purgeView(ctx, js, kv); err != nil {
		return err
	}
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamEnriched, topology.ProjectorConsumer())
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	p, err := New(o.Projector)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()

	total := target - first + 1
	if target == 0 {
		total = 0
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		ci, err := cons.Info(ctx)
		if err == nil {
			floor := min(ci.AckFloor.Stream, target)
			replayed := uint64(0)
			if floor >= first {
				replayed = floor - first + 1
			}
			if o.Progress != nil {
				o.Progress(replayed, total)
			}
			if floor >= target {
				stop()
				<-done
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-done:
			return fmt.Errorf("rebuild: projector stopped: %w", err)
		case <-tick.C:
		}
	}
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
