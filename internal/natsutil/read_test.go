package natsutil_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// TestReadAllReturnsAtTheEnd: reading a stream smaller than a batch returns
// as soon as the last message is read, not after a pull's expiry (2 s per
// call: a restarted producer read 7 types and sat 14 s before its first
// poll, longer than an upstream's window may list an incident).
func TestReadAllReturnsAtTheEnd(t *testing.T) {
	s := testkit.JetStream(t)
	_, js := testkit.Connect(t, s)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := js.Publish(ctx, fmt.Sprintf("s.%d", i%2), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		filter string
		want   int
	}{{"s.>", 3}, {"s.0", 2}, {"s.9", 0}} {
		start := time.Now()
		n, err := natsutil.ReadAll(ctx, js, "S", natsutil.ReadOptions{Filter: tc.filter}, func(jetstream.Msg) error { return nil })
		if err != nil || n != tc.want {
			t.Fatalf("ReadAll %s: %d messages, %v; want %d", tc.filter, n, err, tc.want)
		}
		// Milliseconds when it stops at the end; a read that waits out the
		// pull's expiry takes 2 s, so the bound is far from both.
		if took := time.Since(start); took > time.Second {
			t.Fatalf("ReadAll %s took %v: it waited for messages past the end", tc.filter, took)
		}
	}
}
