package projector

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

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
