package projector

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

// RebuildCommand is `rebuild`: Rebuild with progress on the terminal.
func RebuildCommand() app.Command {
	return app.Command{
		Name: "rebuild",
		Help: "rebuild INCIDENT_VIEW from INCIDENTS_ENRICHED while the pipeline runs",
		Run: func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
			nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "projector-rebuild", Ensure: true}, &telemetry.Health{}, log)
			if err != nil {
				return err
			}
			defer nc.Close()
			err = Rebuild(ctx, nc.JS, RebuildOptions{
				Progress:  app.ProgressPrinter("rebuild"),
				Projector: Options{Logger: log},
			})
			if err == nil {
				fmt.Fprintln(os.Stderr, "rebuild: done; the view is rebuilt from INCIDENTS_ENRICHED")
			}
			return err
		},
	}
}
