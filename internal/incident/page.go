package incident

import (
	"encoding/json"
	"errors"
	"fmt"
)

// DecodeResults splits a {"results": [...], "next": ...} page into its
// incidents, each kept as the exact bytes received (slices of body), plus
// the page's "next" link. One element that is not valid JSON (NaN, nesting
// deeper than any parser takes, stray bytes) is cut out alone and returned
// as it is, for Decode to refuse and the pipeline to dead-letter, so that
// the rest of its page goes on. A page whose structure cannot be followed
// (a cut-off body, brackets that do not match) is an error: nothing of it
// is returned.
func DecodeResults(body []byte) (items []json.RawMessage, next string, err error) {
	fail := func(format string, args ...any) ([]json.RawMessage, string, error) {
		return nil, "", fmt.Errorf("decoding incidents page: "+format, args...)
	}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return fail("not a JSON object")
	}
	if i = skipSpace(body, i+1); i < len(body) && body[i] == '}' {
		return nil, "", errors.New(`decoding incidents page: no "results" array`)
	}
	found := false
	for ; ; i = skipSpace(body, i+1) {
		if i >= len(body) || body[i] != '"' {
			return fail("expected a member name at byte %d", i)
		}
		end, ok := closeString(body, i)
		if !ok {
			return fail("cut off inside a member name")
		}
		var key string
		if err := json.Unmarshal(body[i:end], &key); err != nil {
			return fail("bad member name at byte %d", i)
		}
		i = skipSpace(body, end)
		if i >= len(body) || body[i] != ':' {
			return fail("expected ':' at byte %d", i)
		}
		i = skipSpace(body, i+1)
		switch key {
		case "results":
			if found {
				return fail(`"results" appears twice`)
			}
			if i >= len(body) || body[i] != '[' {
				return fail(`"results" is not an array`)
			}
			if items, i, err = splitArray(body, i); err != nil {
				return fail("%v", err)
			}
			found = true
		default:
			end, err := spanEnd(body, i)
			if err != nil {
				return fail("%v", err)
			}
			value := trimSpace(body[i:end])
			if key == "next" && string(value) != "null" {
				if err := json.Unmarshal(value, &next); err != nil {
					return fail(`"next" is not a string`)
				}
			}
			i = end
		}
		i = skipSpace(body, i)
		if i < len(body) && body[i] == ',' {
			continue
		}
		if i < len(body) && body[i] == '}' {
			break
		}
		return fail("expected ',' or '}' at byte %d", i)
	}
	if skipSpace(body, i+1) != len(body) {
		return fail("bytes after the page object")
	}
	if !found {
		return nil, "", errors.New(`decoding incidents page: no "results" array`)
	}
	if items == nil {
		items = []json.RawMessage{}
	}
	return items, next, nil
}

// splitArray splits the array starting at b[i] == '[' into its elements,
// each cut at the commas between them; it returns the index past ']'.
func splitArray(b []byte, i int) ([]json.RawMessage, int, error) {
	var out []json.RawMessage
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return out, i + 1, nil
	}
	for {
		end, err := spanEnd(b, i)
		if err != nil {
			return nil, 0, err
		}
		if elem := trimSpace(b[i:end]); len(elem) > 0 {
			out = append(out, elem)
		}
		switch b[end] {
		case ',':
			i = end + 1
		case ']':
			return out, end + 1, nil
		default:
			return nil, 0, fmt.Errorf("'}' closes the results array at byte %d", end)
		}
	}
}

// spanEnd returns the index of the ',', '}' or ']' that ends the value
// starting at i, at the value's own depth. Strings and brackets are
// followed, not validated, so that a value that is not JSON still has an
// end; brackets that do not match, or input that ends first, are errors.
func spanEnd(b []byte, i int) (int, error) {
	var stack []byte // open brackets
	for ; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			end, ok := closeString(b, i)
			if !ok {
				return 0, errors.New("cut off inside a string")
			}
			i = end - 1
		case '{', '[':
			stack = append(stack, c)
		case '}', ']':
			if len(stack) == 0 {
				return i, nil
			}
			if open := stack[len(stack)-1]; (open == '{') != (c == '}') {
				return 0, fmt.Errorf("'%c' closes '%c' at byte %d", c, open, i)
			}
			stack = stack[:len(stack)-1]
		case ',':
			if len(stack) == 0 {
				return i, nil
			}
		}
	}
	return 0, errors.New("cut off: the page ends inside a value")
}

// closeString returns the index past the string starting at b[i] == '"',
// and false when the input ends first.
func closeString(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1, true
		}
	}
	return len(b), false
}
