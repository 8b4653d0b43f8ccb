package api

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
)

const doc7 = `{"low":{"count":0,"incidents":[]},"medium":{"count":0,"incidents":[]},"high":{"count":1,"incidents":[{"type":"misuse","priority":"high","employee_id":7,"timestamp":2}]},"critical":{"count":0,"incidents":[]}}`

// TestFollowsAReplacedBucket: the README's rebuild by hand (the view's
// bucket deleted, the projector's consumer removed, the projector
// restarted) under a running API. While the bucket is gone and while the
// new one fills, the API serves its last complete view; once the
// projector has caught up it serves the new one, and open /events streams
// get `reset` (the versions start again).
func TestFollowsAReplacedBucket(t *testing.T) {
	hs, kv, a := serveAPI(t, Options{})
	ctx := context.Background()
	js := a.js
	for i := range 5 { // the old view is at a version the new one is not
		if _, err := kv.PutString(ctx, "42", strings.Replace(doc42, `"timestamp":1`, fmt.Sprintf(`"timestamp":%d`, i+1), 1)); err != nil {
			t.Fatal(err)
		}
	}
	serves := func(employee string) (bool, string) {
		resp, b := do(t, http.MethodGet, hs.URL+"/incidents", "")
		return resp.StatusCode == http.StatusOK && strings.Contains(string(b), `"`+employee+`":`), fmt.Sprintf("/incidents %d %.200s", resp.StatusCode, b)
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		ok, why := serves("42")
		return ok && a.store.snap.Load().version >= 6, why
	})
	events := openStream(t, hs.URL, "")
	t.Cleanup(events.close)

	// Deleted: the last view is served.
	if err := js.DeleteKeyValue(ctx, topology.BucketView); err != nil {
		t.Fatal(err)
	}
	if err := js.DeleteConsumer(ctx, topology.StreamEnriched, topology.ConsumerProjector); err != nil && err != jetstream.ErrConsumerNotFound {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second) // past the API's checks of the bucket (every second)
	for time.Now().Before(deadline) {
		if ok, why := serves("42"); !ok {
			t.Fatalf("while the bucket is gone: %s", why)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Recreated by a projector that has one message still to fold: the
	// new bucket, partly filled, is not served yet.
	if err := topology.Ensure(ctx, js, topology.DefaultOptions()); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, topology.EnrichedSubject("7"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	cons, err := topology.EnsureConsumer(ctx, js, topology.StreamEnriched, topology.ProjectorConsumer())
	if err != nil {
		t.Fatal(err)
	}
	kv, err = js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.PutString(ctx, "7", doc7); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		if ok, why := serves("42"); !ok {
			t.Fatalf("while the new bucket fills: %s", why)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// The projector catches up: the new view is served, streams reset.
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		ok, why := serves("7")
		gone, _ := serves("42")
		return ok && !gone, why
	})
	testkit.Eventually(t, 5*time.Second, func() (bool, string) {
		select {
		case name := <-events.events:
			return name == "reset", "event " + name
		default:
			return false, "no reset event yet"
		}
	})
	// A client that comes back with an id of the old view is reset too.
	if got := readEvents(t, hs.URL+"/events", "6", 1, nil); len(got) == 0 || !strings.HasPrefix(got[0], "reset ") {
		t.Errorf("resuming from the old view's version 6: %v; want a reset", got)
	}
	// And the new view's changes are sent as usual.
	if _, err := kv.PutString(ctx, "8", strings.ReplaceAll(doc7, `"employee_id":7`, `"employee_id":8`)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) { return serves("8") })
}
