package projector

import (
	"testing"

	"github.com/incidentpipe/pipeline/internal/incident"
)

func TestFoldUnattributedThenAttributed(t *testing.T) {
	in, err := incident.Decode(incident.Probing, []byte(`{"priority":"low","ip":"10.0.0.1","timestamp":1}`))
	if err != nil {
		t.Fatal(err)
	}
	// Resolution first (another projector), the unattributed copy late.
	out, _, err := foldUnattributed(&plan{key: "unattributed.10.0.0.1", ops: []op{{kind: opAttributed, in: in}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	late, _, err := foldUnattributed(&plan{key: "unattributed.10.0.0.1", ops: []op{{kind: opUnattributed, in: in}}}, out)
	if err != nil || late != nil {
		t.Fatalf("a late unattributed copy came back: %s %v", late, err)
	}
}
