package incident

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
)

// ScanOptions configure ScanResults.
type ScanOptions struct {
	// Skip, when set, drops an incident (the i-th element of the page, its
	// exact bytes valid only during the call) instead of keeping it: one
	// known already. A poll of an upstream that returns every incident each
	// time keeps only what is new.
	Skip func(i int, raw []byte) bool
	// Hold, when set, is told before the memory the scan holds (its read
	// window and the incidents it keeps) grows by n bytes; an error ends
	// the scan with that error.
	Hold func(n int64) error
	// MaxWindow caps the read window (0: none). An incident longer than it
	// is not kept but read past and reported in Results.TooLarge, so that
	// it costs itself only; any other value longer than it fails the page.
	MaxWindow int
}

// Results is a page read by ScanResults.
type Results struct {
	Items []json.RawMessage // the incidents kept, each a copy of its exact bytes
	Count int               // every element of "results", kept or skipped
	Next  string            // the "next" link ("" for none)
	// TooLarge are the elements longer than ScanOptions.MaxWindow.
	TooLarge []Oversize
}

// PageError is a page whose structure cannot be followed.
type PageError struct{ msg string }

func (e *PageError) Error() string { return "decoding incidents page: " + e.msg }

// ScanResults reads a {"results": [...], "next": ...} page from r as it
// arrives, holding only a window of the body and the incidents it keeps,
// never the whole body. The rules are DecodeResults': an element that is
// not valid JSON is cut out alone and kept, for Decode to refuse; a page
// whose structure cannot be followed is a *PageError and nothing of it is
// returned. Errors of r and of o.Hold are returned as they are.
func ScanResults(r io.Reader, o ScanOptions) (Results, error) {
	s := &pageScanner{r: r, hold: o.Hold, maxWindow: o.MaxWindow}
	res, err := s.page(o.Skip)
	if errors.Is(err, errTooLong) {
		err = s.fail("a value outside \"results\" is longer than %d bytes", s.maxWindow)
	}
	if err != nil {
		return Results{}, err
	}
	return res, nil
}

// errTooLong is a value longer than the read window.
var errTooLong = errors.New("value longer than the read window")

// DecodeResults splits a whole page held in memory: ScanResults over body,
// keeping every element.
func DecodeResults(body []byte) (items []json.RawMessage, next string, err error) {
	res, err := ScanResults(bytes.NewReader(body), ScanOptions{})
	return res.Items, res.Next, err
}

// errCutOff is a value the input ends inside of; the scanner reads more
// and tries again, unless the input has ended.
type errCutOff struct{ msg string }

func (e *errCutOff) Error() string { return e.msg }

// readChunk is the least a scanner reads at once.
const readChunk = 64 << 10

type pageScanner struct {
	r         io.Reader
	hold      func(n int64) error
	maxWindow int
	buf       []byte // buf[pos:] is read and not yet scanned
	pos       int
	base      int64 // bytes of the body before buf[0]
	eof       bool
}

func (s *pageScanner) fail(format string, args ...any) error {
	return &PageError{msg: fmt.Sprintf(format, args...)}
}

// offset is the position in the whole body of buf[pos+i].
func (s *pageScanner) offset(i int) int64 { return s.base + int64(s.pos+i) }

// more reads at least as much again as is unscanned (and at least
// readChunk), so that a value rescanned after each read costs at most
// twice its size in all.
func (s *pageScanner) more() error {
	if s.eof {
		return nil
	}
	if s.pos > 0 {
		n := copy(s.buf, s.buf[s.pos:])
		s.base += int64(s.pos)
		s.buf, s.pos = s.buf[:n], 0
	}
	want := len(s.buf) + max(len(s.buf), readChunk)
	if s.maxWindow > 0 {
		want = max(min(want, s.maxWindow), len(s.buf)+1)
	}
	if cap(s.buf) < want {
		if s.hold != nil {
			if err := s.hold(int64(want - cap(s.buf))); err != nil {
				return err
			}
		}
		grown := make([]byte, len(s.buf), want)
		copy(grown, s.buf)
		s.buf = grown
	}
	for empty := 0; len(s.buf) < want; {
		n, err := s.r.Read(s.buf[len(s.buf):want])
		s.buf = s.buf[:len(s.buf)+n]
		if errors.Is(err, io.EOF) {
			s.eof = true
			return nil
		}
		if err != nil {
			return err
		}
		if n == 0 {
			if empty++; empty > 100 {
				return io.ErrNoProgress
			}
		}
	}
	return nil
}

