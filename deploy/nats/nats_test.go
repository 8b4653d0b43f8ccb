// Package nats_test loads the NATS configuration in this directory into a
// real embedded server and checks that each service's user can do its job
// and is refused the rest.
package nats_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/deploy/pipeline/pipelinetest"
	"github.com/incidentpipe/pipeline/internal/natsutil"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

var services = []string{"producers", "enricher", "projector", "api", "admin"}

func password(user string) string { return "pw-" + user + "-for-test" }

// startConfigured starts nats.conf on a free loopback port with a temporary store.
func startConfigured(t *testing.T) *server.Server {
	t.Helper()
	for _, u := range services {
		t.Setenv(strings.ToUpper(u)+"_NATS_PASSWORD", password(u))
	}
	opts, err := server.ProcessConfigFile("nats.conf")
	if err != nil {
		t.Fatalf("loading nats.conf: %v", err)
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats.conf server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func as(s *server.Server, user string) natsutil.ConnectOptions {
	return natsutil.ConnectOptions{URL: s.ClientURL(), Name: user, User: user, Password: password(user)}
}

func connectAs(t *testing.T, s *server.Server, user string) jetstream.JetStream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, js, err := natsutil.Connect(ctx, as(s, user))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return js
}

// TestConfigurationsSyncAlways: both compose configurations fsync every
// JetStream write before acknowledging it.
func TestConfigurationsSyncAlways(t *testing.T) {
	for _, u := range services {
		t.Setenv(strings.ToUpper(u)+"_NATS_PASSWORD", password(u))
	}
	t.Setenv("NATS_SERVER_NAME", "n1")
	for _, name := range []string{"nats.conf", "cluster.conf"} {
		opts, err := server.ProcessConfigFile(name)
		if err != nil {
			t.Fatalf("loading %s: %v", name, err)
		}
		if !opts.SyncAlways {
			t.Fatalf("%s: sync_interval is not always", name)
		}
	}
}

// TestEachServiceDoesItsJob runs every stage as its own user against the
// configured server: the capture must come out exact.
func TestEachServiceDoesItsJob(t *testing.T) {
	s := startConfigured(t)
	_, hs, expected := pipelinetest.CaptureUpstream(t, simulator.Faults{PageSize: 100})
	client, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "user", Password: pipelinetest.UpstreamPassword})
	if err != nil {
		t.Fatal(err)
	}
	// The writers create the topology themselves, as the binaries do.
	for _, u := range []string{"producers", "enricher", "projector"} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := topology.Ensure(ctx, connectAs(t, s, u), topology.DefaultOptions()); err != nil {
			t.Fatalf("%s cannot ensure the topology: %v", u, err)
		}
		cancel()
	}
	stages := []*pipelinetest.Stage{
		pipelinetest.RunStage(t, as(s, "producers"), pipelinetest.Producers(client, time.Second)),
		pipelinetest.RunStage(t, as(s, "enricher"), pipelinetest.Enricher(100)),
		pipelinetest.RunStage(t, as(s, "projector"), pipelinetest.Projector(100)),
	}
	api := pipelinetest.ServeAPI(t, as(s, "api"))
	pipelinetest.WaitExact(t, api, expected, 60*time.Second)
	// The API user reads what the console's health strip shows.
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		_, b, _ := pipelinetest.Get(api + "/status")
		var st struct {
			Lag         map[string]int64 `json:"lag"`
			DeadLetters int64            `json:"dead_letters"`
		}
		_ = json.Unmarshal(b, &st)
		return st.Lag["enricher"] >= 0 && st.Lag["projector"] >= 0 && st.DeadLetters >= 0 && len(st.Lag) == 2, string(b)
	})
	for _, st := range stages {
		if err, stopped := st.Err(); stopped {
			t.Errorf("a stage stopped: %v", err)
		}
	}
	// The API cannot change the topology: it only reads (an Ensure that
	// finds everything as wanted writes nothing, so ask for a change, one
	// that keeps more: Ensure never applies one that keeps less).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	changed := topology.DefaultOptions()
	changed.DLQMaxAge = 60 * 24 * time.Hour
	if err := topology.Ensure(ctx, connectAs(t, s, "api"), changed); err == nil {
		t.Error("the api user may create or update streams")
	}
}

// TestEachServiceIsRefusedTheRest tries what each user must not do.
func TestEachServiceIsRefusedTheRest(t *testing.T) {
	s := startConfigured(t)
	ctx := context.Background()
	admin := connectAs(t, s, "admin")
	if err := topology.Ensure(ctx, admin, topology.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	refused := map[string][]string{
		"api":       {"incidents.raw.denial", "incidents.enriched.1", "incidents.dlq.api.x", "$KV.INCIDENT_VIEW.1", "$KV.IDENTITIES.10.0.0.1"},
		"producers": {"incidents.enriched.1", "$KV.INCIDENT_VIEW.1", "incidents.dlq.enricher.x"},
		"enricher":  {"incidents.raw.denial", "$KV.INCIDENT_VIEW.1", "$KV.IDENTITIES.10.0.0.1", "incidents.dlq.projector.x"},
		"projector": {"incidents.raw.denial", "incidents.enriched.1", "$KV.IDENTITIES.10.0.0.1", "incidents.dlq.enricher.x"},
	}
	// A refused publish gets no acknowledgement: each waits out its
	// timeout, so they all wait at once.
	var wg sync.WaitGroup
	for user, subjects := range refused {
		js := connectAs(t, s, user)
		for _, subj := range subjects {
			wg.Go(func() {
				pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				defer cancel()
				if _, err := js.Publish(pctx, subj, []byte(`{"x":1}`)); err == nil {
					t.Errorf("%s may publish to %s", user, subj)
				}
			})
		}
	}
	wg.Wait()
	// Nothing got through.
	for _, name := range []string{topology.StreamRaw, topology.StreamEnriched, topology.StreamDLQ, "KV_" + topology.BucketView, "KV_" + topology.BucketIdentities} {
		st, err := admin.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil || info.State.Msgs != 0 {
			t.Errorf("%s holds %d messages (%v) after refused publishes", name, info.State.Msgs, err)
		}
	}
	// The API cannot write the view through the KV API either.
	kv, err := connectAs(t, s, "api").KeyValue(ctx, topology.BucketView)
	if err != nil {
		t.Fatalf("api cannot open the view: %v", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := kv.Put(pctx, "1", []byte("{}")); err == nil {
		t.Error("api may write the view")
	}
	// A wrong password is refused.
	bad := as(s, "api")
	bad.Password = "wrong"
	nc, err := nats.Connect(bad.URL, nats.UserInfo(bad.User, bad.Password))
	if err == nil {
		nc.Close()
		t.Error("a wrong password connects")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(err.Error(), "Authorization") {
		t.Logf("wrong password: %v", err)
	}
}
