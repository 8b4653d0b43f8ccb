package projector

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/stage"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// pieces writes employee documents as a manifest and pieces (see package
// view). Piece keys are never written twice, so decoded pieces are cached
// by key without ever going stale.
type pieces struct {
	nonce string        // this projector's part of every piece key it makes
	seq   atomic.Uint64 // the rest
	// inlineBytes is the largest document kept inline in its manifest
	// (view.InlineBytes; 0: none, for tests of keyed pieces).
	inlineBytes int

	mu    sync.Mutex
	cache map[string][]view.Entry
	bytes int
	// manifests are the manifests this projector last read or wrote, with
	// their revision: a fold starts from one without reading it again; a
	// stale one fails its compare-and-set and is read afresh.
	manifests     map[string]known
	manifestBytes int
	prefetchOff   time.Time // prefetch is skipped until then
}

type known struct {
	m   *view.Manifest
	rev uint64
}

// maxManifests and maxManifestBytes bound the manifests kept (with their
// inline pieces).
const (
	maxManifests     = 100_000
	maxManifestBytes = 32 << 20
)

// maxCacheBytes bounds the decoded pieces kept.
const maxCacheBytes = 64 << 20

func newPieces() *pieces {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &pieces{nonce: hex.EncodeToString(b), inlineBytes: view.InlineBytes, cache: map[string][]view.Entry{}, manifests: map[string]known{}}
}

// newKey is a fresh piece key of employee.
func (ps *pieces) newKey(employee string) string {
	return employee + "." + ps.nonce + strconv.FormatUint(ps.seq.Add(1), 36)
}

// load returns a piece's entries, from the cache or the bucket.
func (ps *pieces) load(ctx context.Context, kv jetstream.KeyValue, key string) ([]view.Entry, error) {
	ps.mu.Lock()
	entries, ok := ps.cache[key]
	ps.mu.Unlock()
	if ok {
		return entries, nil
	}
	e, err := kv.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("reading piece %s: %w", key, err)
	}
	entries, err = view.DecodePiece(e.Value())
	if err != nil {
		return nil, fmt.Errorf("piece %s: %w", key, err)
	}
	ps.remember(key, entries, len(e.Value()))
	return entries, nil
}

func (ps *pieces) remember(key string, entries []view.Entry, size int) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.bytes+size > maxCacheBytes {
		clear(ps.cache)
		ps.bytes = 0
	}
	ps.cache[key] = entries
	ps.bytes += size
}

func (ps *pieces) forget(keys []string) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, k := range keys {
		delete(ps.cache, k)
	}
}

// errConflict is another writer changing the manifest first.
var errConflict = errors.New("the manifest changed meanwhile")

// change is a fold of some incidents into one employee's document, ready
// to be written: new pieces first, then the manifest by compare-and-set.
type change struct {
	employee string
	rev      uint64 // the manifest's revision it builds on (0: none)
	next     *view.Manifest
	writes   []*nats.Msg // the new pieces
	written  []string    // their keys
	replaced []string    // the pieces the new manifest no longer names
	added    int
}

// fold adds entries to employee's document in one compare-and-set of its
// manifest; it returns how many it added (the rest were there already).
func (ps *pieces) fold(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, employee string, entries []view.Entry) (int, error) {
	c, err := ps.prepare(ctx, kv, employee, entries)
	if err != nil || c == nil {
		return 0, err
	}
	if _, err := stage.PublishAll(ctx, js, c.writes); err != nil {
		ps.purge(ctx, js, c.written)
		return 0, fmt.Errorf("writing pieces of %s: %w", employee, err)
	}
	var newRev uint64
	if c.rev == 0 {
		newRev, err = kv.Create(ctx, employee, c.next.Encode())
	} else {
		newRev, err = kv.Update(ctx, employee, c.next.Encode(), c.rev)
	}
	unnamed, err := ps.settle(c, newRev, err)
	ps.purge(ctx, js, unnamed)
	if err != nil {
		return 0, err
	}
	return c.added, nil
}

// settle records the outcome of writing c's manifest and returns the
// pieces no manifest names: on success the manifest is remembered and the
// pieces it replaced are unnamed; on a conflict the new pieces are
// (errConflict).
func (ps *pieces) settle(c *change, newRev uint64, err error) (unnamed []string, _ error) {
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSequence(err) {
		ps.forgetManifest(c.employee)
		return c.written, errConflict
	}
	if err != nil {
		// The manifest may or may not be stored: keep the pieces (a
		// retry reads the manifest again).
		ps.forgetManifest(c.employee)
		return nil, fmt.Errorf("writing view %s: %w", c.employee, err)
	}
	ps.keep(c.employee, known{m: c.next, rev: newRev})
	return c.replaced, nil
}

