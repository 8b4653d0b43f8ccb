package api

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/risk"
	"github.com/incidentpipe/pipeline/internal/topology"
	"github.com/incidentpipe/pipeline/internal/view"
)

// body is a response prepared once: its bytes, its ETag, and a gzip copy
// and a parsed copy made on first demand.
type body struct {
	raw []byte
	// parts, for the full document, are its bytes in order, borrowed from
	// the employees' bodies instead of copied into raw: the view is held
	// once, not twice.
	parts [][]byte
	size  int
	etag  string
	once  sync.Once
	gz    []byte

	parseOnce sync.Once
	parsed    *view.Employee
}

// employee returns the parsed employee document, parsing at most once.
func (b *body) employee() *view.Employee {
	b.parseOnce.Do(func() {
		doc, err := view.ParseEmployee(b.raw)
		if err != nil {
			doc = &view.Employee{}
		}
		b.parsed = doc
	})
	return b.parsed
}

func newBody(raw []byte) *body {
	h := fnv.New64a()
	h.Write(raw)
	return &body{raw: raw, etag: `"` + strconv.FormatUint(h.Sum64(), 36) + "-" + strconv.Itoa(len(raw)) + `"`}
}

// sameKeys reports whether keys are exactly the keys of m.
func sameKeys(keys []string, m map[string]*body) bool {
	if len(keys) != len(m) {
		return false
	}
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return false
		}
	}
	return true
}

// first is 1 for the first employee of the full document, whose prefix
// goes without its comma.
func first(i int) int {
	if i == 0 {
		return 1
	}
	return 0
}

// generationETag names a large document by the process and the generation
// of the view instead of hashing every byte.
func generationETag(boot string, generation uint64) string {
	return `"` + boot + "-" + strconv.FormatUint(generation, 36) + `"`
}

// length is the size of the uncompressed body.
func (b *body) length() int {
	if b.parts != nil {
		return b.size
	}
	return len(b.raw)
}

// maxCopiedDocument is the largest full document kept as one copy; a
// larger one is served from the employees' bodies (parts), so that a large
// view is held once and a change does not copy all of it again.
const maxCopiedDocument = 32 << 20

