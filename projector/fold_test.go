package projector

import (
	"fmt"
	"testing"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/view"
)

func decodeMisuse(t testing.TB, emp int, ts string) incident.Incident {
	t.Helper()
	in, err := incident.Decode(incident.Misuse, []byte(fmt.Sprintf(`{"priority":"high","employee_id":%d,"timestamp":%s}`, emp, ts)))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestFoldIsIdempotent(t *testing.T) {
	a, b := decodeMisuse(t, 1, "2"), decodeMisuse(t, 1, "1")
	pl := &plan{key: "1", ops: []op{{kind: opEmployee, in: a}, {kind: opEmployee, in: b}, {kind: opEmployee, in: a}}}
	out, added, err := fold(pl, nil)
	if err != nil || added != 2 {
		t.Fatalf("fold: %d added, %v", added, err)
	}
	again, added, err := fold(pl, out)
	if err != nil || again != nil || added != 0 {
		t.Fatalf("folding the same incidents again changed the document: %s (%d, %v)", again, added, err)
	}
	doc, _ := view.ParseEmployee(out)
	if l := doc.Buckets[incident.High.Index()]; len(l) != 2 || l[0].Timestamp.Literal != "1" {
		t.Fatalf("document %s", out)
	}
}

func TestFoldUnattributedThenAttributed(t *testing.T) {
	in, err := incident.Decode(incident.Probing, []byte(`{"priority":"low","ip":"10.0.0.1","timestamp":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// Resolution first (another projector), the unattributed copy late.
	out, _, err := fold(&plan{key: "unattributed.10.0.0.1", ops: []op{{kind: opAttributed, in: in}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	late, _, err := fold(&plan{key: "unattributed.10.0.0.1", ops: []op{{kind: opUnattributed, in: in}}}, out)
	if err != nil || late != nil {
		t.Fatalf("a late unattributed copy came back: %s %v", late, err)
	}
}

// BenchmarkFold folds one new incident into a stored document of ten, as
// the projector does for each employee of a batch.
func BenchmarkFold(b *testing.B) {
	var ops []op
	for i := range 10 {
		ops = append(ops, op{kind: opEmployee, in: decodeMisuse(b, 7, fmt.Sprintf("%d.5", 1000+i))})
	}
	stored, _, _ := fold(&plan{key: "7", ops: ops}, nil)
	pl := &plan{key: "7", ops: []op{{kind: opEmployee, in: decodeMisuse(b, 7, "2000.25")}}}
	b.ReportAllocs()
	for b.Loop() {
		if out, _, err := fold(pl, stored); err != nil || out == nil {
			b.Fatal(err)
		}
	}
}
