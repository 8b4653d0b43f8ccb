// Package view holds the documents of the INCIDENT_VIEW bucket: one per
// employee, grouped by priority and sorted by timestamp, exactly as
// GET /incidents shows it, and one per unresolved IP for the incidents not
// yet attributed.
package view

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// Entry is one incident of a document.
type Entry struct {
	ID        string
	Priority  int // incident.Priority index; set by EntryOf
	Timestamp incident.Timestamp
	JSON      json.RawMessage // the incident as the view shows it, "type" first
}

// EntryOf returns the view entry of a decoded incident.
func EntryOf(in incident.Incident) Entry {
	return Entry{ID: in.ID, Priority: in.Priority.Index(), Timestamp: in.Timestamp, JSON: in.ViewJSON()}
}

// parseEntry reads back an incident stored in a document.
func parseEntry(raw json.RawMessage) (Entry, error) {
	id, ts, err := incident.ViewEntry(raw)
	if err != nil {
		return Entry{}, fmt.Errorf("decoding stored incident: %w", err)
	}
	return Entry{ID: id, Timestamp: ts, JSON: raw}, nil
}

// compareEntries orders by timestamp, then by id so that the order of equal
// timestamps does not depend on arrival order.
func compareEntries(a, b Entry) int {
	if c := a.Timestamp.Compare(b.Timestamp); c != 0 {
		return c
	}
	switch {
	case a.ID < b.ID:
		return -1
	case a.ID > b.ID:
		return 1
	}
	return 0
}

// List is a sorted set of incidents, without duplicate ids.
type List []Entry

// Insert adds e in order; it reports false when an entry with e's id is
// already there.
func (l *List) Insert(e Entry) bool {
	if l.Index(e.ID) >= 0 {
		return false
	}
	i, _ := slices.BinarySearchFunc(*l, e, compareEntries)
	*l = slices.Insert(*l, i, e)
	return true
}

// Index returns the position of the entry with id, or -1.
func (l List) Index(id string) int {
	return slices.IndexFunc(l, func(e Entry) bool { return e.ID == id })
}

// Remove deletes the entry with id; it reports whether there was one.
func (l *List) Remove(id string) bool {
	i := l.Index(id)
	if i < 0 {
		return false
	}
	*l = slices.Delete(*l, i, i+1)
	return true
}

// appendJSON appends {"count":N,"incidents":[...]}.
func (l List) appendJSON(b *bytes.Buffer) {
	fmt.Fprintf(b, `{"count":%d,"incidents":[`, len(l))
	for i, e := range l {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(e.JSON)
	}
	b.WriteString("]}")
}

type bucketJSON struct {
	Count     int               `json:"count"`
	Incidents []json.RawMessage `json:"incidents"`
}

func parseList(bj bucketJSON) (List, error) {
	l := make(List, 0, len(bj.Incidents))
	for _, raw := range bj.Incidents {
		e, err := parseEntry(raw)
		if err != nil {
			return nil, err
		}
		l = append(l, e)
	}
	slices.SortStableFunc(l, compareEntries)
	return l, nil
}

// Employee is one employee's document: the four priority buckets.
type Employee struct {
	Buckets [4]List // indexed by incident.Priority.Index()
}

// ParseEmployee decodes a stored employee document.
func ParseEmployee(data []byte) (*Employee, error) {
	lists, err := bucketMember(data, "incidents")
	if err != nil {
		return nil, err
	}
	d := &Employee{}
	for i, raw := range lists {
		if raw == nil {
			continue
		}
		items, err := incident.ArrayElements(raw)
		if err != nil {
			return nil, fmt.Errorf("decoding employee document: %w", err)
		}
		if d.Buckets[i], err = parseList(bucketJSON{Incidents: items}); err != nil {
			return nil, err
		}
	}
	return d, nil
}

// Counts returns the count of each priority bucket of a stored employee
// document, without decoding its incidents.
func Counts(data []byte) ([4]int, error) {
	var counts [4]int
	raws, err := bucketMember(data, "count")
	if err != nil {
		return counts, err
	}
	for i, raw := range raws {
		if raw == nil {
			continue
		}
		if counts[i], err = strconv.Atoi(string(raw)); err != nil {
			return counts, fmt.Errorf("decoding employee document: count %s", raw)
		}
	}
	return counts, nil
}

// bucketMember returns, for each priority bucket of an employee document,
// the bytes of its member key ("count" or "incidents"), nil where absent.
func bucketMember(data []byte, key string) ([4][]byte, error) {
	var out [4][]byte
	buckets, err := incident.ObjectMembers(data)
	if err != nil {
		return out, fmt.Errorf("decoding employee document: %w", err)
	}
	for _, b := range buckets {
		i := incident.Priority(b.Key).Index()
		if i < 0 {
			continue
		}
		members, err := incident.ObjectMembers(b.Value)
		if err != nil {
			return out, fmt.Errorf("decoding employee document: %w", err)
		}
		for _, m := range members {
			if m.Key == key {
				out[i] = m.Value
			}
		}
	}
	return out, nil
}

// Add folds an incident in; it reports false when the document already holds
// it, in which case nothing changes.
func (d *Employee) Add(in incident.Incident) bool {
	i := in.Priority.Index()
	if i < 0 {
		return false
	}
	for j := range d.Buckets {
		if j != i && d.Buckets[j].Index(in.ID) >= 0 {
			return false
		}
	}
	return d.Buckets[i].Insert(EntryOf(in))
}

// Count returns the number of incidents in the document.
func (d *Employee) Count() int {
	n := 0
	for _, l := range d.Buckets {
		n += len(l)
	}
	return n
}

// MarshalJSON encodes the document as GET /incidents shows it: all four
// priorities, lowest first.
func (d *Employee) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, p := range incident.Priorities() {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q:", p)
		d.Buckets[i].appendJSON(&b)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// Timestamps returns the timestamps of a stored employee document's
// incidents, by priority, without decoding (or hashing) them otherwise.
func Timestamps(data []byte) ([4][]float64, error) {
	var out [4][]float64
	lists, err := bucketMember(data, "incidents")
	if err != nil {
		return out, err
	}
	for i, raw := range lists {
		if raw == nil {
			continue
		}
		items, err := incident.ArrayElements(raw)
		if err != nil {
			return out, fmt.Errorf("decoding employee document: %w", err)
		}
		for _, it := range items {
			members, err := incident.ObjectMembers(it)
			if err != nil {
				return out, fmt.Errorf("decoding employee document: %w", err)
			}
			for _, m := range members {
				if m.Key == "timestamp" {
					if ts, err := incident.ParseTimestamp(m.Value); err == nil {
						out[i] = append(out[i], ts.Value)
					}
				}
			}
		}
	}
	return out, nil
}
