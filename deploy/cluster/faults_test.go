package cluster_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// clusterFault is one fault of the three-node cluster: on whom every
// client is first, how it starts, and how it heals.
type clusterFault struct {
	name string
	// within bounds how long an incident listed during the fault may take
	// to be shown (0: POLL_INTERVAL + 20 s).
	within time.Duration
	victim func(c *netCluster, js jetstream.JetStream) int
	inject func(c *netCluster, victim int) (heal func())
}

// rawLeader is the node that leads INCIDENTS_RAW.
func rawLeader(c *netCluster, js jetstream.JetStream) int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, topology.StreamRaw)
	if err != nil || s.CachedInfo().Cluster == nil {
		c.t.Fatalf("INCIDENTS_RAW's leader: %v", err)
	}
	i := c.node(s.CachedInfo().Cluster.Leader)
	if i < 0 {
		c.t.Fatalf("INCIDENTS_RAW's leader %q is not a node", s.CachedInfo().Cluster.Leader)
	}
	return i
}

func third(*netCluster, jetstream.JetStream) int { return 2 }

var clusterFaults = []clusterFault{
	{name: "the stream leader cut off", victim: rawLeader, inject: func(c *netCluster, v int) func() {
		c.cutOff(v)
		return func() { c.heal(v) }
	}},
	// Raft leaders on either side of a partition that is not transitive
	// can change several times before it settles: 9-31 s measured.
	{name: "a partition that is not transitive", within: 60 * time.Second, victim: third, inject: func(c *netCluster, v int) func() {
		c.cutBetween(v, (v+1)%3)
		return func() { c.heal(v) }
	}},
	{name: "flapping links", victim: third, inject: func(c *netCluster, v int) func() {
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(done)
			for cut := true; ; cut = !cut {
				if cut {
					c.cutOff(v)
				} else {
					c.heal(v)
				}
				select {
				case <-stop:
					return
				case <-time.After(1500 * time.Millisecond):
				}
			}
		}()
		return func() { close(stop); <-done; c.heal(v) }
	}},
	{name: "a node paused", victim: third, inject: func(c *netCluster, v int) func() {
		c.pause(v)
		return func() { c.resume(v) }
	}},
	{name: "kill -9 of the stream leader", victim: rawLeader, inject: func(c *netCluster, v int) func() {
		c.kill(v)
		return func() { c.start(v) }
	}},
}

// TestClusterFaults: with every client first on the node the fault hits,
// incidents listed upstream during the fault are shown while it holds, and
// once healed the view holds everything, once.
func TestClusterFaults(t *testing.T) {
	table, n := newFaultTable(t), cycles(t)
	for cycle := range n {
		for _, f := range clusterFaults {
			t.Run(cycleName(f.name, cycle, n), func(t *testing.T) {
				var shown, exact, after time.Duration
				defer func() { table.add(f.name, t.Failed(), shown, exact, after) }()
				shown, exact, after = runClusterFault(t, f)
			})
		}
	}
}

// runClusterFault runs one cycle of f and returns how long the slower of
// two incidents listed during the fault took to be shown, how long after
// the heal the view was exact, and how long an incident listed after the
// heal took to be shown.
func runClusterFault(t *testing.T, f clusterFault) (shown, exact, after time.Duration) {
	c, js, sim, api, v := pipelineOnNetCluster(t, f.victim)
	heal := f.inject(c, v)
	var once sync.Once
	defer once.Do(heal)
	for i, emp := range []int{4243001, 4243002} {
		ts := addIncident(t, sim, emp)
		d := waitShown(t, api, emp, ts, 90*time.Second)
		shown = max(shown, d)
		t.Logf("incident %d listed during the fault: shown after %s", i+1, d.Round(100*time.Millisecond))
		limit := pollInterval + 20*time.Second
		if f.within > 0 {
			limit = f.within
		}
		if d > limit {
			t.Errorf("incident %d listed during the fault: shown after %s, want within %s", i+1, d.Round(100*time.Millisecond), limit)
		}
	}
	once.Do(heal)
	healed := time.Now()
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		n, err := countIncidents(api)
		return err == nil && n == 2100+2, fmt.Sprintf("the view holds %d incidents (%v), want %d", n, err, 2100+2)
	})
	exact = time.Since(healed)
	t.Logf("exact %s after the heal", exact.Round(100*time.Millisecond))
	if exact > 5*time.Second {
		t.Errorf("the view was exact %s after the heal, want within 5 s", exact.Round(100*time.Millisecond))
	}
	// And the pipeline goes on: an incident listed after the heal.
	ts := addIncident(t, sim, 4243003)
	if os.Getenv("PIPELINETEST_LOG") != "" {
		go traceProgress(t, js, time.Now())
	}
	after = waitShown(t, api, 4243003, ts, 90*time.Second)
	t.Logf("an incident listed after the heal: shown after %s", after.Round(100*time.Millisecond))
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		n, err := countIncidents(api)
		return err == nil && n == 2100+3, fmt.Sprintf("the view holds %d incidents (%v), want %d", n, err, 2100+3)
	})
	return shown, exact, after
}
