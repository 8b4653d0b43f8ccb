package view

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/incidentpipe/pipeline/internal/incident"
)

func mustDecode(t *testing.T, typ incident.Type, raw string) incident.Incident {
	t.Helper()
	in, err := incident.Decode(typ, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestEmployeeFoldSortsAndDedups(t *testing.T) {
	tests := []struct {
		name string
		adds []string // misuse incidents, folded in this order
		want string   // timestamps of the high bucket, in order
		n    int
	}{
		{"in order", []string{"1", "2", "3"}, "1,2,3", 3},
		{"reversed", []string{"3", "2", "1"}, "1,2,3", 3},
		{"duplicates", []string{"2", "1", "2", "1"}, "1,2", 2},
		{"same value other digits", []string{"2.5", "1", "2.50"}, "1,2.5", 2},
		// Equal values are the same content, however written (README).
		{"exponent and plain", []string{"10", "9.99", "1e1", "1.0E+1", "0.1e2"}, "9.99,10", 2},
		{"negative exponent", []string{"0.015", "1.5e-2", "15E-3"}, "0.015", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := &Employee{}
			for _, ts := range tt.adds {
				d.Add(mustDecode(t, incident.Misuse, `{"priority":"high","employee_id":1,"timestamp":`+ts+`}`))
			}
			var got []string
			for _, e := range d.Buckets[incident.High.Index()] {
				got = append(got, e.Timestamp.Literal)
			}
			if strings.Join(got, ",") != tt.want || d.Count() != tt.n {
				t.Fatalf("high = %v (count %d), want %s (%d)", got, d.Count(), tt.want, tt.n)
			}
		})
	}
}

func TestEmployeeDocumentRoundTrip(t *testing.T) {
	d := &Employee{}
	raws := []string{
		`{"priority":"low","employee_id":7,"timestamp":1629254311.8207245,"extra":{"nested":[1,2.50]},"name":"Zoë"}`,
		`{"priority":"critical","employee_id":7,"timestamp":5}`,
		`{"priority":"low","employee_id":7,"timestamp":1629254311.8207245,"tie":true}`,
	}
	for _, r := range raws {
		if !d.Add(mustDecode(t, incident.Misuse, r)) {
			t.Fatalf("Add(%s) = false", r)
		}
	}
	b, _ := d.MarshalJSON()
	var doc map[string]struct {
		Count     int               `json:"count"`
		Incidents []json.RawMessage `json:"incidents"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("document is not JSON: %v\n%s", err, b)
	}
	if len(doc) != 4 || doc["low"].Count != 2 || doc["critical"].Count != 1 || doc["medium"].Incidents == nil {
		t.Fatalf("document %s", b)
	}
	if !strings.Contains(string(b), `"timestamp":1629254311.8207245,"extra":{"nested":[1,2.50]},"name":"Zoë"`) {
		t.Errorf("values changed: %s", b)
	}
	back, err := ParseEmployee(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range raws {
		if back.Add(mustDecode(t, incident.Misuse, r)) {
			t.Errorf("re-adding %s to the parsed document changed it", r)
		}
	}
	again, _ := back.MarshalJSON()
	if string(again) != string(b) {
		t.Errorf("round trip changed the document:\n%s\n%s", b, again)
	}
}

func TestUnattributedTombstones(t *testing.T) {
	in := mustDecode(t, incident.Probing, `{"priority":"low","ip":"10.0.0.1","timestamp":1}`)
	u := &Unattributed{}
	if !u.Add(in) || u.Add(in) {
		t.Fatal("Add should add once")
	}
	if !u.MarkAttributed(in.ID) || len(u.Incidents) != 0 {
		t.Fatal("MarkAttributed should remove the incident")
	}
	if u.Add(in) {
		t.Fatal("a late unattributed copy came back after attribution")
	}
	b, _ := u.MarshalJSON()
	back, err := ParseUnattributed(b)
	if err != nil || back.Add(in) {
		t.Fatalf("tombstone lost in round trip: %s %v", b, err)
	}
	merged := MergeUnattributed([]*Unattributed{
		{Incidents: List{EntryOf(mustDecode(t, incident.Probing, `{"priority":"low","ip":"10.0.0.2","timestamp":3}`))}},
		{Incidents: List{EntryOf(mustDecode(t, incident.Other, `{"priority":"low","identifier":"10.0.0.3","timestamp":2}`))}},
	})
	want := `{"count":2,"incidents":[{"type":"other","priority":"low","identifier":"10.0.0.3","timestamp":2},{"type":"probing","priority":"low","ip":"10.0.0.2","timestamp":3}]}`
	if string(merged) != want {
		t.Errorf("merged = %s\nwant %s", merged, want)
	}
}

func BenchmarkEmployeeFold(b *testing.B) {
	var ins []incident.Incident
	for i := range 50 {
		in, _ := incident.Decode(incident.Misuse, []byte(fmt.Sprintf(`{"priority":"high","employee_id":1,"timestamp":%d.5}`, 1000-i)))
		ins = append(ins, in)
	}
	d := &Employee{}
	for _, in := range ins[:49] {
		d.Add(in)
	}
	data, _ := d.MarshalJSON()
	b.ReportAllocs()
	for b.Loop() {
		doc, _ := ParseEmployee(data)
		doc.Add(ins[49])
		_, _ = doc.MarshalJSON()
	}
}

// TestManifestInlinePieces: inline pieces round-trip through the stored
// value and assemble with keyed ones; a value whose inline bytes do not add
// up is refused.
func TestManifestInlinePieces(t *testing.T) {
	low := []Entry{EntryOf(mustDecode(t, incident.Misuse, `{"priority":"low","employee_id":1,"timestamp":1}`))}
	high := []Entry{EntryOf(mustDecode(t, incident.Misuse, `{"priority":"high","employee_id":1,"timestamp":2}`))}
	crit := []Entry{EntryOf(mustDecode(t, incident.Misuse, `{"priority":"critical","employee_id":1,"timestamp":3}`))}
	m := &Manifest{Pieces: []PieceRef{InlineRefOf(0, low), RefOf("1.k", 2, high), InlineRefOf(3, crit)}}
	value := m.Encode()
	back, err := ParseManifest(value)
	if err != nil {
		t.Fatal(err)
	}
	if back.Inline() || !back.Pieces[0].Inline() || back.Pieces[1].Inline() || !back.Pieces[2].Inline() {
		t.Fatalf("pieces read back as %+v", back.Pieces)
	}
	got, err := Assemble(back, func(k string) ([]byte, bool) {
		if k != "1.k" {
			return nil, false
		}
		frag, err := PieceIncidents(EncodePiece(high))
		return frag, err == nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := &Employee{}
	want.Buckets[0], want.Buckets[2], want.Buckets[3] = low, high, crit
	if w, _ := want.MarshalJSON(); string(got) != string(w) {
		t.Fatalf("assembled\n%s\nwant\n%s", got, w)
	}
	head, _, _ := strings.Cut(string(value), "\n")
	for name, bad := range map[string]string{
		"inline bytes missing":   head,
		"bytes after the pieces": string(value) + "x",
		"neither key nor bytes":  `{"v":2,"pieces":[{"k":"","p":0,"n":1,"lo":1,"hi":1}]}`,
		"negative length":        `{"v":2,"pieces":[{"k":"","b":-1,"p":0,"n":1,"lo":1,"hi":1}]}` + "\n",
	} {
		if _, err := ParseManifest([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
