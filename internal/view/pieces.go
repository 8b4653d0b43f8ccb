package view

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// An employee's document is stored in INCIDENT_VIEW in pieces, so that no
// value nears NATS's largest message however many incidents the employee
// has: under the employee's key a Manifest names the pieces; each piece,
// under a key of its own that is never written twice, holds a run of one
// priority's incidents in order. A writer puts the new pieces first, then
// swaps the manifest with compare-and-set, then deletes the pieces the old
// manifest named and the new one does not: a reader that follows the
// manifest sees an employee whole, before or after a change, never half.
//
// A small document (most employees) keeps its pieces inline instead: the
// stored value is the manifest's JSON line, then, after a newline, the
// inline pieces one after another (a ref's "b" is its length). One value is
// then the whole document, and a change is one write instead of a piece, a
// manifest and a purge. Once a document outgrows InlineBytes its pieces move
// under keys of their own, and stay there (documents only grow).

// MaxPieceBytes bounds a piece's encoded size: well under NATS's default
// 1 MB max payload, and small enough that rewriting the piece an incident
// lands in stays cheap.
const MaxPieceBytes = 128 << 10

// InlineBytes is the largest document whose pieces stay inline.
const InlineBytes = 32 << 10

// ManifestVersion marks a manifest; a value without it is a whole document
// as earlier versions stored it.
const ManifestVersion = 2

// Manifest lists an employee's pieces: by priority, lowest first, each
// priority's in timestamp order.
type Manifest struct {
	Version int        `json:"v"`
	Pieces  []PieceRef `json:"pieces"`
}

// PieceRef names one piece and what it covers.
type PieceRef struct {
	Key      string          `json:"k"`           // empty for an inline piece
	Size     int             `json:"b,omitempty"` // an inline piece's length
	Priority int             `json:"p"`           // incident.Priority index
	Count    int             `json:"n"`           // incidents in the piece
	First    json.RawMessage `json:"lo"`          // timestamp of the first incident
	Last     json.RawMessage `json:"hi"`          // timestamp of the last incident

	// lo and hi are First and Last read once (by RefOf or ParseManifest),
	// for Locate, which a writer calls for every incident it folds.
	lo, hi incident.Timestamp
	bad    bool   // First or Last is not a timestamp
	data   []byte // an inline piece, as EncodePiece stores it
}

// Inline reports whether the piece is stored inside the manifest's value.
func (r PieceRef) Inline() bool { return r.Size > 0 }

// Data returns an inline piece as EncodePiece stores it.
func (r PieceRef) Data() []byte { return r.data }

// InlineRefOf is a piece of priority p holding entries inside the manifest.
func InlineRefOf(p int, entries []Entry) PieceRef {
	r := RefOf("", p, entries)
	r.data = EncodePiece(entries)
	r.Size = len(r.data)
	return r
}

// Inline reports whether every piece of m is inline (true for none).
func (m *Manifest) Inline() bool {
	for _, r := range m.Pieces {
		if !r.Inline() {
			return false
		}
	}
	return true
}

// Counts returns the incidents per priority.
func (m *Manifest) Counts() [4]int {
	var c [4]int
	for _, r := range m.Pieces {
		if r.Priority >= 0 && r.Priority < 4 {
			c[r.Priority] += r.Count
		}
	}
	return c
}

// IsManifest reports whether a stored employee value is a manifest (not a
// whole document of an earlier version).
func IsManifest(value []byte) bool {
	return bytes.HasPrefix(bytes.TrimSpace(value), []byte(`{"v":`))
}

