package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/incidentpipe/pipeline/deploy/faults/lazyfs"
)

// Fault is when in a cycle the power is cut.
type Fault string

// The faults a power-loss cycle can inject.
const (
	// AtRandom cuts at a random moment while incidents are ingested.
	AtRandom Fault = "random-during-ingest"
	// RightAfterShown cuts right after the first GET /incidents that shows
	// an incident not shown before: nothing may be served before it is
	// durable.
	RightAfterShown Fault = "right-after-shown"
	// AfterIngest cuts once everything listed was shown and the pipeline
	// is idle.
	AfterIngest Fault = "after-ingest"
	// AtViewWrite cuts at a write to the view's bucket (its compare-and-set).
	AtViewWrite Fault = "at-view-write"
	// AtConsumerAck cuts at a write of the projector's consumer state.
	AtConsumerAck Fault = "at-consumer-ack"
	// AtMetaRename cuts at a stream's or consumer's metadata rename during
	// a restart (or, if a start renames none, at its first write).
	AtMetaRename Fault = "at-meta-rename-on-start"
	// AtFirstWriteAfterStart stops the pipeline cleanly, starts it again
	// and cuts at its first write.
	AtFirstWriteAfterStart Fault = "at-first-write-after-start"
	// DuringRebuild runs the README's live rebuild and cuts at a random
	// one of its first writes to the view.
	DuringRebuild Fault = "during-rebuild"
)

// AllFaults lists every fault, in the order a run cycles through them.
func AllFaults() []Fault {
	return []Fault{AtRandom, RightAfterShown, AfterIngest, AtViewWrite, AtConsumerAck, AtMetaRename, AtFirstWriteAfterStart, DuringRebuild}
}

// CycleOptions configure one power-loss cycle.
type CycleOptions struct {
	Fault Fault
	Mode  lazyfs.Mode
	// Sync is NATS_SYNC, or nats-server's sync_interval (empty: the
	// deployment's default).
	Sync string
	// Topology is what runs on the machine; Binaries what it runs.
	Topology Topology
	Binaries Binaries
	// Capture is the capture directory.
	Capture string
	// Dir is a scratch directory: the mount point and the logs go there.
	Dir  string
	Seed uint64
}

// Result is what one cycle found.
type Result struct {
	Topology Topology
	Fault    Fault
	Mode     lazyfs.Mode
	Sync     string
	Report   Report
	// Unlisted is the share of the shown incidents the upstream no longer
	// listed when the pipeline came back: a cycle counts only from 30%,
	// else the upstream heals what the harness should catch.
	Unlisted float64
	// Triggered says the named operation was reached (false: the cut
	// came at the fallback moment).
	Triggered bool
	Duration  time.Duration
}

// Counted reports whether the cycle tested what it should.
func (r Result) Counted() bool { return r.Report.Shown > 0 && r.Unlisted >= 0.3 }

const (
	chunkSize    = 150
	chunkEvery   = 400 * time.Millisecond
	window       = 3 * time.Second
	pollInterval = 250 * time.Millisecond
)

