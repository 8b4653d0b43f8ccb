package api

import (
	"container/list"
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
)

// filterCache keeps filtered answers of the current view, bounded in bytes,
// least recently used first out; it empties when the view changes. With it,
// a filtered request costs its computation once per view version, and at
// most computeSlots computations run at once, so that filtered requests
// never starve the others (/healthz, the full document).
type filterCache struct {
	maxBytes int64
	slots    chan struct{}
	latest   func() *snapshot // the snapshot served now

	mu    sync.Mutex
	snap  *snapshot
	bytes int64
	lru   *list.List // of *cached, most recent first
	byKey map[string]*list.Element
}

type cached struct {
	key  string
	body *body
	next string
}

func newFilterCache(maxBytes int64, latest func() *snapshot) *filterCache {
	return &filterCache{
		maxBytes: maxBytes,
		latest:   latest,
		slots:    make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		lru:      list.New(),
		byKey:    map[string]*list.Element{},
	}
}

// answer returns f's answer on snap, from the cache or computed; it waits
// for a computing slot no longer than ctx allows.
func (c *filterCache) answer(ctx context.Context, snap *snapshot, f filter) (*body, string, error) {
	key := f.key()
	if b, next, ok := c.get(snap, key); ok {
		return b, next, nil
	}
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, "", ctx.Err()
	}
	defer func() { <-c.slots }()
	// Another request may have computed it while this one waited.
	if b, next, ok := c.get(snap, key); ok {
		return b, next, nil
	}
	raw, next, err := f.render(snap)
	if err != nil {
		return nil, "", err
	}
	b := newBody(raw)
	c.put(snap, key, b, next)
	return b, next, nil
}

func (c *filterCache) get(snap *snapshot, key string) (*body, string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.snap != snap {
		return nil, "", false
	}
	e, ok := c.byKey[key]
	if !ok {
		return nil, "", false
	}
	c.lru.MoveToFront(e)
	v := e.Value.(*cached)
	return v.body, v.next, true
}

func (c *filterCache) put(snap *snapshot, key string, b *body, next string) {
	size := int64(len(b.raw) + len(key) + len(next))
	if size > c.maxBytes {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if snap != c.latest() {
		return // an answer of a view no longer served
	}
	if c.snap != snap {
		c.snap = snap
		c.lru.Init()
		clear(c.byKey)
		c.bytes = 0
	}
	if _, ok := c.byKey[key]; ok {
		return
	}
	c.byKey[key] = c.lru.PushFront(&cached{key: key, body: b, next: next})
	c.bytes += size
	for c.bytes > c.maxBytes {
		e := c.lru.Back()
		v := e.Value.(*cached)
		c.lru.Remove(e)
		delete(c.byKey, v.key)
		c.bytes -= int64(len(v.body.raw) + len(v.key) + len(v.next))
	}
}

// key is f in one canonical form: equal filters, however written, share it.
func (f filter) key() string {
	var b strings.Builder
	fmt.Fprintf(&b, "p%v|", f.priorities)
	types := make([]string, 0, len(f.types))
	for t := range f.types {
		types = append(types, string(t))
	}
	slices.Sort(types)
	fmt.Fprintf(&b, "t%v%v|", f.types != nil, types)
	if f.since != nil {
		fmt.Fprintf(&b, "s%v", *f.since)
	}
	b.WriteByte('|')
	if f.until != nil {
		fmt.Fprintf(&b, "u%v", *f.until)
	}
	fmt.Fprintf(&b, "|l%d|c%s", f.limit, f.cursor)
	return b.String()
}
