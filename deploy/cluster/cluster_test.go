// Package cluster_test runs the pipeline on a three-node JetStream cluster
// on loopback, with every stream and bucket at three replicas, and shuts a
// node down mid-ingest.
package cluster_test

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster starts three clustered JetStream servers.
func startCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := []int{freePort(t), freePort(t), freePort(t)}
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", p))
	}
	dir := t.TempDir()
	var servers []*server.Server
	for i, p := range ports {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			MaxPayload: embedded.MaxPayload,
			Cluster:    server.ClusterOpts{Name: "incidents", Host: "127.0.0.1", Port: p},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
			NoLog:      true,
			NoSigs:     true,
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		servers = append(servers, s)
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, s := range servers {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("cluster node not ready")
		}
	}
	return servers
}

func TestPipelineOnAThreeNodeCluster(t *testing.T) {
	servers := startCluster(t)
	var urls []string
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	url := strings.Join(urls, ",")
	conn := func(name string) natsutil.ConnectOptions { return natsutil.ConnectOptions{URL: url, Name: name} }

	ctx := context.Background()
	connect, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	_, js, err := natsutil.Connect(connect, conn("admin"))
	if err != nil {
		t.Fatal(err)
	}
	opts := topology.DefaultOptions()
	opts.Replicas = 3
	// The cluster needs a meta leader before it takes streams.
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := topology.Ensure(attempt, js, opts)
		return err == nil, fmt.Sprintf("ensuring R3 topology: %v", err)
	})
	// A command run without the cluster's NATS_REPLICAS (rebuild,
	// document, replay-dlq ensure the topology with the default 1) must
	// not turn R3 into R1.
	if err := topology.Ensure(connect, js, topology.DefaultOptions()); err != nil {
		t.Fatalf("ensuring with the default replicas: %v", err)
	}
	for _, name := range []string{topology.StreamRaw, topology.StreamEnriched, topology.StreamDLQ, "KV_" + topology.BucketIdentities, "KV_" + topology.BucketView} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if info, err := st.Info(ctx); err != nil || info.Config.Replicas != 3 || len(info.Cluster.Replicas) != 2 {
			t.Fatalf("%s: replicas %d, peers %+v (%v)", name, info.Config.Replicas, info.Cluster, err)
		}
	}

	_, hs, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{Latency: 5 * time.Millisecond, PageSize: 20})
	client, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "user", Password: pipelinetest.UpstreamPassword})
	if err != nil {
		t.Fatal(err)
	}
	pipelinetest.RunStage(t, conn("producers"), pipelinetest.Producers(client, time.Second))
	pipelinetest.RunStage(t, conn("enricher-1"), pipelinetest.Enricher(100))
	pipelinetest.RunStage(t, conn("enricher-2"), pipelinetest.Enricher(100))
	pipelinetest.RunStage(t, conn("projector-1"), pipelinetest.Projector(100))
	pipelinetest.RunStage(t, conn("projector-2"), pipelinetest.Projector(100))
	api := pipelinetest.ServeAPI(t, conn("api"))

	// Shut one node down mid-ingest.
	raw, err := js.Stream(ctx, topology.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	rawMsgs := func() (uint64, error) {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		info, err := raw.Info(c)
		if err != nil {
			return 0, err
		}
		return info.State.Msgs, nil
	}
	testkit.Eventually(t, 60*time.Second, func() (bool, string) {
		n, err := rawMsgs()
		return err == nil && n >= 300, "waiting for ingest to start"
	})
	servers[1].Shutdown()
	servers[1].WaitForShutdown()

	pipelinetest.WaitExact(t, api, expected, 240*time.Second)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		n, err := rawMsgs()
		return err == nil && n == 2100, fmt.Sprintf("INCIDENTS_RAW holds %d (%v), want 2100", n, err)
	})
}
