package projector

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// TestProjectAndRebuild: enriched incidents become documents; a live
// rebuild gives the same documents, and a lost one back, whether the view
// is folded in memory at once or in several writes; what arrives after
// the rebuild began is projected by the projectors.
func TestProjectAndRebuild(t *testing.T) {
	for _, tc := range []struct {
		name   string
		memory int
	}{{"in memory at once", 0}, {"in several writes", 4 << 10}} {
		t.Run(tc.name, func(t *testing.T) { projectAndRebuild(t, tc.memory) })
	}
}

// projected publishes 300 enriched incidents of employees 1–3 (each twice),
// runs a projector until the test ends, and returns their documents once
// whole.
func projected(t *testing.T) (jetstream.JetStream, map[string][]byte) {
	t.Helper()
	_, js := testkit.Connect(t, testkit.JetStream(t))
	ctx := context.Background()
	for i := range 300 {
		emp := fmt.Sprint(1 + i%3)
		raw := fmt.Appendf(nil, `{"priority":%q,"employee_id":%s,"timestamp":%d}`, incident.Priorities()[i%4], emp, i)
		publishEnriched(t, js, emp, raw, 2) // each twice: folding is idempotent
	}
	runProjector(t, js, 50)
	docs := map[string][]byte{}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		for _, emp := range []string{"1", "2", "3"} {
			d, err := Document(ctx, js, emp)
			if err != nil {
				return false, err.Error()
			}
			var n int
			for _, c := range mustCounts(t, d) {
				n += c
			}
			if n != 100 {
				return false, fmt.Sprintf("employee %s has %d incidents", emp, n)
			}
			docs[emp] = d
		}
		return true, ""
	})
	return js, docs
}

func projectAndRebuild(t *testing.T, memory int) {
	ctx := context.Background()
	js, docs := projected(t)
	kv, _ := js.KeyValue(ctx, topology.BucketView)
	if err := kv.Delete(ctx, "2"); err != nil {
		t.Fatal(err)
	}
	rb, rbCancel := context.WithTimeout(ctx, time.Minute)
	defer rbCancel()
	if err := Rebuild(rb, js, RebuildOptions{Memory: memory, Projector: Options{Registerer: prometheus.NewRegistry()}}); err != nil {
		t.Fatal(err)
	}
	for emp, want := range docs {
		got, err := Document(ctx, js, emp)
		if err != nil || string(got) != string(want) {
			t.Errorf("employee %s after the rebuild: %v\n%.200s\nwant\n%.200s", emp, err, got, want)
		}
	}
	// After the rebuild, the running projector goes on from where it ended.
	publishEnriched(t, js, "4", []byte(`{"priority":"high","employee_id":4,"timestamp":5000}`), 1)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		d, err := Document(ctx, js, "4")
		if err != nil {
			return false, err.Error()
		}
		return mustCounts(t, d) == [4]int{0, 0, 1, 0}, string(d)
	})
}

// TestRebuildThatDiedIsRunAgain: a rebuild killed half-way (or cut off by
// a power loss) leaves the view emptied and its marker behind; the marker's
// lease runs out and a running projector rebuilds the view again, so that
// nothing shown stays lost and the API does not hold the old view for ever.
func TestRebuildThatDiedIsRunAgain(t *testing.T) {
	ctx := context.Background()
	js, docs := projected(t)
	kv, err := js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	// What a dead rebuild leaves: its marker, expired, and a purged view.
	if _, err := kv.PutString(ctx, topology.RebuildKey, time.Now().Add(-time.Second).UTC().Format(time.RFC3339)); err != nil {
		t.Fatal(err)
	}
	if err := purgeView(ctx, js, kv); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		for emp, want := range docs {
			got, err := Document(ctx, js, emp)
			if err != nil || string(got) != string(want) {
				return false, fmt.Sprintf("employee %s not rebuilt: %v", emp, err)
			}
		}
		if _, err := kv.Get(ctx, topology.RebuildKey); err == nil {
			return false, "the rebuild marker is still there"
		}
		return true, ""
	})
}

func mustCounts(t *testing.T, doc []byte) [4]int {
	t.Helper()
	c, err := view.Counts(doc)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
