package stage

import (
	"context"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TrackLag reports, every interval until ctx ends, how many messages the
// durable consumer has not finished: not yet delivered plus delivered and
// not yet acknowledged.
func TrackLag(ctx context.Context, c jetstream.Consumer, every time.Duration, report func(lag uint64)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if info, err := c.Info(ctx); err == nil {
			report(info.NumPending + uint64(info.NumAckPending))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
