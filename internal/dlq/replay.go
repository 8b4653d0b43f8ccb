package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// ReplayOptions select what Replay sends back.
type ReplayOptions struct {
	// Filter is a subject filter on INCIDENTS_DLQ (default incidents.dlq.>),
	// e.g. incidents.dlq.enricher.misuse.
	Filter string
	// Progress, when set, is called after each message with the count so far.
	Progress func(replayed int)
}

// Replay sends every dead-lettered message matching the filter back to the
// subject it was read from (header Incident-Dlq-Subject), so that the stage
// that refused it tries again, and removes it from INCIDENTS_DLQ once the
// republish is stored. A message the stage still refuses comes back to the
// DLQ. It returns how many it replayed.
func Replay(ctx context.Context, js jetstream.JetStream, o ReplayOptions) (int, error) {
	if o.Filter == "" {
		o.Filter = topology.DLQSubjects
	}
	stream, err := js.Stream(ctx, topology.StreamDLQ)
	if err != nil {
		return 0, fmt.Errorf("replaying the DLQ: %w", err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("replaying the DLQ: %w", err)
	}
	// Only what is there now: refused again, a message comes back after it.
	last := info.State.LastSeq
	errDone := errors.New("done")
	replayed := 0
	_, err = natsutil.ReadAll(ctx, js, topology.StreamDLQ, natsutil.ReadOptions{Filter: o.Filter}, func(m jetstream.Msg) error {
		md, err := m.Metadata()
		if err != nil {
			return err
		}
		if md.Sequence.Stream > last {
			return errDone
		}
		target := m.Headers().Get(topology.HeaderDLQSubject)
		if target == "" {
			return fmt.Errorf("DLQ message %d has no %s header", md.Sequence.Stream, topology.HeaderDLQSubject)
		}
		msg := nats.NewMsg(target)
		msg.Data = m.Data()
		// A fresh id: the original is still inside the de-duplication window
		// of the stream it goes back to.
		id := m.Headers().Get(topology.HeaderMsgID)
		msg.Header.Set(topology.HeaderMsgID, id+".replay."+strconv.FormatUint(md.Sequence.Stream, 10))
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			return fmt.Errorf("republishing DLQ message %d to %s: %w", md.Sequence.Stream, target, err)
		}
		if err := stream.DeleteMsg(ctx, md.Sequence.Stream); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("removing DLQ message %d: %w", md.Sequence.Stream, err)
		}
		replayed++
		if o.Progress != nil {
			o.Progress(replayed)
		}
		return nil
	})
	if errors.Is(err, errDone) {
		err = nil
	}
	return replayed, err
}
