// Package pipeline runs the whole pipeline in one process: an embedded NATS
// server with JetStream (unless NATS_URL names one), the built-in upstream
// simulator (unless UPSTREAM_URL names an upstream), producers, enricher,
// projector and API, all the same packages the separate binaries run.
package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/api"
	"github.com/incidentpipe/pipeline/enricher"
	"github.com/incidentpipe/pipeline/internal/app"
	"github.com/incidentpipe/pipeline/internal/config"
	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/telemetry"
	"github.com/incidentpipe/pipeline/producers"
	"github.com/incidentpipe/pipeline/projector"
)

// Hooks let a caller (a test, the load harness) see inside a running pipeline.
type Hooks struct {
	// APIListener, when set, serves the API instead of listening on API_ADDR.
	APIListener net.Listener
	// Started is called once the API is about to serve, with its address and
	// the NATS server's client URL.
	Started func(apiAddr, natsURL string)
}

// Run runs the pipeline until ctx ends.
func Run(ctx context.Context, cfg config.Config, log *slog.Logger, hooks Hooks) error {
	var ns *server.Server
	// embeddedConn stays a nil interface without an embedded server: a nil
	// *server.Server inside it would make the client connect in-process to
	// nothing (and panic).
	var embeddedConn nats.InProcessConnProvider
	if cfg.NATSURL == "" {
		if err := os.MkdirAll(cfg.DataDir, 0o750); err != nil {
			return fmt.Errorf("creating DATA_DIR: %w", err)
		}
		var err error
		ns, err = embedded.Start(embedded.Options{Listen: cfg.NATSListen, StoreDir: cfg.DataDir,
			SyncAlways: cfg.NATSSync.Always, SyncInterval: cfg.NATSSync.Interval})
		if err != nil {
			return err
		}
		embeddedConn = ns
		defer func() {
			ns.Shutdown()
			ns.WaitForShutdown()
		}()
		log.Info("embedded NATS server started", "listen", ns.ClientURL(), "data_dir", cfg.DataDir, "sync", cfg.NATSSync.String())
	}

	health := &telemetry.Health{}
	nc, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "standalone", Embedded: embeddedConn, Ensure: true}, health, log)
	if err != nil {
		return err
	}
	defer nc.Close()
	// A connection per stage, as separate processes would have: the server
	// handles each connection's traffic in order, so one shared connection
	// would make every stage wait for the others.
	conns := map[string]*app.NATS{}
	for _, stage := range []string{"producers", "enricher", "projector"} {
		c, err := app.ConnectNATS(ctx, cfg, app.NATSOptions{Name: "standalone-" + stage, Embedded: embeddedConn}, &telemetry.Health{}, log)
		if err != nil {
			return err
		}
		defer c.Close()
		conns[stage] = c
	}

	// Each stage on a registry of its own, all served on API_ADDR.
	process := telemetry.NewRegistry()
	regs := map[string]*prometheus.Registry{}
	for _, s := range []string{"producers", "enricher", "projector", "api"} {
		regs[s] = prometheus.NewRegistry()
	}
	gatherers := prometheus.Gatherers{process, regs["producers"], regs["enricher"], regs["projector"], regs["api"]}

	tasks := []app.Task{}
	upstreamURL := cfg.UpstreamURL
	if upstreamURL == "" {
		url, user, password, task, err := startSimulator(log)
		if err != nil {
			return err
		}
		upstreamURL, cfg.UpstreamUser, cfg.UpstreamPassword = url, user, config.Secret(password)
		tasks = append(tasks, task)
		log.Info("no UPSTREAM_URL: polling the built-in upstream simulator", "url", url)
	}
	client, err := app.UpstreamClient(cfg, upstreamURL, regs["producers"], log)
	if err != nil {
		return err
	}
	prod, err := producers.New(producers.Options{Upstream: client, JS: conns["producers"].JS, Interval: cfg.PollInterval, Logger: log, Registerer: regs["producers"]})
	if err != nil {
		return err
	}
	enr, err := enricher.New(enricher.Options{JS: conns["enricher"].JS, Logger: log, Registerer: regs["enricher"]})
	if err != nil {
		return err
	}
	proj, err := projector.New(projector.Options{JS: conns["projector"].JS, Logger: log, Registerer: regs["projector"]})
	if err != nil {
		return err
	}
	health.Add("producers", prod.Ready)
	health.AddAdvisory("upstream", prod.Advancing)
	health.Add("enricher", enr.Ready)
	health.Add("projector", proj.Ready)
	a, err := api.New(api.Options{JS: nc.JS, Metrics: telemetry.MetricsHandler(gatherers), Health: health, Logger: log, Registerer: regs["api"],
		TokensFile: cfg.APITokensFile, MetricsAuth: cfg.MetricsAuth, RateLimit: cfg.APIRateLimit,
		RiskHalfLife: cfg.RiskHalfLife, RiskCursorBytes: cfg.RiskCursorBytes,
		EventsMaxStreams: cfg.EventsMaxStreams, EventsMaxPerClient: cfg.EventsMaxPerClient, EventsMaxLifetime: cfg.EventsMaxLifetime,
		Stuck: prod.Stuck})
	if err != nil {
		return err
	}

	l := hooks.APIListener
	if l == nil {
		if l, err = net.Listen("tcp", cfg.APIAddr); err != nil {
			return fmt.Errorf("listening on API_ADDR %s: %w", cfg.APIAddr, err)
		}
	}
	scheme := "http"
	if cfg.APITLSCert != "" {
		scheme = "https"
	}
	log.Info("analyst console", "url", scheme+"://"+consoleHost(l.Addr().String())+"/")
	if hooks.Started != nil {
		natsURL := cfg.NATSURL
		if ns != nil {
			natsURL = ns.ClientURL()
		}
		hooks.Started(l.Addr().String(), natsURL)
	}
	tasks = append(tasks,
		app.Task{Name: "api", Run: a.Run},
		app.Task{Name: "http", Run: func(ctx context.Context) error {
			return app.Serve(ctx, l, a.Handler(), log, cfg.APITLSCert, cfg.APITLSKey)
		}},
		app.Task{Name: "sighup", Run: a.ReloadOnHangup},
		app.Task{Name: "projector", Run: proj.Run},
		app.Task{Name: "enricher", Run: enr.Run},
		app.Task{Name: "producers", Run: prod.Run},
	)
	return app.RunAll(ctx, tasks...)
}

// startSimulator serves generated upstream data on a loopback port with
// throw-away credentials.
func startSimulator(log *slog.Logger) (url, user, password string, task app.Task, err error) {
	secret := make([]byte, 16)
	if _, err := rand.Read(secret); err != nil {
		return "", "", "", app.Task{}, err
	}
	user, password = "standalone", hex.EncodeToString(secret)
	srv := simulator.NewServer(user, password, simulator.Faults{}, 1)
	simulator.NewGenerator(srv, simulator.GeneratorOptions{Seed: 1})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", "", "", app.Task{}, fmt.Errorf("starting the upstream simulator: %w", err)
	}
	task = app.Task{Name: "simulator", Run: func(ctx context.Context) error {
		err := app.Serve(ctx, l, srv, log.With("stage", "simulator"))
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	}}
	return "http://" + l.Addr().String(), user, password, task, nil
}

// consoleHost is addr as a browser reaches it: a wildcard listener on
// localhost.
func consoleHost(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() || ip.IsLoopback() {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}
