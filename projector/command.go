package projector

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// RebuildLive runs Rebuild with its progress written to w (a terminal),
// at most once a second and once more at the end.
func RebuildLive(ctx context.Context, js jetstream.JetStream, w io.Writer, log *slog.Logger) error {
	var last time.Time
	progress := func(done, total uint64) {
		if time.Since(last) < time.Second && done < total {
			return
		}
		last = time.Now()
		pct := 100.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		fmt.Fprintf(w, "rebuild: replayed %d of %d messages (%.0f%%)\n", done, total, pct)
	}
	err := Rebuild(ctx, js, RebuildOptions{Progress: progress, Projector: Options{Logger: log}})
	if err == nil {
		fmt.Fprintln(w, "rebuild: done; the view is rebuilt from INCIDENTS_ENRICHED")
	}
	return err
}
