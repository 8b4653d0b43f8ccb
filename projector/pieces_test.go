package projector

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/embedded"
	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/testkit"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// defaultNATS is a server with NATS's default 1 MB max payload.
func defaultNATS(t *testing.T) (jetstream.JetStream, jetstream.KeyValue) {
	t.Helper()
	_, js := testkit.Connect(t, testkit.JetStreamWith(t, embedded.Options{MaxPayload: 1 << 20}))
	kv, err := js.KeyValue(context.Background(), topology.BucketView)
	if err != nil {
		t.Fatal(err)
	}
	return js, kv
}

func entries(t testing.TB, emp, from, n int, priority string) []view.Entry {
	t.Helper()
	out := make([]view.Entry, n)
	for i := range n {
		in, err := incident.Decode(incident.Misuse, fmt.Appendf(nil,
			`{"priority":%q,"employee_id":%d,"timestamp":%d.5,"note":"incident %d of a busy employee, padded to a realistic size"}`, priority, emp, from+i, from+i))
		if err != nil {
			t.Fatal(err)
		}
		out[i] = view.EntryOf(in)
	}
	return out
}

// checkDocument reads employee's document as a reader does and checks it
// holds exactly want incidents per priority, in timestamp order.
func checkDocument(t *testing.T, js jetstream.JetStream, emp string, want [4]int) []byte {
	t.Helper()
	doc, err := Document(context.Background(), js, emp)
	if err != nil {
		t.Fatal(err)
	}
	d, err := view.ParseEmployee(doc)
	if err != nil {
		t.Fatalf("document does not parse: %v", err)
	}
	counts, _ := view.Counts(doc)
	for p := range 4 {
		if len(d.Buckets[p]) != want[p] || counts[p] != want[p] {
			t.Fatalf("priority %d: %d incidents (count %d), want %d", p, len(d.Buckets[p]), counts[p], want[p])
		}
	}
	return doc
}

