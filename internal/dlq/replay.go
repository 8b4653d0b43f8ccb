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
	// Refused, when set, is told of each letter left in the DLQ because what
	// it stands for cannot be sent back whole (its DLQ sequence, and why).
	Refused func(seq uint64, why string)
}

// ErrRefused is returned by Replay when it left letters in the DLQ.
var ErrRefused = errors.New("some dead letters cannot be replayed")

// Replay sends every dead-lettered message matching the filter back to the
// subject it was read from (header Incident-Dlq-Subject), so that the stage
// that refused it tries again, and removes it from INCIDENTS_DLQ once the
// republish is stored. A message the stage still refuses comes back to the
// DLQ. A letter that keeps only the beginning of its message is replayed
// with the original, read again from the stream and sequence it names; one
// whose original is gone is refused (left in the DLQ, told to o.Refused,
// and ErrRefused returned once the rest is replayed), never replayed cut.
// It returns how many it replayed.
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
	replayed, refused := 0, 0
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
		data, why := original(ctx, js, m)
		if why != "" {
			refused++
			if o.Refused != nil {
				o.Refused(md.Sequence.Stream, why)
			}
			return nil
		}
		msg := nats.NewMsg(target)
		msg.Data = data
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
	if err == nil && refused > 0 {
		err = fmt.Errorf("%w: %d left in %s", ErrRefused, refused, topology.StreamDLQ)
	}
	return replayed, err
}

// original returns the message letter m stands for: its data when whole,
// else the original read again from its source; or why it cannot.
func original(ctx context.Context, js jetstream.JetStream, m jetstream.Msg) ([]byte, string) {
	h := m.Headers()
	size := h.Get(topology.HeaderDLQCut)
	if size == "" {
		return m.Data(), ""
	}
	stream := h.Get(topology.HeaderDLQStream)
	seq, err := strconv.ParseUint(h.Get(topology.HeaderDLQSequence), 10, 64)
	if stream == "" || err != nil {
		return nil, fmt.Sprintf("it keeps %d of %s bytes and names no stream its original is in (read from the upstream: it comes back when the upstream lists it)", len(m.Data()), size)
	}
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Sprintf("it keeps %d of %s bytes, and its source stream %s cannot be read: %v", len(m.Data()), size, stream, err)
	}
	raw, err := s.GetMsg(ctx, seq)
	if err != nil {
		return nil, fmt.Sprintf("it keeps %d of %s bytes, and its original, %s #%d, cannot be read: %v", len(m.Data()), size, stream, seq, err)
	}
	if raw.Subject != h.Get(topology.HeaderDLQSubject) || strconv.Itoa(len(raw.Data)) != size {
		return nil, fmt.Sprintf("it keeps %d of %s bytes, and %s #%d is another message now", len(m.Data()), size, stream, seq)
	}
	return raw.Data, ""
}