// RunCycle runs the pipeline on a lazy file system, feeds it the capture
// through a window, cuts the power as the fault says, brings it back, and
// compares what it serves with what it showed.
func RunCycle(ctx context.Context, o CycleOptions) (Result, error) {
	start := time.Now()
	res := Result{Topology: o.Topology, Fault: o.Fault, Mode: o.Mode, Sync: o.Sync}
	rng := rand.New(rand.NewPCG(o.Seed, 0xc1c1e))

	var armed atomic.Bool
	var reached atomic.Bool
	trigger := triggerFor(o.Fault, 2+rng.IntN(100))
	fsys := lazyfs.New(lazyfs.Options{Mode: o.Mode, Seed: o.Seed, Trigger: func(op lazyfs.Op) bool {
		if armed.Load() && trigger != nil && trigger(op) {
			reached.Store(true)
			armed.Store(false)
			return true
		}
		return false
	}})
	mnt := filepath.Join(o.Dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return res, err
	}
	if err := fsys.Mount(mnt); err != nil {
		return res, err
	}
	defer fsys.Unmount() //nolint:errcheck // best effort on the way out
	logFile, err := os.Create(filepath.Join(o.Dir, "pipeline.log"))
	if err != nil {
		return res, err
	}
	defer logFile.Close()

	up, err := NewUpstream(o.Capture, chunkSize, window, o.Seed)
	if err != nil {
		return res, err
	}
	defer up.Close()
	dopts := DeployOptions{Topology: o.Topology, Binaries: o.Binaries, DataDir: filepath.Join(mnt, "data"), Upstream: up, Sync: o.Sync, PollInterval: pollInterval, Log: logFile}
	up.Add()
	proc, err := Deploy(ctx, dopts)
	if err != nil {
		return res, err
	}
	checker := NewChecker(proc.API)

	// Feed and watch until the power is cut.
	feedCtx, stopFeed := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	var afterShown atomic.Bool
	go func() { // the upstream lists a new chunk every chunkEvery
		defer wg.Done()
		for feedCtx.Err() == nil && up.Added() < up.Chunks()-2 {
			select {
			case <-feedCtx.Done():
				return
			case <-time.After(chunkEvery):
				up.Add()
			}
		}
	}()
	go func() { // the checker reads the view as analysts do
		defer wg.Done()
		for feedCtx.Err() == nil {
			added, err := checker.Poll(feedCtx)
			if err == nil && added > 0 && afterShown.Load() {
				fsys.PowerCut()
				return
			}
			select {
			case <-feedCtx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	cut := fsys.Cut()
	waitShown := func(n int) error { // until n incidents were shown, bounded
		deadline := time.Now().Add(60 * time.Second)
		for checker.Shown() < n {
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d incidents shown within 60s, want %d", checker.Shown(), n)
			}
			select {
			case <-cut:
				return nil
			case <-time.After(50 * time.Millisecond):
			}
		}
		return nil
	}
	if err := waitShown(chunkSize); err != nil {
		stopFeed()
		wg.Wait()
		proc.Kill()
		return res, err
	}
	switch o.Fault {
	case AtRandom:
		_ = sleep(ctx, cut, time.Duration(rng.Int64N(int64(2*time.Second))))
		fsys.PowerCut()
	case RightAfterShown:
		afterShown.Store(true)
		_ = sleep(ctx, cut, 20*time.Second)
		fsys.PowerCut() // the fallback, when nothing new was shown
	case AfterIngest:
		stopFeed()
		wg.Wait()
		if err := waitListedShown(ctx, checker, up); err != nil {
			proc.Kill()
			return res, err
		}
		_ = sleep(ctx, cut, time.Second)
		fsys.PowerCut()
	case AtViewWrite, AtConsumerAck:
		armed.Store(true)
		_ = sleep(ctx, cut, 10*time.Second)
		fsys.PowerCut() // the fallback, when the operation did not come
	case DuringRebuild:
		stopFeed()
		wg.Wait()
		if err := waitListedShown(ctx, checker, up); err != nil {
			proc.Kill()
			return res, err
		}
		armed.Store(true)
		rebuild := proc.Rebuild()
		rebuild.Stdout, rebuild.Stderr = logFile, logFile
		if err := rebuild.Start(); err != nil {
			proc.Kill()
			return res, fmt.Errorf("starting the rebuild: %w", err)
		}
		exited := make(chan struct{})
		go func() { _ = rebuild.Wait(); close(exited) }()
		select {
		case <-cut:
		case <-exited:
			_ = sleep(ctx, cut, time.Duration(rng.Int64N(int64(time.Second))))
		case <-time.After(60 * time.Second):
		}
		fsys.PowerCut() // the fallback, when the rebuild wrote less
		_ = rebuild.Process.Kill()
		<-exited
	case AtMetaRename, AtFirstWriteAfterStart:
		// Shown, then a clean stop (which fsyncs nothing by itself), then a
		// start, cut short, while the upstream goes on listing new incidents.
		if err := proc.Stop(); err != nil {
			stopFeed()
			wg.Wait()
			return res, fmt.Errorf("stopping before the restart: %w", err)
		}
		armed.Store(true)
		p, err := Deploy(ctx, dopts)
		if err == nil {
			proc = p
			checker.SetAPI(p.API)
			_ = sleep(ctx, cut, 10*time.Second)
		}
		fsys.PowerCut() // the fallback, when the operation did not come
	}
	<-cut
	armed.Store(false) // the power comes back once per cycle
	stopFeed()
	wg.Wait()
	res.Triggered = reached.Load() || trigger == nil
	proc.Kill()
	if err := fsys.Unmount(); err != nil {
		return res, err
	}

	// The upstream's window moves on before the machine is back.
	shown := checker.ShownKeys()
	deadline := time.Now().Add(window + 5*time.Second)
	for {
		listed, err := up.Listed()
		if err != nil {
			return res, err
		}
		unlisted := 0
		for _, k := range shown {
			if !listed[k] {
				unlisted++
			}
		}
		if len(shown) > 0 {
			res.Unlisted = float64(unlisted) / float64(len(shown))
		}
		if res.Unlisted >= 0.9 || time.Now().After(deadline) {
			break
		}
		if err := sleep(ctx, nil, 100*time.Millisecond); err != nil {
			return res, err
		}
	}

	// Power back: the same file system from what it had synced.
	if err := fsys.Mount(mnt); err != nil {
		return res, err
	}
	afterLog, err := os.Create(filepath.Join(o.Dir, "pipeline-after.log"))
	if err != nil {
		return res, err
	}
	defer afterLog.Close()
	dopts.Log = afterLog
	proc, err = Deploy(ctx, dopts)
	if err != nil {
		return res, fmt.Errorf("restarting after the power loss: %w", err)
	}
	defer proc.Kill()
	if err := waitReady(ctx, proc); err != nil {
		return res, fmt.Errorf("after the power loss: %w", err)
	}
	// A marker chunk, new to the pipeline: once it is shown, everything
	// stored before it has been projected and served. It is listed again
	// each second until then, so that a slow start cannot miss it.
	marker := up.Added()
	if !up.Add() {
		return res, errors.New("the capture is used up before the marker")
	}
	deadline = time.Now().Add(90 * time.Second)
	for {
		err := waitChunkShown(ctx, proc, up.ChunkKeys(marker), time.Second)
		if err == nil {
			break
		}
		exited, _ := proc.Exited()
		if exited || time.Now().After(deadline) {
			desc := proc.Describe(ctx)
			if keep := os.Getenv("FAULTS_KEEP"); keep != "" {
				if err := os.CopyFS(keep, os.DirFS(filepath.Join(mnt, "data"))); err != nil {
					desc += "keeping the data: " + err.Error()
				}
			}
			return res, fmt.Errorf("after the power loss, within 90s: %w; the server holds:\n%s", err, desc)
		}
		up.Relist(marker)
	}
	res.Report, err = checker.Compare(ctx, proc.API, up.Valid())
	res.Duration = time.Since(start)
	return res, err
}

// triggerFor is the operation a named fault cuts at; nth picks one of
// several alike.
func triggerFor(f Fault, nth int) func(lazyfs.Op) bool {
	switch f {
	case DuringRebuild:
		var seen atomic.Int64
		return func(op lazyfs.Op) bool {
			return op.Kind == "write" && strings.Contains(op.Path, "/KV_INCIDENT_VIEW/msgs/") && seen.Add(1) == int64(nth)
		}
	case AtViewWrite:
		return func(op lazyfs.Op) bool {
			return op.Kind == "write" && strings.Contains(op.Path, "/KV_INCIDENT_VIEW/msgs/")
		}
	case AtConsumerAck:
		return func(op lazyfs.Op) bool {
			return op.Kind == "write" && strings.Contains(op.Path, "/obs/projector/")
		}
	case AtMetaRename:
		return func(op lazyfs.Op) bool {
			return op.Kind == "rename" && strings.HasSuffix(op.To, "meta.inf") || op.Kind == "write"
		}
	case AtFirstWriteAfterStart:
		return func(op lazyfs.Op) bool { return op.Kind == "write" }
	}
	return nil
}

// waitListedShown waits until every incident the upstream lists was shown
// (one that left the window unseen was never shown, so never promised).
func waitListedShown(ctx context.Context, c *Checker, up *Upstream) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		listed, err := up.Listed()
		if err != nil {
			return err
		}
		if _, err := c.Poll(ctx); err == nil {
			shown := map[string]bool{}
			for _, k := range c.ShownKeys() {
				shown[k] = true
			}
			missing := 0
			for k := range listed {
				if !shown[k] {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%d of %d listed incidents not shown within 60s", missing, len(listed))
			}
		}
		if err := sleep(ctx, nil, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitReady waits until the standalone's /readyz answers 200.
func waitReady(ctx context.Context, proc *Deployment) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get(proc.API + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if exited, werr := proc.Exited(); exited {
			return fmt.Errorf("the pipeline exited: %v", werr)
		}
		if time.Now().After(deadline) {
			return errors.New("not ready within 60s")
		}
		if err := sleep(ctx, nil, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitChunkShown waits until one GET /incidents shows every key.
func waitChunkShown(ctx context.Context, proc *Deployment, keys []string, within time.Duration) error {
	c := NewChecker(proc.API)
	deadline := time.Now().Add(within)
	for {
		view, err := c.fetch(ctx)
		missing := len(keys)
		if err == nil {
			missing = 0
			for _, k := range keys {
				if _, ok := view[k]; !ok {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		if exited, werr := proc.Exited(); exited {
			return fmt.Errorf("the pipeline exited: %v", werr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d new incidents not shown within %s (last error: %v)", missing, len(keys), within, err)
		}
		if err := sleep(ctx, nil, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// sleep waits d, or until stop closes or ctx ends.
func sleep(ctx context.Context, stop <-chan struct{}, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return nil
	case <-time.After(d):
		return nil
	}
}
