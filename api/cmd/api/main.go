// Command api serves GET /incidents from INCIDENT_VIEW on API_ADDR, with
// /metrics, /healthz and /readyz on the same address.
//
//	api              serve
//	api new-token    print a new token and its API_TOKENS_FILE line
//	api hash-token   print the API_TOKENS_FILE line of the token on stdin
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

func main() { app.Main("api", run, tokenCommands()...) }

func tokenCommands() []app.Command {
	return app.TokenCommands(
		func() error { return api.NewToken(os.Stdout) },
		func() error { return api.HashToken(os.Stdin, os.Stdout) })
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	reg := telemetry.NewRegistry()
	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "api", Ensure: false}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	a, err := api.New(api.Options{JS: nc.JS, Metrics: telemetry.MetricsHandler(reg), Health: health, Logger: log, Registerer: reg,
		TokensFile: cfg.APITokensFile, MetricsAuth: cfg.MetricsAuth, RateLimit: cfg.APIRateLimit,
		RiskHalfLife: cfg.RiskHalfLife, RiskCursorBytes: cfg.RiskCursorBytes,
		EventsMaxStreams: cfg.EventsMaxStreams, EventsMaxPerClient: cfg.EventsMaxPerClient, EventsMaxLifetime: cfg.EventsMaxLifetime})
	if err != nil {
		return err
	}
	return app.RunAll(ctx,
		app.Task{Name: "api", Run: a.Run},
		app.Task{Name: "sighup", Run: a.ReloadOnHangup},
		app.HTTPServer(cfg.APIAddr, a.Handler(), log, cfg.APITLSCert, cfg.APITLSKey),
	)
}
