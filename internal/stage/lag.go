package stage

import (
	"context"
	"math"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
)

// Lag is a stage's incidents_consumer_pending_messages gauge: what its
// durable consumer has not finished, as the server says (Track), NaN while
// it cannot be read.
type Lag struct{ gauge prometheus.Gauge }

// NewLag registers the lag gauge of consumer on reg.
func NewLag(reg prometheus.Registerer, consumer string) *Lag {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "incidents_consumer_pending_messages",
		Help:        "Messages of the stream the durable consumer has not finished: not yet delivered, or delivered and not acknowledged (its lag); NaN while it cannot be read.",
		ConstLabels: prometheus.Labels{"consumer": consumer},
	})
	reg.MustRegister(g)
	return &Lag{gauge: g}
}

// Track reads the consumer's lag every interval until ctx ends (TrackLag).
func (l *Lag) Track(ctx context.Context, c jetstream.Consumer, every time.Duration, p *Progress) {
	TrackLag(ctx, c, every, p, l.gauge.Set)
}

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