// keep remembers an employee's manifest and its revision.
func (ps *pieces) keep(employee string, k known) { ps.keepAll(map[string]known{employee: k}) }

// keepAll remembers manifests together: when they do not fit beside those
// kept, those go first, so that a batch's own manifests stay for its fold.
func (ps *pieces) keepAll(found map[string]known) {
	size := 0
	for _, k := range found {
		size += manifestSize(k.m)
	}
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if len(ps.manifests)+len(found) > maxManifests || ps.manifestBytes+size > maxManifestBytes {
		clear(ps.manifests)
		ps.manifestBytes = 0
	}
	for emp, k := range found {
		if old, ok := ps.manifests[emp]; ok {
			ps.manifestBytes -= manifestSize(old.m)
		}
		ps.manifests[emp] = k
	}
	ps.manifestBytes += size
}

// manifestSize is about what a remembered manifest holds in memory.
func manifestSize(m *view.Manifest) int {
	size := 64
	for _, r := range m.Pieces {
		size += 96 + r.Size
	}
	return size
}

// purge removes pieces no manifest names, in atomic batches (one fsync
// each, where one purge at a time costs an fsync each); its failure is
// ignored: a leftover piece costs space, never correctness.
func (ps *pieces) purge(ctx context.Context, js jetstream.JetStream, keys []string) {
	if len(keys) == 0 {
		return
	}
	ps.forget(keys)
	msgs := make([]*nats.Msg, len(keys))
	for i, key := range keys {
		msgs[i] = purgeMsg(key)
	}
	_, _ = stage.PublishAtomic(ctx, js, msgs)
}

// purgeMsg is a purge of a view key as kv.Purge writes it, to be published
// without waiting for each.
func purgeMsg(key string) *nats.Msg {
	msg := nats.NewMsg(topology.KVSubject(topology.BucketView, key))
	msg.Header.Set(topology.HeaderKVOperation, topology.KVOperationPurge)
	msg.Header.Set(topology.HeaderRollup, topology.RollupSubject)
	return msg
}

// commit writes changes of many employees together: all their pieces in
// one go, then all their manifests, each a compare-and-set by the
// revision it builds on. It returns each change's error, errConflict where
// another writer came first.
func (ps *pieces) commit(ctx context.Context, js jetstream.JetStream, changes []*change) []error {
	errs := make([]error, len(changes))
	var writes []*nats.Msg
	var owner []int
	for i, c := range changes {
		for _, w := range c.writes {
			writes = append(writes, w)
			owner = append(owner, i)
		}
	}
	res, _ := stage.PublishAtomic(ctx, js, writes)
	for j, r := range res {
		if i := owner[j]; r.Err != nil && errs[i] == nil {
			errs[i] = fmt.Errorf("writing pieces of %s: %w", changes[i].employee, r.Err)
		}
	}
	var manifests []*nats.Msg
	var unnamed []string
	owner = owner[:0]
	for i, c := range changes {
		if errs[i] != nil {
			ps.forgetManifest(c.employee)
			unnamed = append(unnamed, c.written...)
			continue
		}
		msg := nats.NewMsg(topology.KVSubject(topology.BucketView, topology.EmployeeKey(c.employee)))
		msg.Data = c.next.Encode()
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(c.rev, 10))
		manifests = append(manifests, msg)
		owner = append(owner, i)
	}
	res, _ = stage.PublishAtomic(ctx, js, manifests)
	for j, r := range res {
		var rev uint64
		if r.Ack != nil {
			rev = r.Ack.Sequence
		}
		var pieces []string
		pieces, errs[owner[j]] = ps.settle(changes[owner[j]], rev, r.Err)
		unnamed = append(unnamed, pieces...)
	}
	ps.purge(ctx, js, unnamed)
	return errs
}

