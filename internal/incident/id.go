package incident

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
)

// ID returns the canonical id of an incident of type t: a hash of the type
// and the content, so the same incident polled twice, with its members in
// another order or other white space, has one id. It is defined for any
// bytes, so that invalid incidents get a stable id too.
func ID(t Type, raw []byte) string {
	if fields, err := objectFields(raw); err == nil {
		return idOfFields(t, fields)
	}
	h := sha256.New()
	h.Write([]byte("invalid\x00" + string(t) + "\x00"))
	h.Write(bytes.TrimSpace(raw))
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// ViewID returns the id of an incident as the view shows it ("type" inside).
// ViewID(in.ViewJSON()) == in.ID.
func ViewID(view []byte) (string, error) {
	id, _, err := ViewEntry(view)
	return id, err
}

// ViewEntry returns the id and the timestamp of an incident as the view
// shows it, reading it once.
func ViewEntry(view []byte) (string, Timestamp, error) {
	fields, err := objectFieldsKeepType(view)
	if err != nil {
		return "", Timestamp{}, err
	}
	var ts Timestamp
	for _, f := range fields {
		if f.Key == "timestamp" {
			if ts, err = ParseTimestamp(f.Value); err != nil {
				return "", Timestamp{}, err
			}
		}
	}
	var t Type
	rest := fields[:0:0]
	for _, f := range fields {
		if f.Key == "type" {
			_ = json.Unmarshal(f.Value, (*string)(&t))
			continue
		}
		rest = append(rest, f)
	}
	return idOfFields(t, rest), ts, nil
}

func objectFieldsKeepType(raw []byte) ([]Field, error) {
	raw = bytes.TrimSpace(raw)
	if !json.Valid(raw) {
		return nil, invalid(ReasonInvalidJSON, "stored incident is not valid JSON")
	}
	return scanObject(raw, true)
}

func idOfFields(t Type, fields []Field) string {
	size := 16
	for _, f := range fields {
		size += len(f.Key) + len(f.Value) + 4
	}
	b := bytes.NewBuffer(make([]byte, 0, size))
	b.WriteString(`{"type":`)
	writeString(b, string(t))
	sorted := make([]Field, len(fields))
	copy(sorted, fields)
	// Last member wins for a duplicated key, as when decoding into a map.
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Key < sorted[j].Key })
	for i, f := range sorted {
		if i+1 < len(sorted) && sorted[i+1].Key == f.Key {
			continue
		}
		b.WriteByte(',')
		writeString(b, f.Key)
		b.WriteByte(':')
		writeCanonical(b, f.Value)
	}
	b.WriteByte('}')
	sum := sha256.Sum256(b.Bytes())
	return hex.EncodeToString(sum[:16])
}

// writeCanonical writes a JSON value with object keys sorted, no white space,
// strings re-escaped one way and numbers in a normal decimal form.
func writeCanonical(b *bytes.Buffer, raw json.RawMessage) {
	raw = bytes.TrimSpace(raw)
	if len(raw) > 0 {
		switch c := raw[0]; {
		case c == '-' || c >= '0' && c <= '9':
			b.Write(canonicalNumber(raw))
			return
		case c == 't' || c == 'f' || c == 'n':
			b.Write(raw)
			return
		case c == '"':
			if s, ok := stringContent(raw); ok {
				writeString(b, s)
				return
			}
		}
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		b.Write(raw)
		return
	}
	writeCanonicalValue(b, v)
}

func writeCanonicalValue(b *bytes.Buffer, v any) {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		b.WriteByte('{')
		for i, k := range keys {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, k)
			b.WriteByte(':')
			writeCanonicalValue(b, x[k])
		}
		b.WriteByte('}')
	case []any:
		b.WriteByte('[')
		for i, e := range x {
			if i > 0 {
				b.WriteByte(',')
			}
			writeCanonicalValue(b, e)
		}
		b.WriteByte(']')
	case string:
		writeString(b, x)
	case json.Number:
		b.Write(canonicalNumber([]byte(x)))
	case bool:
		if x {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	default:
		b.WriteString("null")
	}
}

// canonicalNumber drops trailing zeros of a plain decimal fraction, so that
// 1.50 and 1.5 are the same content. Numbers with an exponent stay as they
// are; normalising them exactly would cost more than it buys.
func canonicalNumber(s []byte) []byte {
	if bytes.ContainsAny(s, "eE") || !bytes.Contains(s, []byte(".")) {
		return s
	}
	s = bytes.TrimRight(s, "0")
	return bytes.TrimSuffix(s, []byte("."))
}
