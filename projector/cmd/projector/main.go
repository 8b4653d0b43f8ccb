// Command projector folds enriched incidents into INCIDENT_VIEW. Several
// copies may run against one NATS; they share the durable consumer "projector".
//
//	projector              run the stage
//	projector rebuild      rebuild the view from INCIDENTS_ENRICHED, live
//	projector document ID  print one employee's document from INCIDENT_VIEW
//	projector replay-dlq   send dead-lettered incidents back through the pipeline
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/projector"
)

func main() {
	app.Main("projector", run, rebuildCommand(), app.DocumentCommand(projector.Document), app.ReplayDLQCommand())
}

func rebuildCommand() app.Command {
	return app.RebuildCommand(func(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
		return projector.RebuildLive(ctx, js, os.Stderr, log)
	})
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	reg := telemetry.NewRegistry()
	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "projector", Ensure: true}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	p, err := projector.New(projector.Options{JS: nc.JS, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	health.Add("projector", p.Ready)
	return app.RunAll(ctx,
		app.Task{Name: "projector", Run: p.Run},
		app.HTTPServer(cfg.MetricsAddr, app.OpsHandler(reg, health), log),
	)
}
