package cluster_test

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// TestClusterPowerLoss: each node's store on lazyfs (what it did not fsync
// is gone at a power loss), an upstream that lists each incident only for
// a window. Once the whole capture is shown and the upstream lists none of
// it any more, the power goes: of the stream leader's node, or of all
// three at once. After recovery an API that starts afresh serves the whole
// capture again, and the pipeline goes on.
func TestClusterPowerLoss(t *testing.T) {
	tests := []struct {
		name  string
		nodes func(leader int) []int
	}{
		{"the stream leader's node", func(leader int) []int { return []int{leader} }},
		{"all three at once", func(int) []int { return []int{0, 1, 2} }},
	}
	table, n := newFaultTable(t), cycles(t)
	for cycle := range n {
		for _, tc := range tests {
			t.Run(cycleName("power loss of "+tc.name, cycle, n), func(t *testing.T) {
				var recovered, after time.Duration
				defer func() { table.add("power loss of "+tc.name, t.Failed(), 0, recovered, after) }()
				recovered, after = powerLossCycle(t, tc.nodes)
			})
		}
	}
}

// powerLossCycle runs the capture to the end of the upstream's window,
// cuts the power of the nodes chosen by nodes (given the stream leader),
// and returns how long after their restart the view was whole again, and
// how long an incident listed then took to be shown.
func powerLossCycle(t *testing.T, chosen func(leader int) []int) (recovered, after time.Duration) {
	c, js, sim, _, leader := pipelineOn(t, rawLeader, netSetup{lazy: true, window: 45 * time.Second})
	testkit.Eventually(t, 90*time.Second, func() (bool, string) {
		n := 0
		for _, ty := range incident.Types() {
			n += len(sim.Listed(ty))
		}
		return n == 0, fmt.Sprintf("the upstream still lists %d incidents", n)
	})
	nodes := chosen(leader)
	for _, i := range nodes {
		c.powerLoss(i)
	}
	for _, i := range nodes {
		c.start(i)
	}
	restarted := time.Now()
	// A fresh API reads the view from the servers, not from the memory of
	// the one that served before.
	api := pipelinetest.ServeAPI(t, natsutil.ConnectOptions{URL: c.URLs(), Name: "api-after", Logger: pipelinetest.Logger("api-after")})
	pipelinetest.WaitExact(t, api, captureExpected(t), 120*time.Second)
	recovered = time.Since(restarted)
	ts := addIncident(t, sim, 4244001)
	if os.Getenv("PIPELINETEST_LOG") != "" {
		go traceProgress(t, js, time.Now())
	}
	after = waitShown(t, api, 4244001, ts, 120*time.Second)
	t.Logf("after the power loss of %d node(s): a new incident shown after %s", len(nodes), after.Round(100*time.Millisecond))
	return recovered, after
}

// captureExpected is the capture's expected GET /incidents document.
func captureExpected(t *testing.T) []byte {
	t.Helper()
	_, _, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{})
	return expected
}
