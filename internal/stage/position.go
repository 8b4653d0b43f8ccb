package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// Realign recreates the durable consumer cfg of stream when it is ahead of
// the stream: its delivered sequence past the stream's last. A power loss
// of every node of a cluster can leave that (a clustered stream's data
// files relax sync_interval always, its raft log and the consumer's state
// need not agree once restored): such a consumer never delivers the
// messages the stream then stores at the sequences it believes done, and
// its stage would wait for ever while saying its lag is 0. The new consumer
// delivers the stream again from its start; every stage's writes are
// idempotent (message ids, a view that merges by incident). It reports
// whether it recreated the consumer.
func Realign(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, log *slog.Logger) (bool, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return false, fmt.Errorf("reading %s: %w", stream, err)
	}
	c, err := js.Consumer(ctx, stream, cfg.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading consumer %s: %w", cfg.Durable, err)
	}
	last := s.CachedInfo().State.LastSeq
	delivered := c.CachedInfo().Delivered.Stream
	if delivered <= last {
		return false, nil
	}
	log.Error("consumer ahead of its stream: it would never deliver what the stream stores next; recreating it to deliver the stream again",
		"stream", stream, "consumer", cfg.Durable, "delivered", delivered, "stream_last", last)
	if err := js.DeleteConsumer(ctx, stream, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, fmt.Errorf("deleting consumer %s: %w", cfg.Durable, err)
	}
	if _, err := topology.EnsureConsumer(ctx, js, stream, cfg); err != nil {
		return false, err
	}
	return true, nil
}

// KeepAligned runs Realign now, before the stage consumes, then every
// interval in the background until ctx ends: the loss can also happen while
// the stage runs (its servers lose power and come back).
func KeepAligned(ctx context.Context, js jetstream.JetStream, stream string, cfg jetstream.ConsumerConfig, every time.Duration, log *slog.Logger) {
	check := func(level slog.Level) {
		actx, cancel := context.WithTimeout(ctx, every)
		defer cancel()
		if _, err := Realign(actx, js, stream, cfg, log); err != nil && ctx.Err() == nil {
			log.Log(ctx, level, "checking the consumer's position failed; checking again in a while", "stream", stream, "consumer", cfg.Durable, "error", err)
		}
	}
	check(slog.LevelWarn)
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				check(slog.LevelDebug)
			}
		}
	}()
}
