package producers

import (
	"encoding/json"
	"hash/maphash"
	"strconv"
	"sync"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// seenSet remembers what one type's poller knows to be in INCIDENTS_RAW, in
// 8 bytes an incident: the first 64 bits of the incident id, and a hash of
// the exact bytes last received, so that an unchanged incident on the next
// poll is skipped without decoding it.
type seenSet struct {
	seed maphash.Seed

	mu  sync.Mutex
	ids map[uint64]struct{}
	raw map[uint64]struct{}

	// last and cur are the raw hashes of the last whole poll and of the
	// poll in progress, page by page, in the order received; hashes are
	// those of the page being read and prev last's of it.
	last, cur    map[int][]uint64
	page         int
	hashes, prev []uint64
}

// endPage files the hashes of the page being read.
func (s *seenSet) endPage() {
	if s.hashes != nil {
		s.cur[s.page] = s.hashes
	}
}

func newSeenSet() *seenSet {
	return &seenSet{seed: maphash.MakeSeed(), ids: map[uint64]struct{}{}, raw: map[uint64]struct{}{}}
}

// idKey is the first 64 bits of a hex incident id (or of any other string).
func idKey(id string) uint64 {
	if len(id) >= 16 {
		if k, err := strconv.ParseUint(id[:16], 16, 64); err == nil {
			return k
		}
	}
	return maphash.String(maphash.Seed{}, id)
}

// addID records an id read back from the stream.
func (s *seenSet) addID(id string) {
	s.mu.Lock()
	s.ids[idKey(id)] = struct{}{}
	s.mu.Unlock()
}

// hasID reports whether id was recorded.
func (s *seenSet) hasID(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[idKey(id)]
	return ok
}

// add records a stored incident.
func (s *seenSet) add(r storedIncident) {
	s.mu.Lock()
	s.ids[idKey(r.id)] = struct{}{}
	s.raw[r.rawHash] = struct{}{}
	s.mu.Unlock()
}

// known reports whether these exact bytes, the i-th incident of a poll's
// page number page, were stored before: such an incident is dropped while
// its page is read. An upstream that sends its list in the same order each
// time is checked against the last whole poll in sequence, without the
// random lookups a set of a million costs; anything else falls back to the
// set. One poll of the type runs at a time.
func (s *seenSet) known(page, i int, raw []byte) bool {
	h := maphash.Bytes(s.seed, raw)
	if page != s.page || i == 0 || s.hashes == nil {
		// The page starts (again, on a retry): the last whole poll's
		// sequence of it is looked up once, not per incident.
		s.endPage()
		s.page, s.prev = page, s.last[page]
		s.hashes = make([]uint64, 0, max(len(s.prev), 64))
	}
	s.hashes = append(s.hashes, h)
	if i < len(s.prev) && s.prev[i] == h {
		return true
	}
	s.mu.Lock()
	_, ok := s.raw[h]
	s.mu.Unlock()
	return ok
}

// pollStarts and pollEnds bracket a poll: a whole poll that succeeded from
// the first page (everything in it is stored) becomes the sequence the next
// one is checked against.
func (s *seenSet) pollStarts() { s.cur, s.page, s.hashes, s.prev = map[int][]uint64{}, 0, nil, nil }

func (s *seenSet) pollEnds(whole bool) {
	s.endPage()
	if whole {
		s.last = s.cur
	}
	s.cur, s.hashes, s.prev = nil, nil, nil
}

// fresh returns the incidents of a poll not known to be stored, each once.
func (s *seenSet) fresh(t incident.Type, items []json.RawMessage) []rawIncident {
	var out []rawIncident
	inBatch := map[uint64]bool{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, raw := range items {
		h := maphash.Bytes(s.seed, raw)
		if _, ok := s.raw[h]; ok {
			continue
		}
		id := incident.ID(t, raw)
		k := idKey(id)
		if _, ok := s.ids[k]; ok || inBatch[k] {
			s.raw[h] = struct{}{} // the same incident in other bytes: skip those too
			continue
		}
		inBatch[k] = true
		out = append(out, rawIncident{id: id, data: raw, rawHash: h})
	}
	return out
}