// prepare folds entries into employee's document in memory; it returns nil
// when they are all there already.
func (ps *pieces) prepare(ctx context.Context, kv jetstream.KeyValue, employee string, entries []view.Entry) (*change, error) {
	var m *view.Manifest
	var rev uint64
	// The pieces that change, by index in m.Pieces (-1-p: a new piece of
	// priority p).
	changed := map[int][]view.Entry{}
	ps.mu.Lock()
	k, cached := ps.manifests[employee]
	ps.mu.Unlock()
	var entry jetstream.KeyValueEntry
	var err error
	if !cached {
		entry, err = kv.Get(ctx, employee)
	}
	switch {
	case cached:
		m, rev = k.m, k.rev
	case errors.Is(err, jetstream.ErrKeyNotFound):
		m = &view.Manifest{}
	case err != nil:
		return nil, fmt.Errorf("reading view %s: %w", employee, err)
	case view.IsManifest(entry.Value()):
		rev = entry.Revision()
		if m, err = view.ParseManifest(entry.Value()); err != nil {
			return nil, fmt.Errorf("view %s: %w", employee, err)
		}
	default:
		// A whole document of an earlier version: its incidents become
		// pieces with this fold.
		rev = entry.Revision()
		d, err := view.ParseEmployee(entry.Value())
		if err != nil {
			return nil, fmt.Errorf("view %s: %w", employee, err)
		}
		m = &view.Manifest{}
		for p, list := range d.Buckets {
			if len(list) > 0 {
				changed[len(m.Pieces)] = list
				m.Pieces = append(m.Pieces, view.RefOf("", p, list))
			}
		}
	}

	get := func(i int) ([]view.Entry, error) {
		if e, ok := changed[i]; ok {
			return e, nil
		}
		if i < 0 {
			return nil, nil
		}
		if r := m.Pieces[i]; r.Inline() {
			return view.DecodePiece(r.Data())
		}
		list, err := ps.load(ctx, kv, m.Pieces[i].Key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// Another writer replaced the manifest and removed the piece
			// since it was read: start over from the new one.
			ps.forgetManifest(employee)
			return nil, errConflict
		}
		return list, err
	}
	added := 0
	for _, e := range entries {
		p := e.Priority
		from, to, insert := m.Locate(p, e.Timestamp)
		dup := false
		for i := from; i < to && !dup; i++ {
			list, err := get(i)
			if err != nil {
				return nil, err
			}
			dup = view.List(list).Index(e.ID) >= 0
		}
		if insert < 0 {
			insert = -1 - p
		}
		list, err := get(insert)
		if err != nil {
			return nil, err
		}
		if dup {
			continue
		}
		if _, own := changed[insert]; !own {
			list = clone(list)
		}
		l := view.List(list)
		if !l.Insert(e) { // already in the piece it would go to
			continue
		}
		changed[insert] = l
		added++
	}
	if added == 0 {
		if cached {
			// Nothing new by a manifest this projector remembers: make
			// sure by the stored one (a rebuild may have emptied the view).
			ps.forgetManifest(employee)
			return ps.prepare(ctx, kv, employee, entries)
		}
		return nil, nil
	}

	// A small document stays inline (one value, one write); one that
	// outgrows it moves every piece under a key of its own.
	inline := ps.inlineBytes > 0
	size := 0
	for i, r := range m.Pieces {
		if _, ok := changed[i]; !ok {
			inline = inline && r.Inline()
			size += r.Size
		}
	}
	for _, list := range changed {
		for _, e := range list {
			size += e.StoredSize()
		}
	}
	if inline && size > ps.inlineBytes {
		inline = false
		for i, r := range m.Pieces {
			if _, ok := changed[i]; !ok && r.Inline() {
				if changed[i], err = view.DecodePiece(r.Data()); err != nil {
					return nil, fmt.Errorf("view %s: %w", employee, err)
				}
			}
		}
	}

	// The new manifest: unchanged pieces keep their keys; changed ones
	// are written anew, split where they grew too large.
	next := &view.Manifest{}
	var writes []*nats.Msg
	var written, replaced []string
	emit := func(p int, list []view.Entry) {
		if inline {
			next.Pieces = append(next.Pieces, view.InlineRefOf(p, list))
			return
		}
		for _, run := range view.Split(list) {
			key := ps.newKey(employee)
			data := view.EncodePiece(run)
			writes = append(writes, &nats.Msg{Subject: topology.KVSubject(topology.BucketView, key), Data: data})
			written = append(written, key)
			ps.remember(key, run, len(data))
			next.Pieces = append(next.Pieces, view.RefOf(key, p, run))
		}
	}
	for p := range 4 {
		for i, r := range m.Pieces {
			if r.Priority != p {
				continue
			}
			if list, ok := changed[i]; ok {
				emit(p, list)
				if r.Key != "" {
					replaced = append(replaced, r.Key)
				}
				continue
			}
			next.Pieces = append(next.Pieces, r)
		}
		if list, ok := changed[-1-p]; ok {
			emit(p, list)
		}
	}
	return &change{employee: employee, rev: rev, next: next, writes: writes, written: written, replaced: replaced, added: added}, nil
}

func (ps *pieces) forgetManifest(employee string) {
	ps.mu.Lock()
	delete(ps.manifests, employee)
	ps.mu.Unlock()
}

// isWrongLastSequence reports JetStream refusing an update whose expected
// revision is no longer the key's last (another writer came first).
func isWrongLastSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// clone returns a copy of list that the caller may change: cached pieces
// are shared.
func clone(list []view.Entry) []view.Entry { return append([]view.Entry(nil), list...) }
