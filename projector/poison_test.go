package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/envelope"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

// TestPoisonTypesAreDeadLettered: enriched messages whose type is no
// subject token (a space, wildcards, 10,000 characters) are dead-lettered
// under the type token "invalid", and the projector goes on at once (such
// a type once made the dead letter's subject invalid, or too long for the
// server, and the projector retried it for ever).
func TestPoisonTypesAreDeadLettered(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	if err := topology.Ensure(ctx, js, topology.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	poison := []string{"a b", "x.>", strings.Repeat("t", 10000)}
	for i, typ := range poison {
		raw := fmt.Appendf(nil, `{"priority":"low","employee_id":7,"timestamp":%d}`, i)
		b := fmt.Appendf(nil, `{"id":"poison-%d","type":%q,"employee_id":"7","incident":%s}`, i, typ, raw)
		m := nats.NewMsg(topology.EnrichedSubject("7"))
		m.Data = b
		m.Header.Set(topology.HeaderMsgID, fmt.Sprint("poison-", i))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	publishEnriched(t, js, "7", []byte(`{"priority":"high","employee_id":7,"timestamp":100}`), 1)
	runProjector(t, js, 1)

	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		d, err := Document(ctx, js, "7")
		if err != nil {
			return false, err.Error()
		}
		return mustCounts(t, d) == [4]int{0, 0, 1, 0}, string(d)
	})
	dlq, err := js.Stream(ctx, topology.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		info, err := dlq.Info(ctx, jetstream.WithSubjectFilter(topology.DLQSubjects))
		if err != nil {
			return false, err.Error()
		}
		n := info.State.Subjects[topology.DLQSubject(topology.StageProjector, "")]
		return n == uint64(len(poison)), fmt.Sprintf("%d letters under the invalid type token, want %d (subjects %v)", n, len(poison), info.State.Subjects)
	})
}

// TestEmployeeNamedOnceCanonically: the employee is named by the subject,
// the envelope and (when it names one) the incident, each read in
// canonical form: "0042" files under 42, the key GET /incidents/42 and
// /incidents/0042 find; a message whose parts disagree is dead-lettered,
// never filed under one of them.
func TestEmployeeNamedOnceCanonically(t *testing.T) {
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	cases := []struct {
		name, subject, envEmployee, envIP, incident string
		reattributed, refused                       bool
	}{
		{"zeros in the envelope", "incidents.enriched.42", "0042", "", `{"priority":"low","employee_id":42,"timestamp":1}`, false, false},
		{"zeros in the subject and incident", "incidents.enriched.0042", "42", "", `{"priority":"low","employee_id":"0042","timestamp":2}`, false, false},
		{"a resolution on the ip's subject", "incidents.enriched.unattributed.10.0.0.9", "0042", "10.0.0.9", `{"priority":"low","ip":"10.0.0.9","timestamp":9}`, true, false},
		{"subject and envelope disagree", "incidents.enriched.123", "456", "", `{"priority":"low","employee_id":456,"timestamp":3}`, false, true},
		{"incident and envelope disagree", "incidents.enriched.42", "42", "", `{"priority":"low","employee_id":7,"timestamp":4}`, false, true},
		{"an employee's subject, unattributed envelope", "incidents.enriched.42", "", "10.0.0.9", `{"priority":"low","ip":"10.0.0.9","timestamp":5}`, false, true},
		{"unattributed subject, another ip", "incidents.enriched.unattributed.10.0.0.8", "", "10.0.0.9", `{"priority":"low","ip":"10.0.0.9","timestamp":6}`, false, true},
		{"unattributed subject, an employee, no resolution", "incidents.enriched.unattributed.10.0.0.9", "42", "10.0.0.9", `{"priority":"low","ip":"10.0.0.9","timestamp":7}`, false, true},
		{"a subject naming nobody", "incidents.enriched.x1", "42", "", `{"priority":"low","employee_id":42,"timestamp":8}`, false, true},
	}
	refused := 0
	for _, c := range cases {
		typ := incident.Misuse
		if c.envIP != "" {
			typ = incident.Probing
		}
		env := envelope.Enriched{ID: incident.ID(typ, []byte(c.incident)), Type: typ, EmployeeID: c.envEmployee, IP: c.envIP, Incident: json.RawMessage(c.incident)}
		b, err := env.Encode()
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(c.subject)
		m.Data = b
		if c.reattributed {
			m.Header.Set(topology.HeaderReattributed, "true")
		}
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.refused {
			refused++
		}
	}
	runProjector(t, js, 100)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		d, err := Document(ctx, js, "42")
		if err != nil {
			return false, err.Error()
		}
		return mustCounts(t, d) == [4]int{3, 0, 0, 0}, string(d)
	})
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		n := testkit.StreamMsgs(t, js, topology.StreamDLQ)
		return n == uint64(refused), fmt.Sprintf("%d dead-lettered, want %d", n, refused)
	})
	kv, _ := js.KeyValue(ctx, topology.BucketView)
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		if k == "0042" || k == "123" || k == "456" || k == "7" {
			t.Errorf("the view holds key %q", k)
		}
	}
}
