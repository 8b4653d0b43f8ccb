package pipeline_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// Hostile upstream data, written for this test: duplicates, every kind of
// invalid incident, an IP unknown until later, IPv6, equal timestamps,
// unicode, nested objects, unknown fields, integer timestamps.
const (
	m1          = `{"priority":"high","employee_id":100,"timestamp":1600000000.5,"note":"h\u00e9llo ☃ <b>","details":{"a":[1,2.50,{"b":null}]},"big":123456789012345678901234567890}`
	m1Again     = `{"priority":"high","employee_id":100,"timestamp":1600000000.5,"note":"h\u00e9llo ☃ <b>","details":{"a":[1,2.50,{"b":null}]},"big":123456789012345678901234567890}`
	m1Reordered = `{ "big": 123456789012345678901234567890, "details": {"a": [1, 2.50, {"b": null}]}, "note": "héllo ☃ <b>", "timestamp": 1600000000.5, "employee_id": 100, "priority": "high" }`
	m2          = `{"priority":"high","employee_id":"100","timestamp":1600000000.5}`
	p1          = `{"priority":"low","ip":"2001:DB8::7","timestamp":1600000100}`
	p2          = `{"priority":"critical","ip":"10.9.9.9","timestamp":1600000200}`
	p3          = `{"priority":"critical","ip":"10.9.9.9","timestamp":1600000900}`
	o1          = `{"priority":"medium","identifier":"10.9.9.9","timestamp":1600000300}`
	o2          = `{"priority":"medium","identifier":100,"timestamp":1599999999}`
	d1          = `{"priority":"low","reported_by":200,"timestamp":1600000100,"source_ip":"10.0.0.1"}`
)

// invalid incidents, by type, with the reason each must be dead-lettered for.
var invalid = []struct {
	typ    incident.Type
	raw    string
	reason incident.Reason
}{
	{incident.Misuse, `42`, incident.ReasonNotObject},
	{incident.Misuse, `null`, incident.ReasonNotObject},
	{incident.Misuse, `{"priority":"urgent","employee_id":1,"timestamp":1}`, incident.ReasonUnknownPriority},
	{incident.Misuse, `{"priority":"low","employee_id":1}`, incident.ReasonMissingTimestamp},
	{incident.Misuse, `{"priority":"low","employee_id":1,"timestamp":"soon"}`, incident.ReasonInvalidTimestamp},
	// Beyond the years 0001 to 9999: no time at all (1e300 once scored 0 in
	// the risk decay, as if ancient).
	{incident.Misuse, `{"priority":"critical","employee_id":1,"timestamp":1e300}`, incident.ReasonInvalidTimestamp},
	{incident.Intrusion, `{"priority":"low","employee_id":1,"timestamp":-62135596801}`, incident.ReasonInvalidTimestamp},
	{incident.Misuse, `{"priority":"low","timestamp":1}`, incident.ReasonMissingIdentity},
	{incident.Probing, `{"priority":"low","ip":"not-an-ip","timestamp":1}`, incident.ReasonInvalidIdentity},
	{incident.Other, `{"priority":"medium","identifier":"bob","timestamp":1}`, incident.ReasonInvalidIdentity},
}

func raws(s ...string) []json.RawMessage {
	out := make([]json.RawMessage, len(s))
	for i, x := range s {
		out[i] = json.RawMessage(x)
	}
	return out
}

// withType is the incident as the view must show it: "type" plus the
// upstream object, built here without the production code.
func withType(t incident.Type, raw string) string {
	return `{"type":"` + string(t) + `",` + strings.TrimPrefix(strings.TrimSpace(raw), "{")
}

