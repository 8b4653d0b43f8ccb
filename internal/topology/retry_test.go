package topology

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestIsConfigError(t *testing.T) {
	for err, want := range map[error]bool{
		&jetstream.APIError{Code: 400, ErrorCode: 10052, Description: "replicas > 1 not supported in non-clustered mode"}: true,
		fmt.Errorf("ensuring: %w", &jetstream.APIError{Code: 403}):                                                        true,
		nats.ErrPermissionViolation: true,
		&jetstream.APIError{Code: 503, Description: "JetStream system temporarily unavailable"}: false,
		context.DeadlineExceeded:         false,
		nats.ErrNoResponders:             false,
		jetstream.ErrJetStreamNotEnabled: false,
	} {
		if got := IsConfigError(err); got != want {
			t.Errorf("IsConfigError(%v) = %v, want %v", err, got, want)
		}
	}
}

// TestRetryWaitsOutTransientFailures: while a cluster elects its leaders
// (timeouts, no responders), Retry waits; a configuration error ends it.
func TestRetryWaitsOutTransientFailures(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	calls := 0
	err := Retry(context.Background(), log, "ensuring", func(ctx context.Context) error {
		calls++
		switch calls {
		case 1:
			return context.DeadlineExceeded
		case 2:
			return nats.ErrNoResponders
		case 3:
			return &jetstream.APIError{Code: 503}
		}
		return nil
	})
	if err != nil || calls != 4 {
		t.Fatalf("Retry: %v after %d calls, want success after 4", err, calls)
	}
	calls = 0
	bad := &jetstream.APIError{Code: 400, Description: "bad config"}
	err = Retry(context.Background(), log, "ensuring", func(ctx context.Context) error { calls++; return bad })
	if !errors.Is(err, bad) || calls != 1 {
		t.Fatalf("Retry on a configuration error: %v after %d calls, want it at once", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Retry(ctx, log, "ensuring", func(ctx context.Context) error { return nats.ErrNoResponders }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Retry after cancel: %v", err)
	}
}
