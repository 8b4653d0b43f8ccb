package stage

import (
	"context"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TrackLag reports, every interval until ctx ends, how many messages the
// durable consumer has not finished: not yet delivered plus delivered and
// not yet acknowledged, as the server says. When the server cannot be
// asked it reports NaN, never a stale count (a lag of 0 read over a dead
// connection would hide a stalled stage); p, when set, learns both, so that
// readiness fails while work waits and none is done.
func TrackLag(ctx context.Context, c jetstream.Consumer, every time.Duration, p *Progress, report func(lag float64)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		ictx, cancel := context.WithTimeout(ctx, max(every, probeTimeout))
		info, err := c.Info(ictx)
		cancel()
		switch {
		case ctx.Err() != nil:
		case err != nil:
			report(math.NaN())
			p.lagUnknown(err)
		default:
			n := info.NumPending + uint64(info.NumAckPending)
			report(float64(n))
			p.lag(n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
