// Command api serves GET /incidents from INCIDENT_VIEW on API_ADDR, with
// /metrics, /healthz and /readyz on the same address.
package main

import (
	"context"
	"log/slog"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

func main() { app.Main("api", run) }

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	reg := telemetry.NewRegistry()
	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "api", Ensure: false}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	a, err := api.New(api.Options{JS: nc.JS, Metrics: telemetry.MetricsHandler(reg), Health: health, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	return app.RunAll(ctx,
		app.Task{Name: "api", Run: a.Run},
		app.HTTPServer(cfg.APIAddr, a.Handler(), log),
	)
}
