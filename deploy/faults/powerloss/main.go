// Command powerloss is the long power-loss run: it cycles the standalone
// and the separate binaries (with the compose configuration's nats-server)
// through every fault of the harness and every lazyfs mode, and prints a
// table of what each cycle showed and what it lost.
//
//	go run ./deploy/faults/powerloss -cycles 100             # the defaults (NATS_SYNC=always)
//	go run ./deploy/faults/powerloss -cycles 21 -sync 2m     # nats-server's own policy, for comparison
//
// It needs root and /dev/fuse. It exits 1 when a counted cycle lost,
// duplicated or moved a shown incident, 2 when the harness itself failed.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/incidentpipe/pipeline/deploy/faults"
	"github.com/incidentpipe/pipeline/deploy/faults/lazyfs"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "powerloss:", err)
	}
	os.Exit(code)
}

func run() (int, error) {
	cycles := flag.Int("cycles", 100, "power-loss cycles to run")
	sync := flag.String("sync", "", "NATS_SYNC of the standalone and sync_interval of nats-server (empty: their default, always)")
	seed := flag.Uint64("seed", 1, "first cycle's seed")
	flag.Parse()
	if err := lazyfs.Available(); err != nil {
		return 2, err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root, err := testkit.WorkspaceRoot()
	if err != nil {
		return 2, err
	}
	scratch, err := os.MkdirTemp("", "powerloss-")
	if err != nil {
		return 2, err
	}
	defer os.RemoveAll(scratch)
	bins := faults.Binaries{Dir: filepath.Join(scratch, "bin"), NATSConfig: filepath.Join(root, "deploy", "nats", "nats.conf")}
	bins.Standalone = filepath.Join(bins.Dir, "standalone")
	args := []string{"build", "-o", bins.Dir + "/"}
	for _, pkg := range faults.Packages {
		args = append(args, pkg)
	}
	build := exec.Command("go", args...)
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return 2, fmt.Errorf("building the binaries: %w", err)
	}
	capture := filepath.Join(root, "testdata", "upstream-2021-08-25")

	fmt.Println(faults.Header)
	all, modes := faults.AllFaults(), []lazyfs.Mode{lazyfs.DropUnsynced, lazyfs.RenameKeepsData, lazyfs.RandomWriteBack}
	topologies := []faults.Topology{faults.Standalone, faults.Separate}
	var sum struct{ cycles, counted, shown, lost, dup, moved, invalid, failed int }
	start := time.Now()
	for i := range *cycles {
		if ctx.Err() != nil {
			break
		}
		dir := filepath.Join(scratch, fmt.Sprint("cycle-", i))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return 2, err
		}
		// Every fault with every mode on both topologies, in turn.
		o := faults.CycleOptions{
			Topology: topologies[i%len(topologies)], Fault: all[(i/len(topologies))%len(all)],
			Mode: modes[(i/(len(topologies)*len(all)))%len(modes)], Sync: *sync,
			Binaries: bins, Capture: capture, Dir: dir, Seed: *seed + uint64(i),
		}
		res, err := faults.RunCycle(ctx, o)
		sum.cycles++
		if err != nil {
			sum.failed++
			fmt.Printf("| %s | %s | %s | %s | harness error: %v |\n", o.Topology, o.Fault, o.Mode, o.Sync, oneLine(err))
			continue
		}
		fmt.Println(faults.Row(res))
		if res.Counted() {
			sum.counted++
			sum.shown += res.Report.Shown
			sum.lost += len(res.Report.Lost)
			sum.dup += len(res.Report.Duplicated)
			sum.moved += len(res.Report.Moved)
			sum.invalid += len(res.Report.Invalid)
		}
		_ = os.RemoveAll(dir)
	}
	fmt.Printf("\n%d cycles (%d counted, %d harness errors) in %s: %d incidents shown before a power loss, %d lost, %d duplicated, %d moved, %d invalid\n",
		sum.cycles, sum.counted, sum.failed, time.Since(start).Round(time.Second), sum.shown, sum.lost, sum.dup, sum.moved, sum.invalid)
	switch {
	case sum.lost+sum.dup+sum.moved+sum.invalid > 0:
		return 1, nil
	case sum.failed > 0:
		return 2, errors.New("some cycles failed to run")
	}
	return 0, nil
}

func oneLine(err error) string {
	s := err.Error()
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}
