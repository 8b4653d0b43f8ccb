package incident

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Reason is why an incident is invalid: a short, stable token used as the DLQ
// reason header and as a metric label.
type Reason string

// Reasons an incident is refused.
const (
	ReasonInvalidJSON      Reason = "invalid_json"
	ReasonNotObject        Reason = "not_object"
	ReasonUnknownPriority  Reason = "unknown_priority"
	ReasonMissingTimestamp Reason = "missing_timestamp"
	ReasonInvalidTimestamp Reason = "invalid_timestamp"
	ReasonMissingIdentity  Reason = "missing_identity"
	ReasonInvalidIdentity  Reason = "invalid_identity"
	ReasonUnknownType      Reason = "unknown_type"
	ReasonInvalidEnvelope  Reason = "invalid_envelope"
	ReasonInvalidUTF8      Reason = "invalid_utf8"
	ReasonTooDeep          Reason = "too_deep"
	ReasonDuplicateKey     Reason = "duplicate_key"
)

// Reasons returns every Reason, for metrics to start at zero.
func Reasons() []Reason {
	return []Reason{ReasonInvalidJSON, ReasonNotObject, ReasonUnknownPriority, ReasonMissingTimestamp,
		ReasonInvalidTimestamp, ReasonMissingIdentity, ReasonInvalidIdentity, ReasonUnknownType, ReasonInvalidEnvelope,
		ReasonInvalidUTF8, ReasonTooDeep, ReasonDuplicateKey}
}

// InvalidError is returned for an incident that cannot be processed.
type InvalidError struct {
	Reason Reason
	Detail string
}

func (e *InvalidError) Error() string { return string(e.Reason) + ": " + e.Detail }

// ReasonOf returns the Reason of an InvalidError in err's chain, or "" if none.
func ReasonOf(err error) Reason {
	var ie *InvalidError
	if errors.As(err, &ie) {
		return ie.Reason
	}
	return ""
}

func invalid(r Reason, format string, args ...any) error {
	return &InvalidError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Field is one top-level member of an incident object, its value kept as the
// exact bytes received.
type Field struct {
	Key   string
	Value json.RawMessage
}

// Incident is one upstream incident, validated, with its original fields kept
// byte for byte so that unknown fields and number formats survive.
type Incident struct {
	Type      Type
	ID        string
	Priority  Priority
	Timestamp Timestamp
	Identity  Identity
	Fields    []Field // in upstream order; never contains "type"
}

// Decode parses and validates one upstream incident of type t.
// The error is an *InvalidError saying why the incident is refused.
func Decode(t Type, raw []byte) (Incident, error) {
	in, err := decode(t, raw)
	if err != nil {
		return Incident{}, err
	}
	in.ID = idOfFields(t, in.Fields)
	return in, nil
}

// decode validates an incident without computing its id.
func decode(t Type, raw []byte) (Incident, error) {
	if _, err := ParseType(string(t)); err != nil {
		return Incident{}, invalid(ReasonUnknownType, "%v", err)
	}
	fields, err := objectFields(raw)
	if err != nil {
		return Incident{}, err
	}
	in := Incident{Type: t, Fields: fields}
	idField, kind := t.IdentityField()
	var havePriority, haveTimestamp, haveIdentity bool
	for _, f := range fields {
		switch f.Key {
		case "priority":
			p, ok := stringContent(f.Value)
			if !ok && json.Unmarshal(f.Value, &p) != nil || Priority(p).Index() < 0 {
				return Incident{}, invalid(ReasonUnknownPriority, "priority %s is not one of low, medium, high, critical", truncate(string(f.Value)))
			}
			in.Priority, havePriority = Priority(p), true
		case "timestamp":
			ts, err := ParseTimestamp(f.Value)
			if err != nil {
				return Incident{}, invalid(ReasonInvalidTimestamp, "%v", err)
			}
			in.Timestamp, haveTimestamp = ts, true
		}
		if f.Key == idField {
			if string(f.Value) == "null" {
				continue
			}
			id, err := parseIdentity(f.Value, kind)
			if err != nil {
				return Incident{}, invalid(ReasonInvalidIdentity, "%s: %v", idField, err)
			}
			in.Identity, haveIdentity = id, true
		}
	}
	switch {
	case !havePriority:
		return Incident{}, invalid(ReasonUnknownPriority, "priority is missing")
	case !haveTimestamp:
		return Incident{}, invalid(ReasonMissingTimestamp, "timestamp is missing")
	case !haveIdentity:
		return Incident{}, invalid(ReasonMissingIdentity, "%s is missing", idField)
	}
	return in, nil
}

// DecodeWithID is Decode for an incident whose canonical id travelled with
// it (the producers computed it once, as Nats-Msg-Id; the enricher carries
// it on): it validates without hashing again. Where id is not an id, it is
// computed.
func DecodeWithID(t Type, raw []byte, id string) (Incident, error) {
	if !isID(id) {
		return Decode(t, raw)
	}
	in, err := decode(t, raw)
	in.ID = id
	return in, err
}

// isID reports whether s has the form of an ID: 32 lowercase hex digits.
func isID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !('0' <= s[i] && s[i] <= '9' || 'a' <= s[i] && s[i] <= 'f') {
			return false
		}
	}
	return true
}