// peek returns the next byte that is not white space, reading as needed;
// false at the end of the body.
func (s *pageScanner) peek() (byte, bool, error) {
	for {
		s.pos = skipSpace(s.buf, s.pos)
		if s.pos < len(s.buf) {
			return s.buf[s.pos], true, nil
		}
		if s.eof {
			return 0, false, nil
		}
		if err := s.more(); err != nil {
			return 0, false, err
		}
	}
}

// span runs end over the unscanned input, reading more while it reports
// the input cut off, and returns the end it finds (relative to pos).
func (s *pageScanner) span(end func(b []byte) (int, error)) (int, error) {
	for {
		n, err := end(s.buf[s.pos:])
		if _, cut := err.(*errCutOff); !cut || s.eof {
			if err != nil {
				return 0, s.fail("%v", err)
			}
			return n, nil
		}
		if s.maxWindow > 0 && len(s.buf)-s.pos >= s.maxWindow {
			return 0, errTooLong
		}
		if err := s.more(); err != nil {
			return 0, err
		}
	}
}

func (s *pageScanner) page(skip func(int, []byte) bool) (Results, error) {
	var res Results
	c, ok, err := s.peek()
	if err != nil {
		return res, err
	}
	if !ok || c != '{' {
		return res, s.fail("not a JSON object")
	}
	s.pos++
	if c, ok, err = s.peek(); err != nil {
		return res, err
	}
	if ok && c == '}' {
		return res, s.fail(`no "results" array`)
	}
	found := false
	for {
		if c, ok, err = s.peek(); err != nil {
			return res, err
		}
		if !ok || c != '"' {
			return res, s.fail("expected a member name at byte %d", s.offset(0))
		}
		end, err := s.span(func(b []byte) (int, error) {
			if end, ok := closeString(b, 0); ok {
				return end, nil
			}
			return 0, &errCutOff{"cut off inside a member name"}
		})
		if err != nil {
			return res, err
		}
		var key string
		if err := json.Unmarshal(s.buf[s.pos:s.pos+end], &key); err != nil {
			return res, s.fail("bad member name at byte %d", s.offset(0))
		}
		s.pos += end
		if c, ok, err = s.peek(); err != nil {
			return res, err
		}
		if !ok || c != ':' {
			return res, s.fail("expected ':' at byte %d", s.offset(0))
		}
		s.pos++
		if c, ok, err = s.peek(); err != nil {
			return res, err
		}
		switch key {
		case "results":
			if found {
				return res, s.fail(`"results" appears twice`)
			}
			if !ok || c != '[' {
				return res, s.fail(`"results" is not an array`)
			}
			if err := s.results(&res, skip); err != nil {
				return res, err
			}
			found = true
		default:
			end, err := s.span(func(b []byte) (int, error) { return spanEnd(b, 0) })
			if err != nil {
				return res, err
			}
			value := trimSpace(s.buf[s.pos : s.pos+end])
			if key == "next" && string(value) != "null" {
				var next string
				if err := json.Unmarshal(value, &next); err != nil {
					return res, s.fail(`"next" is not a string`)
				}
				res.Next = next
			}
			s.pos += end
		}
		if c, ok, err = s.peek(); err != nil {
			return res, err
		}
		if ok && c == ',' {
			s.pos++
			continue
		}
		if ok && c == '}' {
			s.pos++
			break
		}
		return res, s.fail("expected ',' or '}' at byte %d", s.offset(0))
	}
	if _, ok, err := s.peek(); err != nil || ok {
		if err != nil {
			return res, err
		}
		return res, s.fail("bytes after the page object")
	}
	if !found {
		return res, s.fail(`no "results" array`)
	}
	if res.Items == nil {
		res.Items = []json.RawMessage{}
	}
	return res, nil
}

