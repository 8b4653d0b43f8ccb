// Command simulator serves a stand-in for the upstream incident API: data
// generated over time, or a capture directory (-dir), with optional latency,
// failures and paging.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/incidentpipe/pipeline/internal/simulator"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "simulator:", err)
		os.Exit(1)
	}
}

func run() error {
	addr := flag.String("addr", envOr("SIMULATOR_ADDR", "127.0.0.1:8000"), "listen address ($SIMULATOR_ADDR)")
	dir := flag.String("dir", "", "serve this capture directory instead of generated data")
	user := flag.String("user", envOr("UPSTREAM_USER", "user"), "basic-auth user ($UPSTREAM_USER)")
	password := flag.String("password", envOr("UPSTREAM_PASSWORD", fileOr("UPSTREAM_PASSWORD_FILE", "password")), "basic-auth password ($UPSTREAM_PASSWORD or $UPSTREAM_PASSWORD_FILE)")
	latency := flag.Duration("latency", 0, "mean response latency")
	failRate := flag.Float64("fail-rate", 0, "share of requests that fail (502, 500, cut-off body)")
	pageSize := flag.Int("page-size", 0, "page incident lists with this many per page")
	window := flag.Duration("window", 0, "list each incident only this long after it appears (0: for ever)")
	employees := flag.Int("employees", 2000, "generated employees")
	initial := flag.Int("initial", 50, "generated incidents of each type at start")
	every := flag.Duration("new-every", 2*time.Second, "one new incident per interval (negative: none)")
	seed := flag.Uint64("seed", 1, "random seed")
	flag.Parse()

	srv := simulator.NewServer(*user, *password, simulator.Faults{Latency: *latency, FailRate: *failRate, PageSize: *pageSize, Window: *window}, *seed)
	if *dir != "" {
		if err := srv.LoadDir(*dir); err != nil {
			return err
		}
	} else {
		simulator.NewGenerator(srv, simulator.GeneratorOptions{Employees: *employees, InitialPerType: *initial, NewEvery: *every, Seed: *seed})
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hs := &http.Server{Addr: *addr, Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(shutdown)
	}()
	slog.Info("upstream simulator listening", "addr", *addr, "capture", *dir)
	if err := hs.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// fileOr reads the file named by $name, or returns def.
func fileOr(name, def string) string {
	if path := os.Getenv(name); path != "" {
		if b, err := os.ReadFile(path); err == nil {
			return strings.TrimRight(string(b), "\r\n")
		}
	}
	return def
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
