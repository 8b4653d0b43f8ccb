package natsutil_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// TestOnClosedWhenTheServerEndsTheConnection: a connection the server ends
// with an error nats.go does not retry (here a subject over the control
// line limit) is closed for good and OnClosed says so; an in-process one
// either is (OnClosed) or stays usable, never dead and silent. Its owner's
// own Close does not call OnClosed.
func TestOnClosedWhenTheServerEndsTheConnection(t *testing.T) {
	for _, inProcess := range []bool{false, true} {
		s := testkit.JetStream(t)
		closed := make(chan error, 1)
		o := natsutil.ConnectOptions{URL: s.ClientURL(), OnClosed: func(err error) { closed <- err }}
		if inProcess {
			o.InProcess = s
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		nc, _, err := natsutil.Connect(ctx, o)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		_ = nc.Publish(strings.Repeat("a", 10_000), nil)
		_ = nc.Flush()
		select {
		case err := <-closed:
			if err == nil {
				t.Errorf("in-process %v: OnClosed without the error", inProcess)
			}
		case <-time.After(3 * time.Second):
			// Not closed: then it must still work.
			if !inProcess {
				t.Fatalf("OnClosed not called; connection status %v", nc.Status())
			}
			if _, err := nc.Request("$JS.API.INFO", nil, 5*time.Second); err != nil {
				t.Fatalf("in-process: neither closed nor usable: %v (status %v)", err, nc.Status())
			}
		}

		nc2, _, err := natsutil.Connect(context.Background(), natsutil.ConnectOptions{URL: s.ClientURL(),
			OnClosed: func(err error) { closed <- err }})
		if err != nil {
			t.Fatal(err)
		}
		nc2.Close()
		select {
		case err := <-closed:
			t.Errorf("in-process %v: OnClosed called at Close: %v", inProcess, err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}