// ParseManifest decodes a manifest and its inline pieces.
func ParseManifest(value []byte) (*Manifest, error) {
	head, inline, _ := bytes.Cut(value, []byte{'\n'})
	var m Manifest
	if err := json.Unmarshal(head, &m); err != nil {
		return nil, fmt.Errorf("decoding manifest: %w", err)
	}
	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("decoding manifest: version %d, want %d", m.Version, ManifestVersion)
	}
	for i := range m.Pieces {
		r := &m.Pieces[i]
		var errLo, errHi error
		r.lo, errLo = incident.ParseTimestamp(r.First)
		r.hi, errHi = incident.ParseTimestamp(r.Last)
		r.bad = errLo != nil || errHi != nil
		switch {
		case r.Size < 0 || r.Size > len(inline):
			return nil, errors.New("decoding manifest: an inline piece overruns the value")
		case r.Size > 0:
			r.data, inline = inline[:r.Size:r.Size], inline[r.Size:]
		case r.Key == "":
			return nil, errors.New("decoding manifest: a piece has neither a key nor inline bytes")
		}
	}
	if len(inline) > 0 {
		return nil, errors.New("decoding manifest: bytes after the inline pieces")
	}
	return &m, nil
}

// Encode returns the stored manifest: its JSON line, then its inline pieces.
func (m *Manifest) Encode() []byte {
	m.Version = ManifestVersion
	b, _ := json.Marshal(m) // plain data: never fails
	newline := false
	for _, r := range m.Pieces {
		if !r.Inline() {
			continue
		}
		if !newline {
			b, newline = append(b, '\n'), true
		}
		b = append(b, r.data...)
	}
	return b
}

// pieceHeader is the first line of a stored piece: what a writer needs to
// fold into it without decoding or hashing its incidents again.
type pieceHeader struct {
	IDs  []string          `json:"ids"`
	TS   []json.RawMessage `json:"ts"`
	Lens []int             `json:"lens"`
}

// EncodePiece stores entries (one priority's, in order) as a piece: a
// header line, then the incidents as GET /incidents shows them, comma
// separated, ready to be concatenated by a reader.
func EncodePiece(entries []Entry) []byte {
	h := pieceHeader{IDs: make([]string, len(entries)), TS: make([]json.RawMessage, len(entries)), Lens: make([]int, len(entries))}
	size := 0
	for i, e := range entries {
		h.IDs[i], h.TS[i], h.Lens[i] = e.ID, json.RawMessage(e.Timestamp.Literal), len(e.JSON)
		size += len(e.JSON) + 1
	}
	head, _ := json.Marshal(h)
	b := make([]byte, 0, len(head)+1+size)
	b = append(b, head...)
	b = append(b, '\n')
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.JSON...)
	}
	return b
}

// DecodePiece reads a stored piece back into its entries.
func DecodePiece(value []byte) ([]Entry, error) {
	head, frag, ok := bytes.Cut(value, []byte{'\n'})
	if !ok {
		return nil, errors.New("decoding piece: no header")
	}
	var h pieceHeader
	if err := json.Unmarshal(head, &h); err != nil {
		return nil, fmt.Errorf("decoding piece: %w", err)
	}
	if len(h.IDs) != len(h.TS) || len(h.IDs) != len(h.Lens) {
		return nil, errors.New("decoding piece: header lists differ in length")
	}
	entries := make([]Entry, len(h.IDs))
	at := 0
	for i := range entries {
		if i > 0 {
			at++ // the comma
		}
		end := at + h.Lens[i]
		if h.Lens[i] <= 0 || end > len(frag) {
			return nil, errors.New("decoding piece: lengths overrun the incidents")
		}
		ts, err := incident.ParseTimestamp(h.TS[i])
		if err != nil {
			return nil, fmt.Errorf("decoding piece: %w", err)
		}
		entries[i] = Entry{ID: h.IDs[i], Timestamp: ts, JSON: frag[at:end:end]}
		at = end
	}
	if at != len(frag) {
		return nil, errors.New("decoding piece: bytes after the incidents")
	}
	return entries, nil
}

// PieceIncidents returns the incidents of a stored piece, comma separated,
// as they go inside a priority's "incidents" array.
func PieceIncidents(value []byte) ([]byte, error) {
	_, frag, ok := bytes.Cut(value, []byte{'\n'})
	if !ok {
		return nil, errors.New("decoding piece: no header")
	}
	return frag, nil
}

