package faults_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/faults"
	"github.com/incidentpipe/pipeline/deploy/faults/lazyfs"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// cycle runs one power-loss cycle of the standalone and logs its row.
func cycle(t *testing.T, fault faults.Fault, mode lazyfs.Mode, sync string, seed uint64) faults.Result {
	t.Helper()
	if err := lazyfs.Available(); err != nil {
		testkit.Require(t, "FUSE ("+err.Error()+")")
	}
	bin := testkit.Build(t, "github.com/incidentpipe/pipeline/deploy/standalone")
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := faults.RunCycle(ctx, faults.CycleOptions{
		Fault: fault, Mode: mode, Sync: sync, Binary: bin, Capture: testkit.CaptureDir(t), Dir: dir, Seed: seed,
	})
	if err != nil {
		for _, name := range []string{"standalone.log", "standalone-after.log"} {
			if log, rerr := os.ReadFile(filepath.Join(dir, name)); rerr == nil {
				t.Logf("%s, without its polls:\n%s", name, tail(withoutPolls(log), 6000))
			}
		}
		t.Fatalf("%s: %v", fault, err)
	}
	t.Logf("%s", faults.Row(res))
	return res
}

func withoutPolls(log []byte) []byte {
	var out []byte
	for _, line := range bytes.SplitAfter(log, []byte("\n")) {
		if !bytes.Contains(line, []byte("msg=polled")) {
			out = append(out, line...)
		}
	}
	return out
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// TestPowerLossLosesNothingShown is the short run of CI: one cycle per
// fault with the standalone's defaults. Every incident GET /incidents
// showed before the power loss is served once, in the same place, after it;
// the upstream no longer lists most of them, so only the disk could have
// kept them.
func TestPowerLossLosesNothingShown(t *testing.T) {
	modes := []lazyfs.Mode{lazyfs.DropUnsynced, lazyfs.RenameKeepsData, lazyfs.RandomWriteBack}
	for i, fault := range faults.AllFaults() {
		t.Run(string(fault), func(t *testing.T) {
			res := cycle(t, fault, modes[i%len(modes)], "", uint64(i+1))
			if !res.Counted() {
				t.Fatalf("the cycle tested nothing: %d shown, %.0f%% of them no longer listed (want at least 30%%)", res.Report.Shown, 100*res.Unlisted)
			}
			if !res.Report.OK() {
				t.Fatalf("after the power loss: %s", res.Report)
			}
		})
	}
}

// TestPowerLossHarnessFindsLoss: with nats-server's own sync policy (an
// fsync every 2 minutes) the same harness sees shown incidents lost, so it
// can tell a durable pipeline from one that is not.
func TestPowerLossHarnessFindsLoss(t *testing.T) {
	res := cycle(t, faults.AfterIngest, lazyfs.DropUnsynced, "2m", 1)
	if !res.Counted() {
		t.Fatalf("the cycle tested nothing: %d shown, %.0f%% no longer listed", res.Report.Shown, 100*res.Unlisted)
	}
	if len(res.Report.Lost) == 0 {
		t.Fatalf("NATS_SYNC=2m lost nothing on a power loss: the harness cannot find losses (%s)", res.Report)
	}
}
