package stage

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/wait"
)

// pullBatches pulls from a durable consumer and hands handle whatever has
// arrived, up to batch messages at a time, until ctx ends. It never waits
// for a batch to fill: one message is handled as soon as it arrives, many
// are handled together, so both freshness and throughput hold. Failures
// (a deleted consumer during a rebuild, a lost connection) are logged and
// pulling starts again after a second.
func pullBatches(ctx context.Context, cons jetstream.Consumer, batch int, log *slog.Logger, handle func([]jetstream.Msg)) {
	for ctx.Err() == nil {
		err := pull(ctx, cons, batch, handle)
		if ctx.Err() != nil {
			return
		}
		log.Warn("pulling messages failed; starting again", "error", err)
		_ = wait.For(ctx, time.Second)
	}
}

func pull(ctx context.Context, cons jetstream.Consumer, batch int, handle func([]jetstream.Msg)) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(2 * batch))
	if err != nil {
		return err
	}
	defer it.Stop()
	msgs := make([]jetstream.Msg, 0, batch)
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return err
		}
		msgs = append(msgs[:0], m)
		// Take what else is already here, without waiting for more.
		for len(msgs) < batch {
			m, err := it.Next(jetstream.NextMaxWait(time.Millisecond))
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return err
			}
			if err != nil {
				break
			}
			msgs = append(msgs, m)
		}
		handle(msgs)
	}
}