// Assemble writes the employee document a manifest describes, as
// GET /incidents shows it, from its inline pieces and the incidents of its
// other pieces (by piece key).
func Assemble(m *Manifest, incidents func(key string) ([]byte, bool)) ([]byte, error) {
	counts := m.Counts()
	frags := make([][]byte, len(m.Pieces))
	size := 2
	for i, r := range m.Pieces {
		var frag []byte
		if r.Inline() {
			var err error
			if frag, err = PieceIncidents(r.data); err != nil {
				return nil, fmt.Errorf("assembling the document: %w", err)
			}
		} else {
			var ok bool
			if frag, ok = incidents(r.Key); !ok {
				return nil, fmt.Errorf("assembling the document: piece %s is missing", r.Key)
			}
		}
		frags[i] = frag
		size += len(frag) + 1
	}
	for _, name := range incident.Priorities() {
		size += len(name) + 48 // the name, its count and the punctuation
	}
	// Sized once: the API keeps one of these per employee.
	b := make([]byte, 0, size)
	b = append(b, '{')
	for p, name := range incident.Priorities() {
		if p > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, string(name))
		b = append(b, `:{"count":`...)
		b = strconv.AppendInt(b, int64(counts[p]), 10)
		b = append(b, `,"incidents":[`...)
		first := true
		for i, r := range m.Pieces {
			if r.Priority != p {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			b = append(b, frags[i]...)
			first = false
		}
		b = append(b, "]}"...)
	}
	b = append(b, '}')
	return b, nil
}

// StoredSize is about what an entry costs in a piece: its JSON, its id,
// its timestamp and separators.
func (e Entry) StoredSize() int { return len(e.JSON) + len(e.ID) + len(e.Timestamp.Literal) + 16 }

// Split cuts one priority's entries, in order, into runs whose pieces stay
// under MaxPieceBytes.
func Split(entries []Entry) [][]Entry {
	var out [][]Entry
	start, size := 0, 0
	for i, e := range entries {
		cost := e.StoredSize()
		if size+cost > MaxPieceBytes-256 && i > start {
			out = append(out, entries[start:i:i])
			start, size = i, 0
		}
		size += cost
	}
	if start < len(entries) {
		out = append(out, entries[start:])
	}
	return out
}

// Locate returns the range [from, to) of m.Pieces that may hold an incident
// of priority p at timestamp ts (pieces whose span includes ts), and the
// index of the piece to insert it in (-1: the priority has no piece yet).
func (m *Manifest) Locate(p int, ts incident.Timestamp) (from, to, insert int) {
	from, to, insert = -1, -1, -1
	last := -1
	for i, r := range m.Pieces {
		if r.Priority != p {
			continue
		}
		last = i
		if r.bad {
			continue
		}
		if ts.Compare(r.hi) > 0 {
			continue // entirely before ts
		}
		if from < 0 {
			from, insert = i, i
		}
		if ts.Compare(r.lo) < 0 {
			break // entirely after ts
		}
		to = i + 1
	}
	if from >= 0 && to < from {
		to = from
	}
	if insert < 0 {
		insert = last // after every piece of p: append to the last
	}
	if from < 0 {
		from, to = 0, 0
	}
	return from, to, insert
}

// RefOf describes a piece of priority p holding entries under key.
func RefOf(key string, p int, entries []Entry) PieceRef {
	first, last := entries[0].Timestamp, entries[len(entries)-1].Timestamp
	return PieceRef{Key: key, Priority: p, Count: len(entries),
		First: json.RawMessage(first.Literal), Last: json.RawMessage(last.Literal), lo: first, hi: last}
}

// IsPieceKey reports whether a view key names a piece ("<employee>.<id>").
func IsPieceKey(key string) (employee string, ok bool) {
	i := strings.IndexByte(key, '.')
	if i <= 0 {
		return "", false
	}
	for j := 0; j < i; j++ {
		if key[j] < '0' || key[j] > '9' {
			return "", false
		}
	}
	return key[:i], true
}