// results reads the array at buf[pos] == '[' element by element, each cut
// at the commas between them.
func (s *pageScanner) results(res *Results, skip func(int, []byte) bool) error {
	s.pos++
	c, ok, err := s.peek()
	if err != nil {
		return err
	}
	if ok && c == ']' {
		s.pos++
		return nil
	}
	for {
		if _, _, err := s.peek(); err != nil {
			return err
		}
		end, err := s.span(func(b []byte) (int, error) { return spanEnd(b, 0) })
		if errors.Is(err, errTooLong) {
			res.Count++
			o, err := s.readPast(res.Count - 1)
			if err != nil {
				return err
			}
			res.TooLarge = append(res.TooLarge, o)
		} else if err != nil {
			return err
		}
		if elem := trimSpace(s.buf[s.pos : s.pos+end]); len(elem) > 0 {
			res.Count++
			if skip == nil || !skip(res.Count-1, elem) {
				if s.hold != nil {
					if err := s.hold(int64(len(elem))); err != nil {
						return err
					}
				}
				res.Items = append(res.Items, bytes.Clone(elem))
			}
		}
		s.pos += end
		switch s.buf[s.pos] {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return nil
		default:
			return s.fail("'}' closes the results array at byte %d", s.offset(0))
		}
	}
}

// Oversize is an element of a page's "results" longer than the scan's
// window: read past rather than kept, and reported, so that it costs
// itself only and not the rest of its page.
type Oversize struct {
	Index int      // its place among the page's elements
	Size  int64    // its length in bytes
	Head  []byte   // its first bytes, at most OversizeHead
	Sum   [32]byte // SHA-256 of its bytes, white space between tokens left out
}

// OversizeHead is how much of an incident too large to be kept is kept:
// of an Oversize element, and of one too large for NATS.
const OversizeHead = 64 << 10

// readPast reads the element at buf[pos] to its end, never holding more
// than the window: its brackets are counted and its strings followed, not
// validated. It stops at the ',' or ']' after it.
func (s *pageScanner) readPast(index int) (Oversize, error) {
	o := Oversize{Index: index}
	h := sha256.New()
	var st skipState
	for {
		chunk := s.buf[s.pos:]
		end, err := st.scan(chunk)
		if err != nil {
			return o, s.fail("%v at byte %d", err, s.offset(0))
		}
		done := end >= 0
		if !done {
			end = len(chunk)
		}
		part := chunk[:end]
		if room := OversizeHead - len(o.Head); room > 0 {
			o.Head = append(o.Head, part[:min(room, len(part))]...)
		}
		st.hash(h, part)
		o.Size += int64(len(part))
		s.pos += end
		if done {
			h.Sum(o.Sum[:0])
			return o, nil
		}
		if s.eof {
			return o, s.fail("cut off: the page ends inside an incident of %d bytes", o.Size)
		}
		if err := s.more(); err != nil {
			return o, err
		}
	}
}

// skipState follows a value across the chunks it arrives in.
type skipState struct {
	depth   int
	inStr   bool
	escaped bool
	// the string state as hash last left it, one chunk behind scan's
	hashInStr, hashEscaped bool
}

// scan returns the index in b of the ',' or ']' that ends the value, or -1
// when b ends first; the state carries over to the next chunk.
func (st *skipState) scan(b []byte) (int, error) {
	for i, c := range b {
		if st.inStr {
			switch {
			case st.escaped:
				st.escaped = false
			case c == '\\':
				st.escaped = true
			case c == '"':
				st.inStr = false
			}
			continue
		}
		switch c {
		case '"':
			st.inStr = true
		case '{', '[':
			st.depth++
		case '}', ']':
			if st.depth == 0 {
				if c == '}' {
					return 0, errors.New("'}' closes the results array")
				}
				return i, nil
			}
			st.depth--
		case ',':
			if st.depth == 0 {
				return i, nil
			}
		}
	}
	return -1, nil
}

// hash writes part to h without the white space outside strings, so that
// the sum of an element does not depend on how it is laid out. It runs
// over part again, as scan just did, from the state before it.
func (st *skipState) hash(h hash.Hash, part []byte) {
	in, esc := st.hashInStr, st.hashEscaped
	run := 0 // part[run:i] is written once white space or the end comes
	for i, c := range part {
		switch {
		case in && esc:
			esc = false
		case in && c == '\\':
			esc = true
		case in && c == '"':
			in = false
		case !in && c == '"':
			in = true
		case !in && (c == ' ' || c == '\t' || c == '\n' || c == '\r'):
			h.Write(part[run:i])
			run = i + 1
		}
	}
	h.Write(part[run:])
	st.hashInStr, st.hashEscaped = in, esc
}
