package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/embedded"
)

// jetStreamAsyncRate measures what this machine's JetStream takes: async
// publishes of 200-byte messages to a file-backed R1 stream on an embedded
// server, acknowledged in windows of 500 (as `nats bench js pub async`
// does with its default batch). Ingest is judged against it.
func jetStreamAsyncRate(ctx context.Context, messages int) (float64, error) {
	dir, err := os.MkdirTemp("", "loadtest-js")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	srv, err := embedded.Start(embedded.Options{Listen: "127.0.0.1:-1", StoreDir: dir})
	if err != nil {
		return 0, err
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return 0, fmt.Errorf("reference: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return 0, fmt.Errorf("reference: %w", err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH", Subjects: []string{"bench"}, Storage: jetstream.FileStorage}); err != nil {
		return 0, fmt.Errorf("reference: creating the stream: %w", err)
	}
	payload := make([]byte, 200)
	const window = 500
	start := time.Now()
	for sent := 0; sent < messages; sent += window {
		for range min(window, messages-sent) {
			if _, err := js.PublishAsync("bench", payload); err != nil {
				return 0, fmt.Errorf("reference: publishing: %w", err)
			}
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(30 * time.Second):
			return 0, fmt.Errorf("reference: acknowledgements stalled after %d messages", sent)
		}
	}
	return float64(messages) / time.Since(start).Seconds(), nil
}
