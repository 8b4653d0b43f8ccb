package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

// ReplayDLQCommand is `replay-dlq [subject-filter]`: it sends dead-lettered
// incidents (all, or those matching e.g. incidents.dlq.enricher.misuse) back
// to the stage that refused them.
func ReplayDLQCommand() Command {
	return Command{
		Name: "replay-dlq",
		Help: "[subject-filter] send dead-lettered incidents back through the pipeline (after a fix)",
		Run: func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
			filter := ""
			if len(cfg.Args) > 0 {
				filter = cfg.Args[0]
			}
			nc, err := ConnectNATS(ctx, cfg, NATSOptions{Name: "replay-dlq"}, &telemetry.Health{}, log)
			if err != nil {
				return err
			}
			defer nc.Close()
			n, err := dlq.Replay(ctx, nc.JS, dlq.ReplayOptions{Filter: filter, Progress: func(n int) {
				if n%100 == 0 {
					fmt.Fprintf(os.Stderr, "replay-dlq: %d replayed\n", n)
				}
			}})
			fmt.Fprintf(os.Stderr, "replay-dlq: %d dead-lettered incidents sent back\n", n)
			return err
		},
	}
}

// ProgressPrinter prints "what: replayed N of M messages (P%)" on stderr,
// at most once a second and once more at the end.
func ProgressPrinter(what string) func(done, total uint64) {
	var last time.Time
	return func(done, total uint64) {
		if time.Since(last) < time.Second && done < total {
			return
		}
		last = time.Now()
		pct := 100.0
		if total > 0 {
			pct = float64(done) * 100 / float64(total)
		}
		fmt.Fprintf(os.Stderr, "%s: replayed %d of %d messages (%.0f%%)\n", what, done, total, pct)
	}
}
