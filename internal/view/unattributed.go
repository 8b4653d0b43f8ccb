package view

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// Unattributed is the document of one IP that no identity covered when its
// incidents were enriched. Attributed keeps the ids that have since moved to
// an employee, so that a late or redelivered unattributed copy of the same
// incident does not come back.
type Unattributed struct {
	Incidents  List
	Attributed []string
}

type unattributedJSON struct {
	Count      int               `json:"count"`
	Incidents  []json.RawMessage `json:"incidents"`
	Attributed []string          `json:"attributed,omitempty"`
}

// ParseUnattributed decodes a stored unattributed document.
func ParseUnattributed(data []byte) (*Unattributed, error) {
	var raw unattributedJSON
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decoding unattributed document: %w", err)
	}
	l, err := parseList(bucketJSON{Incidents: raw.Incidents})
	if err != nil {
		return nil, err
	}
	return &Unattributed{Incidents: l, Attributed: raw.Attributed}, nil
}

// Add keeps an incident as unattributed unless it was attributed already; it
// reports whether the document changed.
func (u *Unattributed) Add(in incident.Incident) bool {
	if slices.Contains(u.Attributed, in.ID) {
		return false
	}
	return u.Incidents.Insert(EntryOf(in))
}

// MarkAttributed removes the incident id and remembers it as attributed; it
// reports whether the document changed.
func (u *Unattributed) MarkAttributed(id string) bool {
	removed := u.Incidents.Remove(id)
	if slices.Contains(u.Attributed, id) {
		return removed
	}
	u.Attributed = append(u.Attributed, id)
	return true
}

// MarshalJSON encodes the document: {"count","incidents"} as GET
// /unattributed shows it, plus the ids attributed since.
func (u *Unattributed) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	u.Incidents.appendJSON(&b)
	if len(u.Attributed) > 0 {
		ids, _ := json.Marshal(u.Attributed)
		b.Truncate(b.Len() - 1) // reopen the object
		b.WriteString(`,"attributed":`)
		b.Write(ids)
		b.WriteByte('}')
	}
	return b.Bytes(), nil
}

// MergeUnattributed returns the GET /unattributed document of many
// unattributed documents: all their incidents in one sorted list.
func MergeUnattributed(docs []*Unattributed) []byte {
	var all List
	for _, d := range docs {
		all = append(all, d.Incidents...)
	}
	slices.SortStableFunc(all, compareEntries)
	var b bytes.Buffer
	all.appendJSON(&b)
	return b.Bytes()
}
