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

// Header is the summary table's head, for Row.
const Header = "| topology | fault | lazyfs mode | sync | shown | no longer listed | at the named operation | lost | duplicated | moved | invalid | took | |\n" +
	"| --- | --- | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"

// Row is a result as one line of the summary table.
func Row(r Result) string {
	mark := "ok"
	switch {
	case !r.Counted():
		mark = "not counted"
	case !r.Report.OK():
		mark = "LOSS"
	}
	sync := r.Sync
	if sync == "" {
		sync = "default"
	}
	return fmt.Sprintf("| %s | %s | %s | %s | %d | %.0f%% | %v | %d | %d | %d | %d | %s | %s |",
		r.Topology, r.Fault, r.Mode, sync, r.Report.Shown, 100*r.Unlisted, r.Triggered,
		len(r.Report.Lost), len(r.Report.Duplicated), len(r.Report.Moved), len(r.Report.Invalid),
		r.Duration.Round(100*time.Millisecond), mark)
}

// RunCycle runs the pipeline on a lazy file system, feeds it the capture
// through a window, cuts the power as the fault says, brings it back, and
// compares what it serves with what it showed.
func RunCycle(ctx context.Context, o CycleOptions) (Result, error) {
	start := time.Now()
	res := Result{Topology: o.Topology, Fault: o.Fault, Mode: o.Mode, Sync: o.Sync}
	c, err := newCycle(o)
	if err != nil {
		return res, err
	}
	defer c.close()
	if err := c.run(ctx); err != nil {
		return res, err
	}
	res.Triggered = c.reached.Load() || c.trigger == nil
	if res.Unlisted, err = c.awaitUnlisted(ctx); err != nil {
		return res, err
	}
	if err := c.recover(ctx); err != nil {
		return res, err
	}
	res.Report, err = c.checker.Compare(ctx, c.proc.API, c.up.Valid())
	res.Duration = time.Since(start)
	return res, err
}

// cycle is one power-loss cycle under way.
type cycle struct {
	o       CycleOptions
	rng     *rand.Rand
	fsys    *lazyfs.FS
	mnt     string
	trigger func(lazyfs.Op) bool
	armed   atomic.Bool // the trigger may fire
	reached atomic.Bool // the trigger fired
	logs    []*os.File
	up      *Upstream
	deploy  DeployOptions
	proc    *Deployment
	checker *Checker

	// While the power is on: the upstream adds chunks, the checker reads.
	stopFeed   context.CancelFunc
	feeding    sync.WaitGroup
	afterShown atomic.Bool // cut at the next poll that shows something new
}

// newCycle mounts a fresh lazy file system and prepares the upstream.
func newCycle(o CycleOptions) (*cycle, error) {
	c := &cycle{o: o, rng: rand.New(rand.NewPCG(o.Seed, 0xc1c1e)), mnt: filepath.Join(o.Dir, "mnt")}
	c.trigger = triggerFor(o.Fault, 2+c.rng.IntN(100))
	c.fsys = lazyfs.New(lazyfs.Options{Mode: o.Mode, Seed: o.Seed, Trigger: func(op lazyfs.Op) bool {
		if c.armed.Load() && c.trigger != nil && c.trigger(op) {
			c.reached.Store(true)
			c.armed.Store(false)
			return true
		}
		return false
	}})
	if err := os.MkdirAll(c.mnt, 0o755); err != nil {
		return nil, err
	}
	if err := c.fsys.Mount(c.mnt); err != nil {
		return nil, err
	}
	up, err := NewUpstream(o.Capture, chunkSize, window, o.Seed)
	if err != nil {
		c.close()
		return nil, err
	}
	c.up = up
	c.deploy = DeployOptions{Topology: o.Topology, Binaries: o.Binaries, DataDir: filepath.Join(c.mnt, "data"),
		Upstream: up, Sync: o.Sync, PollInterval: pollInterval}
	return c, nil
}

