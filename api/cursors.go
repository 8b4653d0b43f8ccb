package api

import (
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/risk"
)

// rankingID names one ranking: the view version it ranks and, with decay,
// the moment its scores were decayed to (Unix milliseconds; 0 without
// decay), since re-scoring ranks the same version anew.
type rankingID struct {
	version uint64
	scored  int64
}

// String is the ranking's version as /risk shows it: "4711", or
// "4711.1764748800000" with decay.
func (id rankingID) String() string {
	v := strconv.FormatUint(id.version, 10)
	if id.scored != 0 {
		v += "." + strconv.FormatInt(id.scored, 10)
	}
	return v
}

func parseRankingID(s string) (rankingID, bool) {
	v, scored, decayed := strings.Cut(s, ".")
	version, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return rankingID{}, false
	}
	id := rankingID{version: version}
	if decayed {
		if id.scored, err = strconv.ParseInt(scored, 10, 64); err != nil || id.scored <= 0 {
			return rankingID{}, false
		}
	}
	return id, true
}

// Cursor rankings are kept by time and bytes, not by count: at a busy
// view's pace (a new version every 50 ms) a count would keep seconds. A
// ranking is kept only once a page of it was handed out with a cursor,
// for CursorTTL after its last page, within a byte budget (the least
// recently paged go first when it is full).
const (
	// CursorTTL is how long a /risk cursor stays valid after its last page.
	CursorTTL = 10 * time.Minute
	// DefaultCursorBudget bounds the rankings kept for cursors, in bytes.
	DefaultCursorBudget = 64 << 20
)

// cursorRankings keeps the rankings open cursors walk.
type cursorRankings struct {
	ttl    time.Duration
	budget int64
	gone   prometheus.Counter // 410s: a cursor whose ranking is no longer kept
	now    func() time.Time   // time.Now; tests move it

	mu    sync.Mutex
	kept  map[rankingID]*keptRanking
	bytes int64
}

type keptRanking struct {
	ranked   []risk.Ranked
	bytes    int64
	lastUsed time.Time
}

func newCursorRankings(ttl time.Duration, budget int64, reg prometheus.Registerer) *cursorRankings {
	c := &cursorRankings{ttl: ttl, budget: budget, now: time.Now, kept: map[rankingID]*keptRanking{},
		gone: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "incidents_api_risk_cursors_gone_total",
			Help: "GET /risk answered 410: the cursor's ranking was no longer kept (past its time or the memory budget).",
		})}
	kept := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "incidents_api_risk_cursor_bytes",
		Help: "Memory held by the rankings kept for open /risk cursors (bounded by the budget).",
	}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		return float64(c.bytes)
	})
	reg.MustRegister(c.gone, kept)
	return c
}

// rankingBytes estimates the memory a ranking holds.
func rankingBytes(ranked []risk.Ranked) int64 {
	n := int64(len(ranked)) * int64(unsafe.Sizeof(risk.Ranked{}))
	for _, r := range ranked {
		n += int64(len(r.Employee))
	}
	return n
}

// pin keeps ranked, the ranking id, for a cursor into it: for the TTL from
// now, evicting the least recently paged rankings past the budget.
func (c *cursorRankings) pin(id rankingID, ranked []risk.Ranked) {
	c.mu.Lock()
	now := c.now()
	defer c.mu.Unlock()
	c.expire(now)
	if k, ok := c.kept[id]; ok {
		k.lastUsed = now
		return
	}
	k := &keptRanking{ranked: ranked, bytes: rankingBytes(ranked), lastUsed: now}
	c.kept[id] = k
	c.bytes += k.bytes
	for c.bytes > c.budget && len(c.kept) > 1 {
		var oldest rankingID
		var at time.Time
		for id, k := range c.kept {
			if at.IsZero() || k.lastUsed.Before(at) {
				oldest, at = id, k.lastUsed
			}
		}
		c.drop(oldest)
	}
}

// get returns the ranking id names, if it is kept, and keeps it longer.
func (c *cursorRankings) get(id rankingID) ([]risk.Ranked, bool) {
	c.mu.Lock()
	now := c.now()
	defer c.mu.Unlock()
	c.expire(now)
	k, ok := c.kept[id]
	if !ok {
		c.gone.Inc()
		return nil, false
	}
	k.lastUsed = now
	return k.ranked, true
}

// clear forgets every ranking (the view was replaced: its versions start
// again).
func (c *cursorRankings) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.kept)
	c.bytes = 0
}

// expire drops the rankings not paged for the TTL. c.mu is held.
func (c *cursorRankings) expire(now time.Time) {
	for id, k := range c.kept {
		if now.Sub(k.lastUsed) >= c.ttl {
			c.drop(id)
		}
	}
}

func (c *cursorRankings) drop(id rankingID) {
	c.bytes -= c.kept[id].bytes
	delete(c.kept, id)
}