// MaxDepth is the deepest nesting of objects and arrays an incident may
// have; an incident nested deeper is refused (too_deep).
const MaxDepth = 32

// objectFields splits a JSON object into its top-level members, dropping any
// upstream "type" member: the view's "type" is always the incident type.
// An incident must be valid UTF-8 (the view is served as UTF-8 JSON, and
// replacing bad bytes would merge incidents that differ only in them), at
// most MaxDepth deep, valid JSON, and name each member once (which of two
// values is meant cannot be known).
func objectFields(raw []byte) ([]Field, error) {
	raw = bytes.TrimSpace(raw)
	if !utf8.Valid(raw) {
		return nil, invalid(ReasonInvalidUTF8, "incident is not valid UTF-8")
	}
	if d := depth(raw); d > MaxDepth {
		return nil, invalid(ReasonTooDeep, "incident nests deeper than %d levels", MaxDepth)
	}
	if !json.Valid(raw) {
		return nil, invalid(ReasonInvalidJSON, "incident is not valid JSON")
	}
	fields, err := scanObject(raw, true)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(fields))
	kept := fields[:0]
	for _, f := range fields {
		if seen[f.Key] {
			return nil, invalid(ReasonDuplicateKey, "member %s appears twice", truncate(strconv.Quote(f.Key)))
		}
		seen[f.Key] = true
		if f.Key != "type" {
			kept = append(kept, f)
		}
	}
	return kept, nil
}

// depth returns how deep objects and arrays nest in b, strings skipped,
// stopping once past MaxDepth.
func depth(b []byte) int {
	d, deepest := 0, 0
	for i := 0; i < len(b) && deepest <= MaxDepth; i++ {
		switch b[i] {
		case '"':
			end, _ := closeString(b, i)
			i = end - 1
		case '{', '[':
			d++
			deepest = max(deepest, d)
		case '}', ']':
			d--
		}
	}
	return deepest
}

// ViewJSON returns the incident as the view shows it: "type" first, then the
// upstream members in their order with their values unchanged (compacted).
func (in Incident) ViewJSON() []byte {
	return viewJSON(in.Type, in.Fields)
}

func viewJSON(t Type, fields []Field) []byte {
	size := 16
	for _, f := range fields {
		size += len(f.Key) + len(f.Value) + 4
	}
	b := make([]byte, 0, size)
	b = append(b, `{"type":`...)
	b = appendString(b, string(t))
	for _, f := range fields {
		b = append(b, ',')
		b = appendString(b, f.Key)
		b = append(b, ':')
		b = appendCompact(b, f.Value)
	}
	return append(b, '}')
}

// appendCompact appends a JSON value without insignificant white space.
func appendCompact(dst, v []byte) []byte {
	if !bytes.ContainsAny(v, " \t\n\r") {
		return append(dst, v...)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, v); err != nil {
		return append(dst, v...) // validated already; never reached
	}
	return append(dst, buf.Bytes()...)
}

// writeString writes s as a JSON string without HTML escaping.
func writeString(b *bytes.Buffer, s string) {
	b.Write(appendString(b.AvailableBuffer(), s))
}

// Timestamp is an incident timestamp: the JSON number exactly as received,
// and its value for ordering.
type Timestamp struct {
	Literal string
	Value   float64
}

// ParseTimestamp accepts a JSON number of Unix seconds within the years
// 0001 to 9999.
func ParseTimestamp(raw []byte) (Timestamp, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 && (raw[0] == '-' || raw[0] >= '0' && raw[0] <= '9') && json.Valid(raw) {
		f, err := strconv.ParseFloat(string(raw), 64)
		if err != nil || !inRange(f) {
			return Timestamp{}, outOfRange(string(raw))
		}
		return Timestamp{Literal: string(raw), Value: f}, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return Timestamp{}, fmt.Errorf("timestamp is not JSON: %w", err)
	}
	n, ok := v.(json.Number)
	if !ok {
		return Timestamp{}, fmt.Errorf("timestamp %s is not a number", truncate(string(raw)))
	}
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || !inRange(f) {
		return Timestamp{}, outOfRange(string(n))
	}
	return Timestamp{Literal: string(n), Value: f}, nil
}

// The timestamps accepted, in Unix seconds: the years 0001 to 9999, what
// every clock and date library can represent. Beyond them a value is no
// time at all, and arithmetic on it overflows (a score decayed by a
// negative age).
const (
	MinTimestamp = -62135596800 // 0001-01-01T00:00:00Z
	MaxTimestamp = 253402300799 // 9999-12-31T23:59:59Z
)

func inRange(f float64) bool { return f >= MinTimestamp && f <= MaxTimestamp } // false for NaN

func outOfRange(n string) error {
	return fmt.Errorf("timestamp %s is outside the years 0001 to 9999", truncate(n))
}

// Compare orders timestamps by value; it returns -1, 0 or +1.
func (a Timestamp) Compare(b Timestamp) int {
	switch {
	case a.Value < b.Value:
		return -1
	case a.Value > b.Value:
		return 1
	}
	return 0
}
