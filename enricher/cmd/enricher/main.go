// Command enricher attributes raw incidents to employees. Several copies may
// run against one NATS; they share the durable consumer "enricher".
package main

import (
	"context"
	"log/slog"

	"github.com/incidentpipe/pipeline/enricher"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

func main() { app.Main("enricher", run, app.ReplayDLQCommand()) }

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	reg := telemetry.NewRegistry()
	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "enricher", Ensure: true}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	e, err := enricher.New(enricher.Options{JS: nc.JS, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	health.Add("enricher", e.Ready)
	return app.RunAll(ctx,
		app.Task{Name: "enricher", Run: e.Run},
		app.HTTPServer(cfg.MetricsAddr, app.OpsHandler(reg, health), log),
	)
}
