// Package app is what every binary does around its stages: configuration,
// logging, signals, the NATS connection and topology, the HTTP listener for
// metrics and health, and running stages together until SIGTERM.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

// RunFunc is the body of a binary or of one of its commands.
type RunFunc func(ctx context.Context, cfg config.Config, log *slog.Logger) error

// Command is a subcommand of a binary, e.g. `projector rebuild`.
type Command struct {
	Name string
	Help string
	Run  RunFunc
}

// Main loads the configuration of binary name, sets up logging and signals,
// and calls run, or the command named by the first argument; it exits
// non-zero when that fails.
func Main(name string, run RunFunc, commands ...Command) {
	args := os.Args[1:]
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		found := false
		for _, c := range commands {
			if c.Name == args[0] {
				name, run, args, found = name+" "+c.Name, c.Run, args[1:], true
				break
			}
		}
		if !found {
			fmt.Fprintf(os.Stderr, "%s: unknown command %q; commands:\n", name, args[0])
			for _, c := range commands {
				fmt.Fprintf(os.Stderr, "  %-12s %s\n", c.Name, c.Help)
			}
			os.Exit(2)
		}
	}
	cfg, err := config.Load(name, args, os.Getenv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	log, err := telemetry.NewLogger(os.Stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(2)
	}
	log = log.With("service", name)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		log.Error("exiting", "error", err)
		stop()
		os.Exit(1)
	}
	log.Info("stopped")
}

// NATS is a connection with the topology in place.
type NATS struct {
	Conn *nats.Conn
	JS   jetstream.JetStream
}

// NATSOptions say how a binary uses NATS.
type NATSOptions struct {
	// Name is the client name operators see.
	Name string
	// Embedded, when set, is an embedded server to connect to in-process.
	Embedded nats.InProcessConnProvider
	// Ensure creates or updates the streams and buckets. Writers do; the
	// read-only API waits for them instead.
	Ensure bool
}

// ConnectNATS connects, creates or updates the streams and buckets if asked,
// and adds a readiness check to health.
func ConnectNATS(ctx context.Context, cfg config.Config, o NATSOptions, health *telemetry.Health, log *slog.Logger) (*NATS, error) {
	nc, js, err := natsutil.Connect(ctx, natsutil.ConnectOptions{
		URL: cfg.NATSURL, InProcess: o.Embedded, Name: o.Name,
		User: cfg.NATSUser, Password: cfg.NATSPassword.Reveal(), Creds: cfg.NATSCreds, Logger: log,
		CAFile: cfg.NATSCAFile, CertFile: cfg.NATSTLSCert, KeyFile: cfg.NATSTLSKey,
		OnClosed: func(err error) {
			if ctx.Err() != nil {
				return // stopping: the connection was closed on purpose
			}
			// Every stage of the process depends on it: exit, so that the
			// supervisor (compose, systemd) starts it again, rather than
			// stay up and ready while nothing moves.
			log.Error("the NATS connection closed for good; exiting", "error", err)
			os.Exit(1)
		},
	})
	if err != nil {
		return nil, err
	}
	if o.Ensure {
		if err := topology.Retry(ctx, log, "ensuring streams and buckets", func(ctx context.Context) error {
			return topology.Ensure(ctx, js, cfg.Topology)
		}); err != nil {
			nc.Close()
			return nil, err
		}
	}
	health.Add("nats", func(ctx context.Context) error {
		if !nc.IsConnected() {
			return errors.New("not connected to NATS")
		}
		for _, s := range topology.Streams(cfg.Topology) {
			if _, err := js.Stream(ctx, s.Name); err != nil {
				return fmt.Errorf("stream %s: %w", s.Name, err)
			}
		}
		for _, b := range topology.Buckets(cfg.Topology) {
			if _, err := js.KeyValue(ctx, b.Bucket); err != nil {
				return fmt.Errorf("bucket %s: %w", b.Bucket, err)
			}
		}
		return nil
	})
	return &NATS{Conn: nc, JS: js}, nil
}

// Close drains the connection: in-flight acks and publishes complete.
func (n *NATS) Close() {
	if err := n.Conn.Drain(); err != nil {
		n.Conn.Close()
	}
}

// UpstreamClient builds the upstream client from the configuration.
func UpstreamClient(cfg config.Config, url string, reg prometheus.Registerer, log *slog.Logger) (*upstream.Client, error) {
	var roots *x509.CertPool
	if cfg.UpstreamCAFile != "" {
		pem, err := os.ReadFile(cfg.UpstreamCAFile)
		if err != nil {
			return nil, fmt.Errorf("UPSTREAM_CA_FILE: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, errors.New("UPSTREAM_CA_FILE: no PEM certificate in it")
		}
	}
	return upstream.New(upstream.Options{
		RootCAs:     roots,
		BaseURL:     url,
		User:        cfg.UpstreamUser,
		Password:    cfg.UpstreamPassword.Reveal(),
		Timeout:     cfg.UpstreamTimeout,
		MaxBody:     cfg.UpstreamMaxBody,
		Limits:      upstream.Limits{MaxPages: cfg.PollMaxPages, MaxBytes: cfg.PollMaxBytes, MaxTime: cfg.PollMaxTime},
		MaxInFlight: cfg.UpstreamMaxInFlight,
		Metrics:     upstream.NewMetrics(reg),
		Logger:      log.With("stage", topology.StageProducers),
	})
}

// Task is a long-running part of a binary.
type Task struct {
	Name string
	Run  func(ctx context.Context) error
}

// RunAll runs tasks until ctx ends or one fails; a failure stops the rest.
func RunAll(ctx context.Context, tasks ...Task) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	for _, t := range tasks {
		wg.Go(func() {
			err := t.Run(ctx)
			if err == nil && ctx.Err() == nil {
				err = errors.New("stopped unexpectedly")
			}
			if err != nil && ctx.Err() == nil {
				cancel(fmt.Errorf("%s: %w", t.Name, err))
			}
		})
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// HTTPServer returns a Task serving h on addr; see Serve.
func HTTPServer(addr string, h http.Handler, log *slog.Logger, tlsFiles ...string) Task {
	return Task{Name: "http " + addr, Run: func(ctx context.Context) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", addr, err)
		}
		return Serve(ctx, l, h, log, tlsFiles...)
	}}
}

// Serve serves h on l with the timeouts a public listener needs, and shuts
// down gracefully when ctx ends. With tlsFiles (certificate and key, PEM) it
// serves HTTPS, TLS 1.2 or later.
func Serve(ctx context.Context, l net.Listener, h http.Handler, log *slog.Logger, tlsFiles ...string) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	if len(tlsFiles) == 2 && tlsFiles[0] != "" {
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		go func() { errc <- srv.ServeTLS(l, tlsFiles[0], tlsFiles[1]) }()
	} else {
		go func() { errc <- srv.Serve(l) }()
	}
	log.Info("listening", "addr", l.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serving %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(shutdown)
}

// OpsHandler serves /metrics, /healthz and /readyz for the binaries other
// than the API.
func OpsHandler(g prometheus.Gatherer, health *telemetry.Health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", telemetry.MetricsHandler(g))
	mux.HandleFunc("GET /healthz", health.Live)
	mux.HandleFunc("GET /readyz", health.Readiness)
	return mux
}