func (c *cycle) close() {
	if c.proc != nil {
		c.proc.Kill()
	}
	_ = c.fsys.Unmount()
	if c.up != nil {
		c.up.Close()
	}
	for _, f := range c.logs {
		_ = f.Close()
	}
}

// start deploys the pipeline with its output in the named log.
func (c *cycle) start(ctx context.Context, log string) error {
	f, err := os.Create(filepath.Join(c.o.Dir, log))
	if err != nil {
		return err
	}
	c.logs = append(c.logs, f)
	c.deploy.Log = f
	p, err := Deploy(ctx, c.deploy)
	if err != nil {
		return err
	}
	c.proc = p
	return nil
}

// run starts the pipeline, feeds and watches it, and cuts the power as the
// fault says; it returns with the pipeline killed and the file system off.
func (c *cycle) run(ctx context.Context) error {
	c.up.Add()
	if err := c.start(ctx, "pipeline.log"); err != nil {
		return err
	}
	c.checker = NewChecker(c.proc.API)
	c.feed(ctx)
	err := c.waitShown(chunkSize)
	if err == nil {
		err = c.inject(ctx)
	}
	if err != nil {
		c.stopFeeding()
		c.proc.Kill()
		return err
	}
	<-c.fsys.Cut()
	c.armed.Store(false) // the power comes back once per cycle
	c.stopFeeding()
	c.proc.Kill()
	return c.fsys.Unmount()
}

// feed lists a new chunk every chunkEvery and reads the view as analysts
// do, until stopFeeding.
func (c *cycle) feed(ctx context.Context) {
	feedCtx, stop := context.WithCancel(ctx)
	c.stopFeed = stop
	c.feeding.Add(2)
	go func() {
		defer c.feeding.Done()
		for feedCtx.Err() == nil && c.up.Added() < c.up.Chunks()-2 {
			if sleep(feedCtx, nil, chunkEvery) == nil && feedCtx.Err() == nil {
				c.up.Add()
			}
		}
	}()
	go func() {
		defer c.feeding.Done()
		for feedCtx.Err() == nil {
			added, err := c.checker.Poll(feedCtx)
			if err == nil && added > 0 && c.afterShown.Load() {
				c.fsys.PowerCut()
				return
			}
			_ = sleep(feedCtx, nil, 100*time.Millisecond)
		}
	}()
}

func (c *cycle) stopFeeding() {
	c.stopFeed()
	c.feeding.Wait()
}