// doc builds an employee document from priority → incidents.
func doc(buckets map[string][]string) string {
	var parts []string
	for _, p := range []string{"low", "medium", "high", "critical"} {
		parts = append(parts, fmt.Sprintf(`"%s":{"count":%d,"incidents":[%s]}`, p, len(buckets[p]), strings.Join(buckets[p], ",")))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func TestHostileUpstream(t *testing.T) {
	sim := simulator.NewServer("user", upstreamPW, simulator.Faults{FailRate: 0.2, PageSize: 3}, 11)
	hs := httptest.NewServer(sim)
	t.Cleanup(hs.Close)
	byType := map[incident.Type][]json.RawMessage{
		incident.Misuse:  raws(m1, m2, m1Again, m1Reordered),
		incident.Probing: raws(p1, p2),
		incident.Other:   raws(o1, o2),
		incident.Denial:  raws(d1),
	}
	for _, bad := range invalid {
		byType[bad.typ] = append(byType[bad.typ], json.RawMessage(bad.raw))
	}
	for typ, items := range byType {
		sim.SetIncidents(typ, items)
	}
	sim.SetIdentities(map[string]json.RawMessage{"2001:db8::7": json.RawMessage(`200`), "10.0.0.1": json.RawMessage(`999`)})

	r := start(t, t.TempDir(), hs.URL, nil)
	emp100 := doc(map[string][]string{"high": {withType("misuse", m1), withType("misuse", m2)}, "medium": {withType("other", o2)}})
	emp200 := doc(map[string][]string{"low": {withType("probing", p1), withType("denial", d1)}})
	before := `{"100":` + emp100 + `,"200":` + emp200 + `}`
	waitExact(t, r.URL, []byte(before), 60*time.Second)
	waitUnattributed(t, r.URL, []string{withType("probing", p2), withType("other", o1)})

	// Every invalid incident is in the DLQ once, with its reason.
	nc, err := nats.Connect(r.NATS)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	reasons := dlqReasons(t, js, len(invalid))
	var want []string
	for _, bad := range invalid {
		want = append(want, "incidents.dlq.enricher."+string(bad.typ)+" "+string(bad.reason))
	}
	sort.Strings(want)
	if strings.Join(reasons, "\n") != strings.Join(want, "\n") {
		t.Errorf("DLQ holds\n%s\nwant\n%s", strings.Join(reasons, "\n"), strings.Join(want, "\n"))
	}

	_, metrics, err := get(r.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if got := sumMetric(t, metrics, "incidents_dlq_total"); got != float64(len(invalid)) {
		t.Errorf("incidents_dlq_total = %v, want %d invalid incidents", got, len(invalid))
	}

	// The identity appears: its incidents move to the employee within seconds,
	// with no poll of the incident endpoints needed.
	sim.SetFaults(simulator.Faults{})
	sim.SetIncidents(incident.Probing, nil) // even an empty answer removes nothing
	sim.AddIdentity("10.9.9.9", json.RawMessage(`"300"`))
	emp300 := doc(map[string][]string{"critical": {withType("probing", p2)}, "medium": {withType("other", o1)}})
	after := `{"100":` + emp100 + `,"200":` + emp200 + `,"300":` + emp300 + `}`
	waitExact(t, r.URL, []byte(after), 30*time.Second)
	waitUnattributed(t, r.URL, nil)

	// The IP is reassigned: new incidents go to the new owner, old ones stay.
	sim.AddIdentity("10.9.9.9", json.RawMessage(`400`))
	sim.SetIncidents(incident.Probing, raws(p1, p2))
	testkit.Eventually(t, 20*time.Second, func() (bool, string) {
		kvJS, _ := js.KeyValue(context.Background(), topology.BucketIdentities)
		e, err := kvJS.Get(context.Background(), "10.9.9.9")
		return err == nil && string(e.Value()) == "400", "waiting for the reassignment to sync"
	})
	sim.SetIncidents(incident.Probing, raws(p1, p2, p3))
	emp400 := doc(map[string][]string{"critical": {withType("probing", p3)}})
	final := `{"100":` + emp100 + `,"200":` + emp200 + `,"300":` + emp300 + `,"400":` + emp400 + `}`
	waitExact(t, r.URL, []byte(final), 30*time.Second)
}

func waitUnattributed(t *testing.T, url string, want []string) {
	t.Helper()
	var wantCanon []string
	for _, w := range want {
		wantCanon = append(wantCanon, canon(t, w))
	}
	sort.Strings(wantCanon)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		code, body, err := get(url + "/unattributed")
		if err != nil || code != http.StatusOK {
			return false, fmt.Sprintf("GET /unattributed: %d %v", code, err)
		}
		var got struct {
			Count     int               `json:"count"`
			Incidents []json.RawMessage `json:"incidents"`
		}
		if err := json.Unmarshal(body, &got); err != nil {
			return false, err.Error()
		}
		var gotCanon []string
		for _, in := range got.Incidents {
			gotCanon = append(gotCanon, canon(t, string(in)))
		}
		sort.Strings(gotCanon)
		ok := got.Count == len(want) && strings.Join(gotCanon, "|") == strings.Join(wantCanon, "|")
		return ok, fmt.Sprintf("GET /unattributed = %s, want %d incidents %v", body, len(want), wantCanon)
	})
}

func canon(t *testing.T, s string) string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", s, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// dlqReasons waits until the DLQ holds n messages and returns "subject reason" of each.
func dlqReasons(t *testing.T, js jetstream.JetStream, n int) []string {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, topology.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(n), fmt.Sprintf("DLQ: %v %v", info, err)
	})
	var out []string
	for seq := uint64(1); ; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			break
		}
		if m.Header.Get(topology.HeaderDLQError) == "" {
			t.Errorf("DLQ message %d has no error detail", seq)
		}
		out = append(out, m.Subject+" "+m.Header.Get(topology.HeaderDLQReason))
	}
	sort.Strings(out)
	return out
}
