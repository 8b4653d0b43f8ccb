package topology

import "testing"

// TestDLQSubjectTypeToken: the type token of a dead letter's subject is a
// known type or "invalid", whatever the message claimed its type was.
func TestDLQSubjectTypeToken(t *testing.T) {
	for _, tc := range []struct{ typ, want string }{
		{"misuse", "incidents.dlq.projector.misuse"},
		{"", "incidents.dlq.projector.invalid"},
		{"a b", "incidents.dlq.projector.invalid"},
		{"x.>", "incidents.dlq.projector.invalid"},
		{"*", "incidents.dlq.projector.invalid"},
		{"phishing", "incidents.dlq.projector.invalid"},
		{string(make([]byte, 10000)), "incidents.dlq.projector.invalid"},
	} {
		if got := DLQSubject(StageProjector, tc.typ); got != tc.want {
			t.Errorf("DLQSubject(%.20q) = %q, want %q", tc.typ, got, tc.want)
		}
	}
}
