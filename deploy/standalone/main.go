// Command standalone runs the whole pipeline in one process with an embedded
// NATS server: `go run ./deploy/standalone`. Without UPSTREAM_URL it polls
// the built-in upstream simulator, so a first run shows live data.
package main

import (
	"context"
	"log/slog"

	"github.com/incidentpipe/pipeline/deploy/pipeline"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
)

func main() {
	app.Main("standalone", func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
		return pipeline.Run(ctx, cfg, log, pipeline.Hooks{})
	})
}
