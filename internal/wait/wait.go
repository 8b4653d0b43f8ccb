// Package wait pauses a goroutine for a while, unless its context ends first.
package wait

import (
	"context"
	"time"
)

// For waits d, or less if ctx ends first (then it returns ctx's error).
func For(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
