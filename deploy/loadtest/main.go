// Command loadtest measures the standalone end to end on generated data:
//
//	go run ./deploy/loadtest -incidents 100000 -employees 10000
//
// It serves N incidents over M employees from the upstream simulator on
// loopback, runs the standalone binary as a separate process, and measures
// ingest throughput (incidents per second until the view holds them all),
// freshness (upstream to GET /incidents/{id}, p50/p99), API throughput and
// latency for the full document and one employee (wrk when installed, else a
// Go client) beside a plain net/http server holding the same bytes, the
// one-employee p99 while ingesting and idle, peak RSS, and the time
// `standalone rebuild` takes; beside them, JetStream's async publish rate
// on an embedded server in the same run, the reference for ingest. It prints a
// markdown table.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"
)

func main() {
	var o options
	flag.IntVar(&o.incidents, "incidents", 100000, "incidents to ingest")
	flag.IntVar(&o.employees, "employees", 10000, "employees they are spread over")
	flag.DurationVar(&o.poll, "poll-interval", time.Second, "POLL_INTERVAL of the standalone")
	flag.IntVar(&o.fresh, "freshness-samples", 100, "incidents added one by one to measure freshness")
	flag.DurationVar(&o.apiDuration, "api-duration", 10*time.Second, "duration of each API load run")
	flag.IntVar(&o.connections, "connections", 32, "concurrent connections of API load runs")
	flag.StringVar(&o.standalone, "standalone", "", "standalone binary (default: built from ./deploy/standalone)")
	flag.BoolVar(&o.noWrk, "no-wrk", false, "use the Go load client even when wrk is installed")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up after this long")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	rep, err := run(ctx, o, os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadtest:", err)
		os.Exit(1)
	}
	fmt.Print(rep.Markdown())
}
