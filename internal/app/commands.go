package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/dlq"
	"github.com/incidentpipe/pipeline/internal/telemetry"
)

// Plain is a command that needs neither configuration nor NATS.
func Plain(name, help string, run func() error) Command {
	return Command{Name: name, Help: help, Run: func(context.Context, config.Config, *slog.Logger) error { return run() }}
}

// WithNATS is a command run over a NATS connection with the streams and
// buckets in place; args are the command-line arguments after the flags.
func WithNATS(name, help string, run func(ctx context.Context, js jetstream.JetStream, args []string, log *slog.Logger) error) Command {
	return Command{Name: name, Help: help, Run: func(ctx context.Context, cfg config.Config, log *slog.Logger) error {
		nc, err := ConnectNATS(ctx, cfg, NATSOptions{Name: name, Ensure: true}, &telemetry.Health{}, log)
		if err != nil {
			return err
		}
		defer nc.Close()
		return run(ctx, nc.JS, cfg.Args, log)
	}}
}

// ReplayDLQCommand is `replay-dlq [subject-filter]`: it sends dead-lettered
// incidents (all, or those matching e.g. incidents.dlq.enricher.misuse) back
// to the stage that refused them.
func ReplayDLQCommand() Command {
	return WithNATS("replay-dlq", "[subject-filter] send dead-lettered incidents back through the pipeline (after a fix)",
		func(ctx context.Context, js jetstream.JetStream, args []string, _ *slog.Logger) error {
			filter := ""
			if len(args) > 0 {
				filter = args[0]
			}
			n, err := dlq.Replay(ctx, js, dlq.ReplayOptions{Filter: filter, Progress: func(n int) {
				if n%100 == 0 {
					fmt.Fprintf(os.Stderr, "replay-dlq: %d replayed\n", n)
				}
			}, Refused: func(seq uint64, why string) {
				fmt.Fprintf(os.Stderr, "replay-dlq: dead letter %d left in the DLQ: %s\n", seq, why)
			}})
			fmt.Fprintf(os.Stderr, "replay-dlq: %d dead-lettered incidents sent back\n", n)
			return err
		})
}

// RebuildCommand is `rebuild`, running rebuild (the projector's).
func RebuildCommand(rebuild func(ctx context.Context, js jetstream.JetStream, log *slog.Logger) error) Command {
	return WithNATS("rebuild", "rebuild INCIDENT_VIEW from INCIDENTS_ENRICHED while the pipeline runs",
		func(ctx context.Context, js jetstream.JetStream, _ []string, log *slog.Logger) error {
			return rebuild(ctx, js, log)
		})
}

// TokenCommands are `new-token` and `hash-token`, over the API's newToken
// and hashToken.
func TokenCommands(newToken func() error, hashToken func() error) []Command {
	return []Command{
		Plain("new-token", "print a new random API token and its API_TOKENS_FILE line", newToken),
		Plain("hash-token", "read a token on standard input and print its API_TOKENS_FILE line", hashToken),
	}
}

// DocumentCommand is `document <employee_id>`: it prints one employee's
// document as GET /incidents/{id} shows it, read from INCIDENT_VIEW by read
// (the projector's, which knows how the view stores it).
func DocumentCommand(read func(ctx context.Context, js jetstream.JetStream, employee string) ([]byte, error)) Command {
	return WithNATS("document", "<employee_id> print one employee's document from INCIDENT_VIEW",
		func(ctx context.Context, js jetstream.JetStream, args []string, _ *slog.Logger) error {
			if len(args) != 1 {
				return errors.New("document: want one employee id")
			}
			doc, err := read(ctx, js, args[0])
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(os.Stdout, "%s\n", doc)
			return err
		})
}
