// Command producers polls the upstream incident API into INCIDENTS_RAW and
// IDENTITIES. Several copies may run against one NATS.
package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/producers"
)

func main() { app.Main("producers", run) }

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	if cfg.UpstreamURL == "" {
		return errors.New("UPSTREAM_URL is required")
	}
	reg := telemetry.NewRegistry()
	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "producers", Ensure: true}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	client, err := app.UpstreamClient(cfg, cfg.UpstreamURL, reg, log)
	if err != nil {
		return err
	}
	p, err := producers.New(producers.Options{Upstream: client, JS: nc.JS, Interval: cfg.PollInterval, Logger: log, Registerer: reg})
	if err != nil {
		return err
	}
	health.Add("producers", p.Ready)
	health.AddAdvisory("upstream", p.Advancing)
	return app.RunAll(ctx,
		app.Task{Name: "producers", Run: p.Run},
		app.HTTPServer(cfg.MetricsAddr, app.OpsHandler(reg, health), log),
	)
}
