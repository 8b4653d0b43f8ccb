package enricher

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// TestHandleBatch: one batch with an attributed, an unattributed, a
// resolvable and an invalid incident gives each its outcome, and the
// enriched copies are stored before the batch is done.
func TestHandleBatch(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	raws := []struct{ typ, body string }{
		{"misuse", `{"priority":"low","employee_id":5,"timestamp":1}`},
		{"probing", `{"priority":"low","ip":"10.9.9.9","timestamp":2}`},
		{"probing", `{"priority":"high","ip":"10.0.0.1","timestamp":3}`},
		{"misuse", `{"priority":"low","timestamp":4}`},
	}
	for _, r := range raws {
		m := nats.NewMsg(topology.RawSubject(incident.Type(r.typ)))
		m.Data = []byte(r.body)
		m.Header.Set(topology.HeaderMsgID, incident.ID(incident.Type(r.typ), m.Data))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamRaw, topology.EnricherConsumer())
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(len(raws), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != len(raws) {
		t.Fatalf("fetched %d", len(msgs))
	}
	e, err := New(Options{JS: js, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	e.ids.m[netip.MustParseAddr("10.0.0.1")] = "77"
	out := e.handle(ctx, msgs)
	want := []stage.Verdict{stage.Ack, stage.Ack, stage.Ack, stage.Reject}
	for i, o := range out {
		if o.Verdict != want[i] {
			t.Errorf("message %d: %v (%v), want %v", i, o.Verdict, o.Err, want[i])
		}
	}
	if r := incident.ReasonOf(out[3].Err); r != incident.ReasonMissingIdentity && r != incident.ReasonMissingTimestamp {
		t.Errorf("invalid incident's reason %q", r)
	}
	if out[3].ID != incident.ID(incident.Misuse, []byte(raws[3].body)) {
		t.Errorf("the dead letter's id %q is not the incident's", out[3].ID)
	}
	s, _ := js.Stream(ctx, topology.StreamEnriched)
	for _, subject := range []string{"incidents.enriched.5", "incidents.enriched.77", "incidents.enriched.unattributed.10.9.9.9"} {
		if _, err := s.GetLastMsgForSubject(ctx, subject); err != nil {
			t.Errorf("nothing stored on %s: %v", subject, err)
		}
	}
}
