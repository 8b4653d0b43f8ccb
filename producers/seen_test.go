package producers

import (
	"hash/maphash"
	"testing"
)

// TestSeenSequence: after a whole poll, the next one in the same order is
// known by position; in another order or past a failed poll, by the set;
// bytes never stored are never known.
func TestSeenSequence(t *testing.T) {
	s := newSeenSet()
	x, y, z := []byte(`{"a":1}`), []byte(`{"a":2}`), []byte(`{"a":3}`)
	store := func(raws ...[]byte) {
		for _, r := range raws {
			s.mu.Lock()
			s.raw[maphash.Bytes(s.seed, r)] = struct{}{}
			s.mu.Unlock()
		}
	}
	// A whole poll of x, y: both stored by its end.
	s.pollStarts()
	for i, r := range [][]byte{x, y} {
		if s.known(1, i, r) {
			t.Fatalf("item %d known before it was stored", i)
		}
	}
	store(x, y)
	s.pollEnds(true)
	// The same order: known by position, even were the set to forget.
	s.mu.Lock()
	clear(s.raw)
	s.mu.Unlock()
	s.pollStarts()
	if !s.known(1, 0, x) || !s.known(1, 1, y) {
		t.Fatal("the last whole poll's incidents, in order, are not known")
	}
	if s.known(1, 2, z) {
		t.Fatal("a new incident is known")
	}
	s.pollEnds(false) // a failed poll leaves the last whole one in place
	store(x, y)
	s.pollStarts()
	if !s.known(1, 0, y) || !s.known(1, 1, x) || s.known(1, 2, z) {
		t.Fatal("in another order: known by the set, a new one not")
	}
	s.pollEnds(true)
	if len(s.last[1]) != 3 {
		t.Fatalf("the whole poll's sequence holds %d incidents, want 3", len(s.last[1]))
	}
}
