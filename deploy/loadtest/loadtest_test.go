package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestSmoke runs the harness end to end on a small data set: it must ingest
// everything, measure every figure and print the table.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the standalone")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := run(ctx, options{incidents: 700, employees: 100, poll: time.Second, fresh: 5,
		apiDuration: time.Second, connections: 4, noWrk: true, timeout: 3 * time.Minute}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if rep.docBytes == 0 || rep.full.rps == 0 || rep.fullGz.rps == 0 || rep.one.rps == 0 || rep.freshP99 == 0 || rep.peakRSS == 0 || rep.jsRate == 0 || rep.rebuild == 0 {
		t.Fatalf("missing figures: %+v", rep)
	}
	if rep.full.errors+rep.fullGz.errors+rep.one.errors > 0 {
		t.Errorf("API errors under load: %+v", rep)
	}
	md := rep.Markdown()
	if !strings.Contains(md, "| GET /incidents |") || !strings.Contains(md, "incidents/s") {
		t.Errorf("table:\n%s", md)
	}
}
