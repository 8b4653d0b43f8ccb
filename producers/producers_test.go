package producers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/upstream"
)

func setup(t *testing.T) (*simulator.Server, *upstream.Client, jetstream.JetStream) {
	t.Helper()
	sim := simulator.NewServer("u", "p", simulator.Faults{}, 1)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	c, err := upstream.New(upstream.Options{BaseURL: hs.URL, User: "u", Password: "p",
		Retry: upstream.RetryPolicy{MaxAttempts: 2, BaseDelay: time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	_, js := testkit.Connect(t, testkit.JetStream(t))
	return sim, c, js
}

func newProducers(t *testing.T, c *upstream.Client, js jetstream.JetStream) *Producers {
	t.Helper()
	p, err := New(Options{Upstream: c, JS: js, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.loadSeen(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPollPublishesEachIncidentOnce(t *testing.T) {
	ctx := context.Background()
	sim, c, js := setup(t)
	a := json.RawMessage(`{"priority":"low","employee_id":1,"timestamp":1.5}`)
	b := json.RawMessage(`{"priority":"high","employee_id":2,"timestamp":2.5}`)
	sameAsA := json.RawMessage(`{ "timestamp": 1.5, "employee_id": 1, "priority": "low" }`)
	sim.SetIncidents(incident.Misuse, []json.RawMessage{a, b, sameAsA})

	p := newProducers(t, c, js)
	for i, want := range []int{2, 0, 0} {
		res, err := p.Poll(ctx, incident.Misuse)
		if err != nil {
			t.Fatal(err)
		}
		if res.Fetched != 3 || res.Published != want {
			t.Fatalf("poll %d: %+v, want 3 fetched, %d published", i, res, want)
		}
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 2 {
		t.Fatalf("INCIDENTS_RAW holds %d messages, want 2", n)
	}
	msg, err := js.Stream(ctx, topology.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	first, err := msg.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if string(first.Data) != string(a) || first.Header.Get(topology.HeaderMsgID) != incident.ID(incident.Misuse, a) ||
		first.Subject != "incidents.raw.misuse" {
		t.Fatalf("stored %s %q on %s; want the raw bytes, id header, raw subject", first.Data, first.Header, first.Subject)
	}

	// A restarted producer knows what is stored and publishes only news.
	p2 := newProducers(t, c, js)
	sim.AppendIncidents(incident.Misuse, json.RawMessage(`{"priority":"low","employee_id":3,"timestamp":3}`))
	res, err := p2.Poll(ctx, incident.Misuse)
	if err != nil || res.Published != 1 {
		t.Fatalf("poll after restart: %+v, %v; want 1 published", res, err)
	}
	if got := testutil.ToFloat64(p2.metrics.published.WithLabelValues("misuse")); got != 1 {
		t.Errorf("incidents_published_total = %v, want 1", got)
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 3 {
		t.Fatalf("INCIDENTS_RAW holds %d messages, want 3", n)
	}
}

func TestFailedPollPublishesNothing(t *testing.T) {
	sim, c, js := setup(t)
	sim.SetIncidents(incident.Probing, []json.RawMessage{json.RawMessage(`{"priority":"low","ip":"10.0.0.1","timestamp":1}`)})
	sim.SetFaults(simulator.Faults{FailRate: 1})
	p := newProducers(t, c, js)
	if _, err := p.Poll(context.Background(), incident.Probing); err == nil {
		t.Fatal("poll of a failing upstream succeeded")
	}
	if n := testkit.StreamMsgs(t, js, topology.StreamRaw); n != 0 {
		t.Fatalf("a failed poll published %d messages", n)
	}
}

func TestSyncIdentities(t *testing.T) {
	ctx := context.Background()
	sim, c, js := setup(t)
	p := newProducers(t, c, js)
	kv, err := js.KeyValue(ctx, topology.BucketIdentities)
	if err != nil {
		t.Fatal(err)
	}
	sim.SetIdentities(map[string]json.RawMessage{
		"10.0.0.1": json.RawMessage(`1`), "2001:db8::1": json.RawMessage(`"2"`), "10.0.0.3": json.RawMessage(`3`),
		"not-an-ip": json.RawMessage(`4`), "10.0.0.5": json.RawMessage(`"bob"`),
	})
	res, err := p.SyncIdentities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res != (SyncResult{Fetched: 5, Invalid: 2, Put: 3}) {
		t.Fatalf("first sync %+v", res)
	}
	v6, _ := incident.ParseIP("2001:db8::1")
	if e, err := kv.Get(ctx, topology.IdentityKey(v6)); err != nil || string(e.Value()) != "2" {
		t.Fatalf("IPv6 identity: %v %v", e, err)
	}

	// Changed keys put, vanished keys deleted, unchanged left alone.
	sim.SetIdentities(map[string]json.RawMessage{"10.0.0.1": json.RawMessage(`1`), "2001:db8::1": json.RawMessage(`7`)})
	res, err = p.SyncIdentities(ctx)
	if err != nil || res.Put != 1 || res.Deleted != 1 {
		t.Fatalf("second sync %+v %v; want 1 put, 1 deleted", res, err)
	}
	if _, err := kv.Get(ctx, "10.0.0.3"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("vanished identity still there: %v", err)
	}

	// An empty answer never wipes the bucket.
	sim.SetIdentities(map[string]json.RawMessage{})
	if _, err := p.SyncIdentities(ctx); !errors.Is(err, ErrEmptyIdentities) {
		t.Fatalf("empty identities: err %v", err)
	}
	sim.SetFaults(simulator.Faults{FailRate: 1})
	if _, err := p.SyncIdentities(ctx); err == nil {
		t.Fatal("failing identities sync succeeded")
	}
	keys, err := kv.Keys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("after empty and failed syncs the bucket holds %v (%v), want the 2 identities", keys, err)
	}
}