// copyBuffers are the buffers parts are gathered in on the way out.
var copyBuffers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// writeTo writes the uncompressed body: parts are gathered into 64 KiB
// writes, as a static server's file would go out.
func (b *body) writeTo(w io.Writer) error {
	if b.parts == nil {
		_, err := w.Write(b.raw)
		return err
	}
	bw := copyBuffers.Get().(*bufio.Writer)
	defer copyBuffers.Put(bw)
	bw.Reset(w)
	defer bw.Reset(nil)
	for _, p := range b.parts {
		if _, err := bw.Write(p); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// gzipped returns the compressed copy, compressing at most once.
func (b *body) gzipped() []byte {
	b.once.Do(func() {
		var buf bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		_ = b.writeTo(zw)
		_ = zw.Close()
		b.gz = buf.Bytes()
	})
	return b.gz
}

// snapshot is everything the API serves, prepared when the view changed.
type snapshot struct {
	// version is the view's stream sequence this snapshot reflects: the
	// same on every API copy, and after a restart.
	version           uint64
	updated           time.Time     // when it was prepared
	ranking           []risk.Ranked // employees by risk, highest first
	rankingID         rankingID     // names ranking for /risk cursors
	unattributedCount int
	all               *body
	keys              []string // employee ids in document order
	docs              []*body  // their documents, in the same order
	unattributed      *body
}

// employee returns one employee's document.
func (snap *snapshot) employee(id string) (*body, bool) {
	i, found := slices.BinarySearchFunc(snap.keys, id, compareEmployeeIDs)
	if !found {
		return nil, false
	}
	return snap.docs[i], true
}

// store keeps INCIDENT_VIEW in memory and the prepared snapshot current.
type store struct {
	log     *slog.Logger
	metrics *metrics
	// MinRebuild is the least time between two rebuilds: many changes in a
	// burst make one rebuild.
	minRebuild time.Duration
	// maxCopied is the largest full document kept as one copy
	// (maxCopiedDocument; tests lower it).
	maxCopied int

	snap   atomic.Pointer[snapshot]
	loaded atomic.Bool
	// cursors keeps the rankings open /risk cursors walk (cursors.go).
	cursors *cursorRankings

	// Owned by the watch loop.
	employees map[string]*body
	// sorted are the employees in document order, sorted again only when
	// they are no longer the same (a snapshot shares it: it is replaced,
	// never changed).
	sorted   []string
	prefixes map[string][]byte // employee → `,"id":`, its part of the full document
	pieces   map[string][]byte // piece key → its incidents
	revision uint64            // the last change of the view applied
	// changed are the employees changed since the last snapshot: the
	// ranking moves them, an event names them (up to maxListed).
	changed map[string]bool
	// halfLife, when positive, decays risk scores with the incidents' age;
	// timestamps then holds each employee's incident times.
	halfLife   time.Duration
	timestamps map[string][4][]float64
	decayedAt  time.Time
	decayEvery time.Duration // how often scores are decayed anew (tests: sooner)
	// onLoad and onChange, when set, hear of the first snapshot's version
	// and of every change after it.
	onLoad   func(version uint64)
	onChange func(change)
	counts   map[string][4]int
	// rerankAll: every employee's rank may have changed, not only the
	// changed ones (after a reset).
	rerankAll    bool
	unattributed map[string]*view.Unattributed
	// frozenUntil holds the served snapshot while a rebuild empties and
	// refills the view, so that readers never see it half done: the
	// marker's lease, plus rebuildGrace.
	frozenUntil  time.Time
	rebuildGrace time.Duration
	// watched is the creation time of the bucket whose view is served;
	// replacing is set while a new bucket fills (replace.go), and replaced
	// when its view is first served.
	watched, projectorMissing time.Time
	replacing, replaced       bool
	onReplace                 func(version uint64)
	// Which part changed since the last snapshot: the other is reused.
	employeesDirty, unattributedDirty bool
	boot                              string
	generation                        uint64
	lastRebuild                       time.Duration
}

func newStore(log *slog.Logger, m *metrics) *store {
	s := &store{log: log, metrics: m, minRebuild: 50 * time.Millisecond, maxCopied: maxCopiedDocument, boot: strconv.FormatInt(time.Now().UnixNano(), 36),
		rebuildGrace: rebuildGrace, decayEvery: decayEvery}
	s.reset()
	s.snap.Store(&snapshot{all: newBody([]byte("{}")), unattributed: newBody([]byte(`{"count":0,"incidents":[]}`))})
	return s
}

func (s *store) reset() {
	s.frozenUntil = time.Time{}
	s.employeesDirty, s.unattributedDirty = true, true
	s.employees = map[string]*body{}
	s.sorted = nil
	s.prefixes = map[string][]byte{}
	s.pieces = map[string][]byte{}
	s.counts = map[string][4]int{}
	s.rerankAll = true
	s.changed = map[string]bool{}
	s.timestamps = map[string][4][]float64{}
	s.unattributed = map[string]*view.Unattributed{}
}

// run watches the view until ctx ends, starting over if the watch breaks
// (for instance when an operator deletes and recreates the bucket).
func (s *store) run(ctx context.Context, js jetstream.JetStream) {
	var logged string
	var loggedAt time.Time
	for ctx.Err() == nil {
		err := s.watch(ctx, js)
		if ctx.Err() != nil {
			return
		}
		// Once per kind of failure, then once a minute: a bucket deleted
		// for a while is not a line a second.
		if err.Error() != logged || time.Since(loggedAt) >= time.Minute {
			s.log.Warn("watching the view failed; starting over", "error", err)
			logged, loggedAt = err.Error(), time.Now()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (s *store) watch(ctx context.Context, js jetstream.JetStream) error {
	kv, err := js.KeyValue(ctx, topology.BucketView)
	if err != nil {
		return fmt.Errorf("opening %s: %w", topology.BucketView, err)
	}
	info, err := bucketInfo(ctx, js)
	if err != nil {
		return fmt.Errorf("opening %s: %w", topology.BucketView, err)
	}
	created := info.Created
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watching %s: %w", topology.BucketView, err)
	}
	defer w.Stop()
	s.reset()
	if !s.watched.IsZero() && !created.Equal(s.watched) && !s.replacing {
		s.replacing, s.revision, s.projectorMissing = true, 0, time.Time{}
		s.log.Info("the view's bucket was replaced; serving the last view until the projector has replayed the new one")
	}
	initial := true
	var last time.Time
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	// A watch is a consumer on one server: after a reconnect (that server
	// restarted, or cut off from its cluster) it may never deliver again,
	// and nats.go notices only after missed heartbeats, 10 s or more.
	reconnects := js.Conn().Stats().Reconnects
	for {
		var e jetstream.KeyValueEntry
		var ok bool
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if js.Conn().Stats().Reconnects != reconnects {
				return errors.New("the NATS connection reconnected: watching the view again")
			}
			bucket, err := checkBucket(ctx, js, created)
			if err != nil {
				return err
			}
			if s.replacing && !initial {
				if done, err := s.caughtUp(ctx, js, bucket); err != nil {
					s.log.Warn("cannot tell whether the replaced view is complete", "error", err)
				} else if done {
					s.adopt(created)
				}
			}
			if s.halfLife > 0 && time.Since(s.decayedAt) >= s.decayEvery {
				s.employeesDirty = true // scores decay with time, not only with changes
			}
			if (s.employeesDirty || s.unattributedDirty) && !s.frozen() {
				s.rebuild() // a rebuild marker expired without being removed
			}
			continue
		case e, ok = <-w.Updates():
		}
		if !ok {
			return errors.New("watcher closed")
		}
		if e == nil {
			initial = false
			if !s.replacing {
				s.watched = created
			}
			s.rebuild()
			s.loaded.Store(true)
			if s.onLoad != nil {
				s.onLoad(s.snap.Load().version)
			}
			last = time.Now()
			continue
		}
		s.apply(e)
		if initial {
			continue
		}
		// Coalesce: take what else is waiting, then rebuild once.
		// At most one rebuild per max(minRebuild, 5x the last rebuild's
		// time): a busy pipeline costs the API at most a sixth of a core.
		wait := time.NewTimer(max(0, max(s.minRebuild, 5*s.lastRebuild)-time.Since(last)))
	drain:
		for {
			select {
			case e, ok = <-w.Updates():
				if !ok {
					wait.Stop()
					return errors.New("watcher closed")
				}
				if e != nil {
					s.apply(e)
				}
			case <-wait.C:
				break drain
			case <-ctx.Done():
				wait.Stop()
				return nil
			}
		}
		s.rebuild()
		last = time.Now()
	}
}

// apply takes one change of the bucket.
func (s *store) apply(e jetstream.KeyValueEntry) {
	s.revision = max(s.revision, e.Revision())
	key := e.Key()
	deleted := e.Operation() != jetstream.KeyValuePut
	if key == topology.RebuildKey {
		was := s.frozenUntil
		s.frozenUntil = time.Time{}
		if !deleted {
			until, err := time.Parse(time.RFC3339, string(e.Value()))
			if err != nil {
				s.log.Error("unreadable rebuild marker; ignored", "error", err)
				return
			}
			s.frozenUntil = until.Add(s.rebuildGrace)
			if was.IsZero() { // not at each renewal of its lease
				s.log.Info("view rebuild in progress; serving the previous view meanwhile", "until", until)
			}
		}
		return
	}
	if strings.HasPrefix(key, topology.UnattributedPrefix) {
		s.unattributedDirty = true
		if deleted {
			delete(s.unattributed, key)
			return
		}
		doc, err := view.ParseUnattributed(e.Value())
		if err != nil {
			s.log.Error("unreadable unattributed document in the view; skipped", "key", key, "error", err)
			return
		}
		s.unattributed[key] = doc
		return
	}
	if _, ok := view.IsPieceKey(key); ok {
		// A piece arrives before the manifest that names it and goes
		// after the manifest that stops naming it: nothing to prepare.
		if deleted {
			delete(s.pieces, key)
			return
		}
		frag, err := view.PieceIncidents(e.Value())
		if err != nil {
			s.log.Error("unreadable piece in the view; skipped", "key", key, "error", err)
			return
		}
		s.pieces[key] = frag
		return
	}
	if _, err := incident.ParseEmployeeID(key); err != nil {
		return // not an employee's document (a marker of the projector)
	}
	s.employeesDirty = true
	s.changed[key] = true
	if deleted {
		delete(s.employees, key)
		delete(s.prefixes, key)
		delete(s.counts, key)
		delete(s.timestamps, key)
		return
	}
	value := e.Value()
	if view.IsManifest(value) {
		m, err := view.ParseManifest(value)
		if err != nil {
			s.log.Error("unreadable manifest in the view; skipped", "key", key, "error", err)
			return
		}
		doc, err := view.Assemble(m, func(k string) ([]byte, bool) { b, ok := s.pieces[k]; return b, ok })
		if err != nil {
			s.log.Error("employee document incomplete; keeping the previous one", "key", key, "error", err)
			return
		}
		s.employees[key] = newBody(doc)
		s.counts[key] = m.Counts()
		s.noteTimestamps(key, doc)
		return
	}
	// A whole document, as earlier versions stored it.
	counts, err := view.Counts(value)
	if err != nil {
		s.log.Error("unreadable employee document in the view; skipped", "key", key, "error", err)
		return
	}
	s.employees[key] = newBody(value)
	s.counts[key] = counts
	s.noteTimestamps(key, value)
}

// rebuildGrace is how long the view stays held past the rebuild marker's
// lease: a rebuild that died (killed, its power cut) leaves the view
// emptied and half refilled, and a running projector takes its expired
// marker over within seconds and rebuilds again (renewing the marker);
// only when none does within the grace is the view served as it is.
const rebuildGrace = 30 * time.Second

func (s *store) frozen() bool { return s.replacing || time.Now().Before(s.frozenUntil) }

// rebuild prepares a new snapshot from the current documents, unless a
// view rebuild is in progress. Only the part that changed is prepared again.
func (s *store) rebuild() {
	if s.frozen() && s.loaded.Load() {
		return
	}
	start := time.Now()
	prev := s.snap.Load()
	next := *prev
	if s.employeesDirty {
		s.generation++
		next.keys, next.docs, next.all = s.prepareEmployees()
		next.ranking = s.rank(prev.ranking)
		s.employeesDirty = false
	}
	next.version = s.revision
	next.updated = time.Now()
	c := change{Version: next.version, VersionText: strconv.FormatUint(next.version, 10), Unattributed: s.unattributedDirty}
	if s.unattributedDirty {
		next.unattributed, next.unattributedCount = s.prepareUnattributed()
		s.unattributedDirty = false
	}
	for emp := range s.changed {
		if len(c.Employees) == maxListed {
			c.More = true
			break
		}
		c.Employees = append(c.Employees, emp)
	}
	slices.SortFunc(c.Employees, compareEmployeeIDs)
	clear(s.changed)
	changedVersion := next.version != prev.version
	next.rankingID = rankingID{version: next.version}
	if s.halfLife > 0 {
		next.rankingID.scored = s.decayedAt.UnixMilli()
	}
	s.snap.Store(&next)
	switch {
	case s.replaced:
		s.replaced = false
		if s.onReplace != nil {
			s.onReplace(next.version)
		}
	case s.onChange != nil && s.loaded.Load() && changedVersion:
		s.onChange(c)
	}
	s.lastRebuild = time.Since(start)
	s.metrics.snapshotSeconds.Observe(s.lastRebuild.Seconds())
	s.metrics.viewUpdated.SetToCurrentTime()
}

// rank orders the employees by risk score. Without decay only the
// employees changed since prev (the last ranking) move: the others keep
// their order and the changed are placed by binary search, so that a
// change costs a copy of the ranking, not a sort of it.
func (s *store) rank(prev []risk.Ranked) []risk.Ranked {
	now := time.Now()
	s.decayedAt = now
	defer func() { s.rerankAll = false }()
	if s.halfLife <= 0 && !s.rerankAll && len(s.changed) <= len(prev)/32 {
		ranking := make([]risk.Ranked, 0, len(s.counts))
		for _, r := range prev {
			if !s.changed[r.Employee] {
				ranking = append(ranking, r)
			}
		}
		for emp := range s.changed {
			c, ok := s.counts[emp]
			if !ok {
				continue // gone
			}
			r := risk.Ranked{Employee: emp, Score: risk.OfCounts(c), Counts: c}
			i, _ := slices.BinarySearchFunc(ranking, r, risk.Compare)
			ranking = slices.Insert(ranking, i, r)
		}
		return ranking
	}
	ranking := make([]risk.Ranked, 0, len(s.counts))
	for emp, c := range s.counts {
		score := risk.OfCounts(c)
		if s.halfLife > 0 {
			score = risk.OfTimestamps(s.timestamps[emp], now, s.halfLife)
		}
		ranking = append(ranking, risk.Ranked{Employee: emp, Score: score, Counts: c})
	}
	slices.SortFunc(ranking, risk.Compare)
	return ranking
}

// noteTimestamps keeps an employee's incident times when scores decay.
func (s *store) noteTimestamps(employee string, doc []byte) {
	if s.halfLife <= 0 {
		return
	}
	ts, err := view.Timestamps(doc)
	if err != nil {
		s.log.Error("unreadable employee document for risk decay; scored without its incidents", "key", employee, "error", err)
	}
	s.timestamps[employee] = ts
}

// decayEvery is how often decayed scores are brought up to date while the
// view does not change.
const decayEvery = time.Minute

// prepareEmployees concatenates the employees' documents, prepared when each
// changed, into the full GET /incidents document.
func (s *store) prepareEmployees() ([]string, []*body, *body) {
	if !sameKeys(s.sorted, s.employees) {
		s.sorted = make([]string, 0, len(s.employees))
		for k := range s.employees {
			s.sorted = append(s.sorted, k)
		}
		slices.SortFunc(s.sorted, compareEmployeeIDs)
	}
	keys := s.sorted
	// Each employee is two parts of the full document: `,"id":` (kept
	// from one snapshot to the next) and its document.
	type part struct {
		prefix []byte
		doc    *body
	}
	ordered := make([]part, len(keys))
	docs := make([]*body, len(keys))
	size := 1
	for i, k := range keys {
		prefix, ok := s.prefixes[k]
		if !ok {
			prefix = append(strconv.AppendQuote([]byte{','}, k), ':')
			s.prefixes[k] = prefix
		}
		b := s.employees[k]
		ordered[i] = part{prefix, b}
		docs[i] = b
		size += len(prefix) + len(b.raw)
	}
	if len(ordered) == 0 {
		size++ // no first comma to leave out
	}
	var full *body
	if size <= s.maxCopied {
		// Small enough to copy: one write per response, as a static
		// server's, beats gathering parts.
		buf := make([]byte, 0, size)
		buf = append(buf, '{')
		for i, p := range ordered {
			buf = append(buf, p.prefix[first(i):]...)
			buf = append(buf, p.doc.raw...)
		}
		full = &body{raw: append(buf, '}'), etag: generationETag(s.boot, s.generation)}
	} else {
		// Borrowed, not copied: the view is held once.
		parts := make([][]byte, 0, 2*len(ordered)+2)
		parts = append(parts, []byte{'{'})
		for i, p := range ordered {
			parts = append(parts, p.prefix[first(i):], p.doc.raw)
		}
		full = &body{parts: append(parts, []byte{'}'}), size: size, etag: generationETag(s.boot, s.generation)}
	}
	var totals [4]int
	for _, c := range s.counts {
		for i := range totals {
			totals[i] += c[i]
		}
	}
	s.metrics.viewEmployees.Set(float64(len(keys)))
	for i, p := range incident.Priorities() {
		s.metrics.viewIncidents.WithLabelValues(string(p)).Set(float64(totals[i]))
	}
	return keys, docs, full
}

// prepareUnattributed merges the unattributed documents into GET
// /unattributed; it also returns how many incidents they hold.
func (s *store) prepareUnattributed() (*body, int) {
	docs := make([]*view.Unattributed, 0, len(s.unattributed))
	n := 0
	for _, d := range s.unattributed {
		docs = append(docs, d)
		n += len(d.Incidents)
	}
	s.metrics.viewUnattributed.Set(float64(n))
	return newBody(view.MergeUnattributed(docs)), n
}

// compareEmployeeIDs orders numeric ids by value, others after them.
func compareEmployeeIDs(a, b string) int {
	if len(a) != len(b) {
		return len(a) - len(b)
	}
	return strings.Compare(a, b)
}
