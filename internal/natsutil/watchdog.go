package natsutil

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/topology"
)

// How the JetStream watchdog probes a clustered connection.
const (
	probeEvery   = time.Second
	probeTimeout = time.Second
	// CutOffAfter is how long JetStream may be unreachable over a
	// connection that is up before the connection is moved to another
	// server: about a leader election (2-4 s; moving during one costs a
	// reconnect, nothing else), and short enough to keep a partitioned
	// node's clients from waiting out the partition.
	CutOffAfter = 2 * time.Second
)

// watchJetStream makes nc reconnect, to another server of the cluster, when
// JetStream cannot be reached over it for CutOffAfter while the connection
// itself is up. A server cut off from its peers keeps its clients'
// connections healthy (its clients still reach it), so nats.go never moves
// them; every JetStream request over it fails or times out meanwhile. It
// watches only connections to a cluster, and stops when nc is closed.
func watchJetStream(nc *nats.Conn, js jetstream.JetStream, log *slog.Logger) {
	tick := time.NewTicker(probeEvery)
	defer tick.Stop()
	var failingSince time.Time
	streams := topology.StreamNames()
	for range tick.C {
		if nc.IsClosed() {
			return
		}
		if !nc.IsConnected() || nc.ConnectedClusterName() == "" {
			failingSince = time.Time{}
			continue
		}
		probed := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
		err := probe(ctx, js, streams)
		cancel()
		switch {
		case err == nil:
			failingSince = time.Time{}
		case failingSince.IsZero():
			failingSince = probed
		case time.Since(failingSince) >= CutOffAfter:
			log.Warn("JetStream unreachable over this NATS connection; moving to another server",
				"server", nc.ConnectedServerName(), "for", time.Since(failingSince).Round(time.Second).String(), "error", err)
			if err := nc.ForceReconnect(); err != nil {
				log.Warn("reconnecting to NATS failed", "error", err)
			}
			failingSince = time.Time{}
		}
	}
}

// peerSilence is how long a stream leader may not hear from a peer before
// the peer counts as gone (raft heartbeats every second).
const peerSilence = 2 * time.Second

// probe asks for the state of every stream of the pipeline (every client
// may): each request reaches the stream's leader, which must hear from a
// majority of its peers. Over a server cut off from its peers a request
// times out (the leader is across the partition) or the answering leader
// is alone: it still calls itself leader until raft's lost-quorum timeout,
// 10-20 s, and answers alone. Every stream, as leaders are spread over the
// servers and a partition need not be whole (a server that reaches one peer
// but not the other reaches some leaders only). A deployment without the
// streams yet is probed by its account.
func probe(ctx context.Context, js jetstream.JetStream, streams []string) error {
	found := false
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		found = true
		if err := heardByMajority(name, s.CachedInfo().Cluster); err != nil {
			return err
		}
	}
	if !found {
		_, err := js.AccountInfo(ctx)
		return err
	}
	return nil
}

// heardByMajority reports whether a stream's leader hears from a majority
// of its group (an R1 stream has no peers to hear).
func heardByMajority(stream string, cluster *jetstream.ClusterInfo) error {
	if cluster == nil || len(cluster.Replicas) == 0 {
		return nil
	}
	heard := 1 // the leader
	for _, p := range cluster.Replicas {
		if p.Current && !p.Offline && p.Active < peerSilence {
			heard++
		}
	}
	if size := len(cluster.Replicas) + 1; 2*heard <= size {
		return fmt.Errorf("the leader of %s (%s) hears from %d of its %d peers", stream, cluster.Leader, heard-1, size-1)
	}
	return nil
}
