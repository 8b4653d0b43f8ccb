package natsutil

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ReadOptions select what ReadAll reads.
type ReadOptions struct {
	Filter      string // subject filter
	HeadersOnly bool
	Batch       int // messages per fetch; default 500
}

// ReadAll reads every message of stream that matches the filter and is
// there when it starts, in order, with an ordered (ephemeral) consumer.
// It returns how many it read.
func ReadAll(ctx context.Context, js jetstream.JetStream, stream string, o ReadOptions, fn func(jetstream.Msg) error) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", stream, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(o.Filter))
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", stream, err)
	}
	var total uint64
	for _, n := range info.State.Subjects {
		total += n
	}
	if total == 0 {
		return 0, nil
	}
	if o.Batch <= 0 {
		o.Batch = 500
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{o.Filter},
		HeadersOnly:    o.HeadersOnly,
	})
	if err != nil {
		return 0, fmt.Errorf("reading %s: %w", stream, err)
	}
	read := 0
	for {
		if err := ctx.Err(); err != nil {
			return read, err
		}
		// Never ask for more than is there: a pull for more waits out its
		// whole expiry for messages that will not come (2 s per call).
		want := min(o.Batch, int(total)-read)
		if want <= 0 {
			return read, nil
		}
		batch, err := cons.Fetch(want, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return read, fmt.Errorf("reading %s: %w", stream, err)
		}
		last, got := false, 0
		for msg := range batch.Messages() {
			read++
			got++
			if err := fn(msg); err != nil {
				return read, err
			}
			if md, err := msg.Metadata(); err == nil && md.NumPending == 0 {
				last = true
			}
		}
		if err := batch.Error(); err != nil && ctx.Err() == nil {
			return read, fmt.Errorf("reading %s: %w", stream, err)
		}
		if last || got == 0 { // nothing more arrived within the wait: the end
			return read, nil
		}
	}
}
