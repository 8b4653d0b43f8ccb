// Command standalone runs the whole pipeline in one process with an embedded
// NATS server: `go run ./deploy/standalone`. Without UPSTREAM_URL it polls
// the built-in upstream simulator, so a first run shows live data.
//
//	standalone              run the pipeline
//	standalone rebuild      rebuild the view of a running standalone, live
//	standalone replay-dlq   send its dead-lettered incidents back through the pipeline
//	standalone document ID  print one employee's document from its INCIDENT_VIEW
//	standalone new-token    print a new API token and its API_TOKENS_FILE line
//	standalone hash-token   print the API_TOKENS_FILE line of the token on stdin
package main

import (
	"context"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // served only when PPROF_ADDR is set
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/deploy/pipeline"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/projector"
)

func main() {
	rebuild := app.RebuildCommand(func(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error {
		return projector.RebuildLive(ctx, js, os.Stderr, log)
	})
	replay, document := app.ReplayDLQCommand(), app.DocumentCommand(projector.Document)
	commands := append([]app.Command{
		{Name: rebuild.Name, Help: rebuild.Help, Run: toRunning(rebuild.Run)},
		{Name: replay.Name, Help: replay.Help, Run: toRunning(replay.Run)},
		{Name: document.Name, Help: document.Help, Run: toRunning(document.Run)},
	}, app.TokenCommands(
		func() error { return api.NewToken(os.Stdout) },
		func() error { return api.HashToken(os.Stdin, os.Stdout) })...)
	app.Main("standalone",
		func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
			if addr := os.Getenv("PPROF_ADDR"); addr != "" {
				// Profiling for the load harness and operators: loopback only.
				go func() {
					srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second}
					log.Info("pprof listening", "addr", addr, "error", srv.ListenAndServe())
				}()
			}
			return pipeline.Run(ctx, cfg, log, pipeline.Hooks{})
		},
		commands...,
	)
}

// toRunning points a command at the running standalone's embedded server
// (NATS_LISTEN) unless NATS_URL names another.
func toRunning(run app.RunFunc) app.RunFunc {
	return func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
		if cfg.NATSURL == "" {
			cfg.NATSURL = "nats://" + cfg.NATSListen
		}
		return run(ctx, cfg, log)
	}
}
