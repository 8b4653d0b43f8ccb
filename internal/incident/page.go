package incident

import "fmt"

// spanEnd returns the index of the ',', '}' or ']' that ends the value
// starting at i, at the value's own depth. Strings and brackets are
// followed, not validated, so that a value that is not JSON still has an
// end; brackets that do not match, or input that ends first, are errors.
func spanEnd(b []byte, i int) (int, error) {
	var open [64]byte
	stack := open[:0] // open brackets; on the stack unless nested deeper
	for ; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			end, ok := closeString(b, i)
			if !ok {
				return 0, &errCutOff{"cut off inside a string"}
			}
			i = end - 1
		case '{', '[':
			stack = append(stack, c)
		case '}', ']':
			if len(stack) == 0 {
				return i, nil
			}
			if o := stack[len(stack)-1]; (o == '{') != (c == '}') {
				return 0, fmt.Errorf("'%c' closes '%c' at byte %d", c, o, i)
			}
			stack = stack[:len(stack)-1]
		case ',':
			if len(stack) == 0 {
				return i, nil
			}
		}
	}
	return 0, &errCutOff{"cut off: the page ends inside a value"}
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