// TestManyIncidentsOneEmployee: an employee's document grows past NATS's
// max payload many times over and stays whole, every stored value small.
func TestManyIncidentsOneEmployee(t *testing.T) {
	js, kv := defaultNATS(t)
	ps := newPieces()
	ctx := context.Background()
	const n = 30_000 // about 5 MB of document
	for from := 0; from < n; from += 1000 {
		batch := entries(t, 7, from, 1000, "high")
		if added, err := ps.fold(ctx, js, kv, "7", batch); err != nil || added != 1000 {
			t.Fatalf("fold at %d: %d added, %v", from, added, err)
		}
	}
	// Incidents in the middle and before everything land in order.
	if added, err := ps.fold(ctx, js, kv, "7", append(entries(t, 7, -5, 5, "high"), entries(t, 7, 100, 10, "high")...)); err != nil || added != 5 {
		t.Fatalf("fold of old and known incidents: %d added, %v", added, err)
	}
	doc := checkDocument(t, js, "7", [4]int{0, 0, n + 5, 0})
	if len(doc) < 4<<20 {
		t.Fatalf("document of %d bytes; the test wants one past the max payload", len(doc))
	}
	var d struct {
		High struct {
			Incidents []struct{ Timestamp float64 } `json:"incidents"`
		} `json:"high"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(d.High.Incidents); i++ {
		if d.High.Incidents[i].Timestamp < d.High.Incidents[i-1].Timestamp {
			t.Fatalf("incident %d out of order", i)
		}
	}
	keys, _ := kv.ListKeys(ctx)
	pieces := 0
	for k := range keys.Keys() {
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		if len(e.Value()) > view.MaxPieceBytes {
			t.Errorf("%s holds %d bytes", k, len(e.Value()))
		}
		if _, ok := view.IsPieceKey(k); ok {
			pieces++
		}
	}
	// Replaced pieces are removed: about 5 MB in 128 KiB pieces.
	if pieces < 40 || pieces > 120 {
		t.Errorf("%d pieces stored for a 5 MB document", pieces)
	}
	// A fresh projector (empty cache) folds the same incidents: nothing new.
	if added, err := newPieces().fold(ctx, js, kv, "7", entries(t, 7, 0, 1000, "high")); err != nil || added != 0 {
		t.Fatalf("refold: %d added, %v", added, err)
	}
}

// TestWholeDocumentOfEarlierVersion: a document stored whole (before
// pieces) is served as it is and becomes pieces at its next change,
// losing nothing.
func TestWholeDocumentOfEarlierVersion(t *testing.T) {
	js, kv := defaultNATS(t)
	ctx := context.Background()
	old := &view.Employee{}
	for _, e := range entries(t, 9, 0, 3, "low") {
		old.Buckets[0] = append(old.Buckets[0], e)
	}
	for _, e := range entries(t, 9, 10, 2, "critical") {
		old.Buckets[3] = append(old.Buckets[3], e)
	}
	whole, _ := old.MarshalJSON()
	if _, err := kv.Put(ctx, "9", whole); err != nil {
		t.Fatal(err)
	}
	if doc := checkDocument(t, js, "9", [4]int{3, 0, 0, 2}); string(doc) != string(whole) {
		t.Fatalf("whole document read back as %s", doc)
	}
	if added, err := newPieces().fold(ctx, js, kv, "9", append(entries(t, 9, 0, 1, "low"), entries(t, 9, 50, 1, "medium")...)); err != nil || added != 1 {
		t.Fatalf("fold into a whole document: %d added, %v", added, err)
	}
	checkDocument(t, js, "9", [4]int{3, 1, 0, 2})
	if e, _ := kv.Get(ctx, "9"); !view.IsManifest(e.Value()) {
		t.Fatalf("still a whole document after a change: %.60s", e.Value())
	}
}

// TestSmallDocumentInline: a small document is one value, its pieces
// inline in the manifest; past view.InlineBytes they move under keys of
// their own; the document is exact throughout.
func TestSmallDocumentInline(t *testing.T) {
	js, kv := defaultNATS(t)
	ctx := context.Background()
	ps := newPieces()
	pieceKeys := func() int {
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for k := range keys.Keys() {
			if emp, ok := view.IsPieceKey(k); ok && emp == "4" {
				n++
			}
		}
		return n
	}
	if _, err := ps.fold(ctx, js, kv, "4", append(entries(t, 4, 0, 3, "low"), entries(t, 4, 10, 2, "critical")...)); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.fold(ctx, js, kv, "4", entries(t, 4, 20, 1, "low")); err != nil {
		t.Fatal(err)
	}
	checkDocument(t, js, "4", [4]int{4, 0, 0, 2})
	e, err := kv.Get(ctx, "4")
	if err != nil {
		t.Fatal(err)
	}
	m, err := view.ParseManifest(e.Value())
	if err != nil || !m.Inline() || len(m.Pieces) != 2 {
		t.Fatalf("small document: manifest %+v, %v; want two inline pieces", m, err)
	}
	if n := pieceKeys(); n != 0 {
		t.Fatalf("small document: %d piece keys, want none", n)
	}
	// A fresh projector reads the inline pieces: nothing is added twice.
	if added, err := newPieces().fold(ctx, js, kv, "4", entries(t, 4, 0, 3, "low")); err != nil || added != 0 {
		t.Fatalf("refold of inline incidents: %d added, %v", added, err)
	}
	// Outgrowing InlineBytes: every piece moves under a key of its own.
	big := entries(t, 4, 100, 400, "medium")
	if added, err := ps.fold(ctx, js, kv, "4", big); err != nil || added != 400 {
		t.Fatalf("fold past inline: %d added, %v", added, err)
	}
	checkDocument(t, js, "4", [4]int{4, 400, 0, 2})
	e, _ = kv.Get(ctx, "4")
	if m, err = view.ParseManifest(e.Value()); err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Pieces {
		if r.Inline() {
			t.Fatalf("a large document keeps an inline piece: %+v", r)
		}
	}
	if n := pieceKeys(); n != len(m.Pieces) {
		t.Fatalf("%d piece keys for %d pieces", n, len(m.Pieces))
	}
}

// TestConcurrentWritersAndReader: two projectors fold into one employee at
// once; a reader never sees a document with an incident missing that an
// earlier read showed, nor a broken one, and the end is exact.
func TestConcurrentWritersAndReader(t *testing.T) {
	for _, tc := range []struct {
		name         string
		per, batches int
	}{
		{"keyed pieces", 400, 10},
		{"inline, then keyed", 5, 60}, // about 60 KB in all: outgrows inline half-way
	} {
		t.Run(tc.name, func(t *testing.T) { concurrentWritersAndReader(t, tc.per, tc.batches) })
	}
}

func concurrentWritersAndReader(t *testing.T, per, batches int) {
	js, kv := defaultNATS(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for w := range 2 {
		ps := newPieces()
		wg.Go(func() {
			for b := range batches {
				batch := entries(t, 5, (w*batches+b)*per, per, "medium")
				for {
					_, err := ps.fold(ctx, js, kv, "5", batch)
					if err == errConflict {
						continue
					}
					if err != nil {
						errs <- err
					}
					break
				}
			}
		})
	}
	done := make(chan struct{})
	readerErr := make(chan error, 1)
	go func() {
		defer close(readerErr)
		seen := 0
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			select {
			case <-done:
				return
			default:
			}
			doc, err := Document(ctx, js, "5")
			if err == ErrNoDocument {
				continue
			}
			if err != nil {
				readerErr <- err
				return
			}
			c, err := view.Counts(doc)
			if err != nil {
				readerErr <- fmt.Errorf("a broken document: %v", err)
				return
			}
			if c[1] < seen || c[1]%per != 0 {
				readerErr <- fmt.Errorf("a half-updated document: %d incidents after %d", c[1], seen)
				return
			}
			seen = c[1]
		}
	}()
	wg.Wait()
	close(done)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if err := <-readerErr; err != nil {
		t.Fatal(err)
	}
	checkDocument(t, js, "5", [4]int{0, 2 * per * batches, 0, 0})
}

// BenchmarkFoldIntoLargeDocument folds one new incident into an employee of
// 20,000, as the projector does: the cost follows the piece, not the
// document.
func BenchmarkFoldIntoLargeDocument(b *testing.B) {
	_, js := testkit.Connect(b, testkit.JetStream(b))
	kv, _ := js.KeyValue(context.Background(), topology.BucketView)
	p, _ := New(Options{JS: js, Registerer: prometheus.NewRegistry()})
	ctx := context.Background()
	for from := 0; from < 20_000; from += 2000 {
		if _, err := p.pieces.fold(ctx, js, kv, "3", entries(b, 3, from, 2000, "low")); err != nil {
			b.Fatal(err)
		}
	}
	i := 0
	b.ResetTimer()
	for b.Loop() {
		i++
		if added, err := p.pieces.fold(ctx, js, kv, "3", entries(b, 3, 100_000+i, 1, "low")); err != nil || added != 1 {
			b.Fatal(err)
		}
	}
}

// TestCommitConflict: two projectors prepare changes of one employee from
// the same manifest and write them together; one wins, the other is told
// errConflict, its new pieces go, and folding again loses nothing.
func TestCommitConflict(t *testing.T) {
	js, kv := defaultNATS(t)
	ctx := context.Background()
	a, b := newPieces(), newPieces()
	a.inlineBytes, b.inlineBytes = 0, 0 // pieces under keys of their own, which a conflict must purge
	if _, err := a.fold(ctx, js, kv, "8", entries(t, 8, 0, 10, "low")); err != nil {
		t.Fatal(err)
	}
	b.forgetManifest("8")
	ca, err := a.prepare(ctx, kv, "8", entries(t, 8, 100, 5, "low"))
	if err != nil || ca == nil {
		t.Fatal(err)
	}
	cb, err := b.prepare(ctx, kv, "8", entries(t, 8, 200, 5, "low"))
	if err != nil || cb == nil {
		t.Fatal(err)
	}
	if errs := a.commit(ctx, js, []*change{ca}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	if errs := b.commit(ctx, js, []*change{cb}); errs[0] != errConflict {
		t.Fatalf("the second commit on the same manifest: %v, want errConflict", errs[0])
	}
	if added, err := b.fold(ctx, js, kv, "8", entries(t, 8, 200, 5, "low")); err != nil || added != 5 {
		t.Fatalf("fold after the conflict: %d, %v", added, err)
	}
	checkDocument(t, js, "8", [4]int{20, 0, 0, 0})
	// The losing change's pieces were purged: every piece is named.
	m, _ := kv.Get(ctx, "8")
	manifest, _ := view.ParseManifest(m.Value())
	named := map[string]bool{}
	for _, r := range manifest.Pieces {
		named[r.Key] = true
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		keys, _ := kv.ListKeys(ctx)
		for k := range keys.Keys() {
			if emp, ok := view.IsPieceKey(k); ok && emp == "8" && !named[k] {
				return false, "piece " + k + " is named by no manifest"
			}
		}
		return true, ""
	})
}

// TestReadManifests: one request reads many employees' manifests with the
// revision a write builds on: stored ones, absent ones (0), deleted ones
// (the marker's); whole documents of an earlier version are left to a
// read of their own; the server's answer cap of 1024 is split across
// requests by prefetch.
func TestReadManifests(t *testing.T) {
	js, kv := defaultNATS(t)
	ctx := context.Background()
	ps := newPieces()
	if _, err := ps.fold(ctx, js, kv, "1", entries(t, 1, 0, 3, "low")); err != nil {
		t.Fatal(err)
	}
	if _, err := ps.fold(ctx, js, kv, "2", entries(t, 2, 0, 2, "high")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "2"); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "3", []byte(`{"critical":{"count":0,"incidents":[]}}`)); err != nil {
		t.Fatal(err)
	}
	stored, _ := kv.Get(ctx, "1")
	found, err := readManifests(ctx, js.Conn(), []string{"1", "2", "3", "4"})
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := found["1"]; !ok || k.rev != stored.Revision() || k.m.Counts() != [4]int{3, 0, 0, 0} {
		t.Errorf("stored manifest: %+v, %v", k, ok)
	}
	if k, ok := found["2"]; !ok || k.rev <= stored.Revision() || len(k.m.Pieces) != 0 {
		t.Errorf("deleted: %+v, %v; want an empty manifest at the marker's revision", k, ok)
	}
	if _, ok := found["3"]; ok {
		t.Error("a whole document of an earlier version was read as a manifest")
	}
	if k, ok := found["4"]; !ok || k.rev != 0 || len(k.m.Pieces) != 0 {
		t.Errorf("absent: %+v, %v; want an empty manifest at revision 0", k, ok)
	}
	if found, err := readManifests(ctx, js.Conn(), []string{"98", "99"}); err != nil || len(found) != 2 || found["99"].rev != 0 {
		t.Errorf("none stored: %+v, %v", found, err)
	}

	// More employees than one request answers; a fold from what prefetch
	// remembered builds on the right revisions.
	var many []string
	for i := range 2500 {
		many = append(many, fmt.Sprint(1000+i))
	}
	for _, emp := range many[:1100] {
		if _, err := ps.fold(ctx, js, kv, emp, entries(t, 7, 0, 1, "low")); err != nil {
			t.Fatal(err)
		}
	}
	fresh := newPieces()
	fresh.prefetch(ctx, js, append(many, "1", "2"))
	if len(fresh.manifests) != len(many)+2 {
		t.Fatalf("prefetch remembered %d manifests, want %d", len(fresh.manifests), len(many)+2)
	}
	for i, emp := range many {
		if stored := i < 1100; stored != (fresh.manifests[emp].rev > 0) {
			t.Fatalf("employee %s: stored %v, prefetched revision %d", emp, stored, fresh.manifests[emp].rev)
		}
	}
	for _, emp := range []string{"1", "2", "1001", "3400"} {
		if _, err := fresh.fold(ctx, js, kv, emp, entries(t, 7, 100, 1, "medium")); err != nil {
			t.Fatalf("fold into %s after prefetch: %v", emp, err)
		}
	}
	checkDocument(t, js, "1", [4]int{3, 1, 0, 0})
	checkDocument(t, js, "2", [4]int{0, 1, 0, 0})
	checkDocument(t, js, "1001", [4]int{1, 1, 0, 0})
	checkDocument(t, js, "3400", [4]int{0, 1, 0, 0})
}

// TestKeptManifestsMakeRoomForABatch: manifests read for a batch are all
// kept even when the memory for them is full: the older ones go first.
func TestKeptManifestsMakeRoomForABatch(t *testing.T) {
	ps := newPieces()
	ps.keep("old", known{m: &view.Manifest{}})
	ps.manifestBytes = maxManifestBytes - 100 // as if full
	batch := map[string]known{}
	for i := range 50 {
		batch[fmt.Sprint(i)] = known{m: &view.Manifest{}, rev: uint64(i)}
	}
	ps.keepAll(batch)
	for emp := range batch {
		if _, ok := ps.manifests[emp]; !ok {
			t.Fatalf("manifest %s of the batch was not kept", emp)
		}
	}
	if _, ok := ps.manifests["old"]; ok || ps.manifestBytes > maxManifestBytes {
		t.Errorf("full memory: the old manifest kept %v, %d bytes counted", ok, ps.manifestBytes)
	}
}
