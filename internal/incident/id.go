package incident

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strconv"
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

// canonicalNumber writes a number so that equal decimal values are the same
// content: 1.50 and 1.5, 10 and 1e1 and 1.0E+1. A number with an exponent
// becomes plain decimal (unless the exponent is beyond ±maxExponent, when
// it stays as it is); a fraction loses its trailing zeros. Numbers without
// an exponent keep the form earlier versions hashed, so ids do not change.
func canonicalNumber(s []byte) []byte {
	if i := bytes.IndexAny(s, "eE"); i >= 0 {
		plain, ok := plainDecimal(s[:i], s[i+1:])
		if !ok {
			return s
		}
		s = plain
	}
	if !bytes.Contains(s, []byte(".")) {
		return s
	}
	s = bytes.TrimRight(s, "0")
	return bytes.TrimSuffix(s, []byte("."))
}

// maxExponent bounds the exponents written out in full.
const maxExponent = 400

// plainDecimal writes mantissa × 10^exponent (a valid JSON number's parts)
// without an exponent.
func plainDecimal(mantissa, exponent []byte) ([]byte, bool) {
	x, err := strconv.Atoi(string(exponent))
	if err != nil || x > maxExponent || x < -maxExponent {
		return nil, false
	}
	neg := mantissa[0] == '-'
	if neg {
		mantissa = mantissa[1:]
	}
	whole, frac, _ := bytes.Cut(mantissa, []byte("."))
	digits := append(append([]byte{}, whole...), frac...)
	point := len(whole) + x // digits before the decimal point
	var out []byte
	if neg {
		out = append(out, '-')
	}
	switch {
	case point <= 0:
		out = append(out, "0."...)
		out = append(out, bytes.Repeat([]byte("0"), -point)...)
		out = append(out, digits...)
	case point >= len(digits):
		out = append(out, digits...)
		out = append(out, bytes.Repeat([]byte("0"), point-len(digits))...)
	default:
		out = append(out, digits[:point]...)
		out = append(out, '.')
		out = append(out, digits[point:]...)
	}
	// Leading zeros of the whole part (0012 from 0.012e3) go.
	start := 0
	if neg {
		start = 1
	}
	for start+1 < len(out) && out[start] == '0' && out[start+1] != '.' {
		out = append(out[:start], out[start+1:]...)
	}
	return out, true
}
