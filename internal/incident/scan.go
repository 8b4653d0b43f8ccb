package incident

import (
	"encoding/json"
	"unicode/utf8"
)

// The hot path decodes every incident of every poll: a small scanner over
// input already checked by json.Valid replaces encoding/json's reflection.

// skipSpace returns the index of the first non-space byte at or after i.
func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// valueEnd returns the index just past the JSON value starting at i in
// valid JSON b.
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	default: // number, true, false, null
		for i < len(b) {
			switch b[i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				return i
			}
			i++
		}
		return i
	}
}

// stringEnd returns the index just past the string starting at b[i] == '"'.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// scanObject splits a valid JSON object into its members, keys unescaped,
// values as their exact bytes.
func scanObject(b []byte, keepType bool) ([]Field, error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, invalid(ReasonNotObject, "incident is not a JSON object: %s", truncate(string(b)))
	}
	fields := make([]Field, 0, 6)
	i = skipSpace(b, i+1)
	for i < len(b) && b[i] != '}' {
		end := stringEnd(b, i)
		key, ok := stringContent(b[i:end])
		if !ok {
			if err := json.Unmarshal(b[i:end], &key); err != nil {
				return nil, invalid(ReasonInvalidJSON, "%v", err)
			}
		}
		i = skipSpace(b, end)
		i = skipSpace(b, i+1) // ':'
		vend := valueEnd(b, i)
		if keepType || key != "type" {
			fields = append(fields, Field{Key: key, Value: b[i:vend]})
		}
		i = skipSpace(b, vend)
		if i < len(b) && b[i] == ',' {
			i = skipSpace(b, i+1)
		}
	}
	return fields, nil
}

// stringContent returns the content of a JSON string literal that has no
// escapes, and false for one that has (the caller decodes those slowly).
func stringContent(lit []byte) (string, bool) {
	if len(lit) < 2 || lit[0] != '"' || lit[len(lit)-1] != '"' {
		return "", false
	}
	inner := lit[1 : len(lit)-1]
	for _, c := range inner {
		if c == '\\' || c < 0x20 {
			return "", false
		}
	}
	if !utf8.Valid(inner) {
		return "", false
	}
	return string(inner), true
}

// appendString appends s as a JSON string: no HTML escaping, control
// characters, U+2028 and U+2029 escaped, invalid UTF-8 as U+FFFD, the way
// encoding/json writes it.
func appendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ObjectMembers splits a JSON object into its members (all of them), values
// as their exact bytes, with a scanner rather than reflection.
func ObjectMembers(raw []byte) ([]Field, error) {
	raw = trimSpace(raw)
	if !json.Valid(raw) {
		return nil, invalid(ReasonInvalidJSON, "not valid JSON")
	}
	return scanObject(raw, true)
}

// ArrayElements splits a JSON array into its elements' exact bytes.
func ArrayElements(raw []byte) ([]json.RawMessage, error) {
	raw = trimSpace(raw)
	if !json.Valid(raw) || len(raw) == 0 || raw[0] != '[' {
		return nil, invalid(ReasonInvalidJSON, "not a JSON array")
	}
	var out []json.RawMessage
	i := skipSpace(raw, 1)
	for i < len(raw) && raw[i] != ']' {
		end := valueEnd(raw, i)
		out = append(out, raw[i:end])
		i = skipSpace(raw, end)
		if i < len(raw) && raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return out, nil
}

func trimSpace(b []byte) []byte {
	i := skipSpace(b, 0)
	j := len(b)
	for j > i && (b[j-1] == ' ' || b[j-1] == '\t' || b[j-1] == '\n' || b[j-1] == '\r') {
		j--
	}
	return b[i:j]
}
