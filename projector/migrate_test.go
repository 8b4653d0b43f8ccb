package projector

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// TestMigratesKeysSpeltOtherwise: a DATA_DIR of an earlier version holds
// employee 42's incidents under "0042" (a whole document), "00042" (in
// keyed pieces) and "42". Restarted on it, the projector moves them all to
// "42", each incident once, removes the other keys and their pieces, and
// marks the view so that it does not look again.
func TestMigratesKeysSpeltOtherwise(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	entry := func(ts int, extra string) view.Entry {
		raw := fmt.Sprintf(`{"priority":"low","employee_id":42,"timestamp":%d%s}`, ts, extra)
		in, err := incident.Decode(incident.Misuse, []byte(raw))
		if err != nil {
			t.Fatal(err)
		}
		return view.EntryOf(in)
	}
	// The earlier version's store.
	func() {
		s := testkit.JetStreamAt(t, dir)
		_, js := testkit.Connect(t, s)
		kv, err := js.KeyValue(ctx, topology.BucketView)
		if err != nil {
			t.Fatal(err)
		}
		whole := view.Employee{}
		whole.Buckets[0] = view.List{entry(1, ""), entry(2, "")}
		b, err := whole.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "0042", b); err != nil {
			t.Fatal(err)
		}
		p, err := New(Options{JS: js, Registerer: prometheus.NewRegistry()})
		if err != nil {
			t.Fatal(err)
		}
		var big []view.Entry // past InlineBytes: keyed pieces
		for i := range 400 {
			big = append(big, entry(100+i, `,"note":"`+strings.Repeat("x", 200)+`"`))
		}
		if err := p.foldEntries(ctx, kv, "00042", append(big, entry(2, ""))); err != nil {
			t.Fatal(err)
		}
		if err := p.foldEntries(ctx, kv, "42", []view.Entry{entry(1, ""), entry(3, "")}); err != nil {
			t.Fatal(err)
		}
		s.Shutdown()
		s.WaitForShutdown()
	}()

	_, js := testkit.Connect(t, testkit.JetStreamAt(t, dir))
	runProjector(t, js, 100)
	kv, _ := js.KeyValue(ctx, topology.BucketView)
	testkit.Eventually(t, 30*time.Second, func() (bool, string) {
		_, err := kv.Get(ctx, topology.CanonicalKeysKey)
		return err == nil, "not marked migrated yet"
	})
	d, err := Document(ctx, js, "42")
	if err != nil {
		t.Fatal(err)
	}
	if got := mustCounts(t, d); got != [4]int{403, 0, 0, 0} {
		t.Errorf("employee 42 holds %v incidents, want the 403 distinct ones", got)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for k := range keys.Keys() {
		if strings.HasPrefix(k, "0") {
			t.Errorf("key %q is left", k)
		}
	}
}