// waitShown waits until n incidents were shown (or the power is cut).
func (c *cycle) waitShown(n int) error {
	deadline := time.Now().Add(60 * time.Second)
	for c.checker.Shown() < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("only %d incidents shown within 60s, want %d", c.checker.Shown(), n)
		}
		select {
		case <-c.fsys.Cut():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// inject cuts the power as the fault says. Each named fault falls back to
// a cut after a bound when its operation does not come.
func (c *cycle) inject(ctx context.Context) error {
	cut := c.fsys.Cut()
	switch c.o.Fault {
	case AtRandom:
		_ = sleep(ctx, cut, time.Duration(c.rng.Int64N(int64(2*time.Second))))
	case RightAfterShown:
		c.afterShown.Store(true)
		_ = sleep(ctx, cut, 20*time.Second)
	case AfterIngest:
		if err := c.settle(ctx); err != nil {
			return err
		}
		_ = sleep(ctx, cut, time.Second)
	case AtViewWrite, AtConsumerAck:
		c.armed.Store(true)
		_ = sleep(ctx, cut, 10*time.Second)
	case DuringRebuild:
		if err := c.settle(ctx); err != nil {
			return err
		}
		c.armed.Store(true)
		if err := c.rebuild(ctx, cut); err != nil {
			return err
		}
	case AtMetaRename, AtFirstWriteAfterStart:
		// Shown, then a clean stop (which fsyncs nothing by itself), then a
		// start, cut short, while the upstream goes on listing new incidents.
		if err := c.proc.Stop(); err != nil {
			return fmt.Errorf("stopping before the restart: %w", err)
		}
		c.armed.Store(true)
		if err := c.start(ctx, "pipeline-restart.log"); err == nil {
			c.checker.SetAPI(c.proc.API)
			_ = sleep(ctx, cut, 10*time.Second)
		}
	}
	c.fsys.PowerCut() // when nothing cut it yet
	return nil
}

// settle stops the upstream adding and waits until all it lists is shown.
func (c *cycle) settle(ctx context.Context) error {
	c.stopFeeding()
	return waitListedShown(ctx, c.checker, c.up)
}

// rebuild runs the README's live rebuild until the power is cut, or a
// random moment after it ended.
func (c *cycle) rebuild(ctx context.Context, cut <-chan struct{}) error {
	cmd := c.proc.Rebuild()
	cmd.Stdout, cmd.Stderr = c.deploy.Log, c.deploy.Log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting the rebuild: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	select {
	case <-cut:
	case <-exited:
		_ = sleep(ctx, cut, time.Duration(c.rng.Int64N(int64(time.Second))))
	case <-time.After(60 * time.Second):
	}
	c.fsys.PowerCut()
	_ = cmd.Process.Kill()
	<-exited
	return nil
}

// awaitUnlisted waits until the upstream's window has moved on from what
// was shown (most of it, or a bound), as the machine stays off; it returns
// the share of the shown incidents no longer listed.
func (c *cycle) awaitUnlisted(ctx context.Context) (float64, error) {
	shown := c.checker.ShownKeys()
	deadline := time.Now().Add(window + 5*time.Second)
	for {
		listed, err := c.up.Listed()
		if err != nil {
			return 0, err
		}
		unlisted := 0
		for _, k := range shown {
			if !listed[k] {
				unlisted++
			}
		}
		share := 0.0
		if len(shown) > 0 {
			share = float64(unlisted) / float64(len(shown))
		}
		if share >= 0.9 || time.Now().After(deadline) {
			return share, nil
		}
		if err := sleep(ctx, nil, 100*time.Millisecond); err != nil {
			return share, err
		}
	}
}

// recover brings the power back (the same file system, from what it had
// synced), starts the pipeline and waits until it shows a marker chunk new
// to it: everything stored before it has been projected and served then.
// The marker is listed again each second, so that a slow start cannot miss
// it.
func (c *cycle) recover(ctx context.Context) error {
	if err := c.fsys.Mount(c.mnt); err != nil {
		return err
	}
	if err := c.start(ctx, "pipeline-after.log"); err != nil {
		return fmt.Errorf("restarting after the power loss: %w", err)
	}
	if err := waitReady(ctx, c.proc); err != nil {
		return fmt.Errorf("after the power loss: %w", err)
	}
	marker := c.up.Added()
	if !c.up.Add() {
		return errors.New("the capture is used up before the marker")
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		err := waitChunkShown(ctx, c.proc, c.up.ChunkKeys(marker), time.Second)
		if err == nil {
			return nil
		}
		if exited, _ := c.proc.Exited(); exited || time.Now().After(deadline) {
			return fmt.Errorf("after the power loss, within 90s: %w; the server holds:\n%s", err, c.keep(ctx))
		}
		c.up.Relist(marker)
	}
}

// keep describes the server for a failure, and copies its data to
// $FAULTS_KEEP when that is set.
func (c *cycle) keep(ctx context.Context) string {
	desc := c.proc.Describe(ctx)
	if keep := os.Getenv("FAULTS_KEEP"); keep != "" {
		if err := os.CopyFS(keep, os.DirFS(filepath.Join(c.mnt, "data"))); err != nil {
			desc += "keeping the data: " + err.Error()
		}
	}
	return desc
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
