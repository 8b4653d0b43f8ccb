package api

import (
	"context"
	"testing"
)

func TestFilterCache(t *testing.T) {
	snapOf := func(docs ...string) *snapshot {
		s := &snapshot{}
		for i, d := range docs {
			s.keys = append(s.keys, string(rune('1'+i)))
			s.docs = append(s.docs, newBody([]byte(d)))
		}
		return s
	}
	current := snapOf(`{"a":1}`, `{"b":2}`)
	c := newFilterCache(1<<20, func() *snapshot { return current })
	ctx := context.Background()
	page := filter{priorities: [4]bool{true, true, true, true}, limit: 1}

	b1, next, err := c.answer(ctx, current, page)
	if err != nil || string(b1.raw) != `{"1":{"a":1}}` || next != "1" {
		t.Fatalf("first answer %q %q %v", b1.raw, next, err)
	}
	if b2, _, _ := c.answer(ctx, current, page); b2 != b1 {
		t.Error("the same filter on the same view was computed again")
	}
	// A new view: the cached answer is not served for it.
	old := current
	current = snapOf(`{"c":3}`)
	if b3, _, _ := c.answer(ctx, current, page); string(b3.raw) != `{"1":{"c":3}}` {
		t.Errorf("answer after the view changed: %q", b3.raw)
	}
	// An answer computed on a view no longer served is not kept.
	c.answer(ctx, old, filter{priorities: [4]bool{true, true, true, true}, limit: 2})
	if _, _, ok := c.get(current, filter{priorities: [4]bool{true, true, true, true}, limit: 2}.key()); ok {
		t.Error("an answer of an old view was cached for the new one")
	}
	// Bounded in bytes: the least recently used answer goes first.
	small := newFilterCache(60, func() *snapshot { return current })
	a := filter{priorities: [4]bool{true, true, true, true}, limit: 1}
	b := filter{priorities: [4]bool{true, true, true, true}, limit: 2}
	small.answer(ctx, current, a)
	small.answer(ctx, current, b)
	if small.bytes > 60 {
		t.Errorf("cache holds %d bytes, bound 60", small.bytes)
	}
	if _, _, ok := small.get(current, a.key()); ok {
		t.Error("the least recently used answer was kept past the bound")
	}
}
