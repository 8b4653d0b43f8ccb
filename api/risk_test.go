package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/incidentpipe/pipeline/internal/risk"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// docOf is an employee document with n incidents of each priority.
func docOf(emp int, n [4]int) string { return docAt(emp, n, 0) }

// docAt is docOf with timestamps from base on.
func docAt(emp int, n [4]int, base int64) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range []string{"low", "medium", "high", "critical"} {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `%q:{"count":%d,"incidents":[`, p, n[i])
		for j := range n[i] {
			if j > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `{"type":"misuse","priority":%q,"employee_id":%d,"timestamp":%d}`, p, emp, base+int64(j))
		}
		b.WriteString("]}")
	}
	b.WriteByte('}')
	return b.String()
}

// riskPageJSON is a page of GET /risk as a client reads it.
type riskPageJSON struct {
	Version   string `json:"version"`
	Employees []struct {
		Employee string         `json:"employee_id"`
		Score    float64        `json:"score"`
		Level    string         `json:"level"`
		Counts   map[string]int `json:"counts"`
	} `json:"employees"`
}

// getRisk GETs /risk with query from the API at url; the page is decoded
// when the answer is 200.
func getRisk(t *testing.T, url, query string) (riskPageJSON, *http.Response) {
	t.Helper()
	resp, b := do(t, http.MethodGet, url+"/risk"+query, "")
	var p riskPageJSON
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
	}
	return p, resp
}

func TestRiskRankingPagedAtOneVersion(t *testing.T) {
	hs, kv, _ := serveAPI(t, Options{})
	ctx := context.Background()
	for emp, n := range map[int][4]int{5: {0, 0, 0, 3}, 6: {1, 0, 0, 0}, 8: {0, 2, 1, 0}, 9: {1, 0, 0, 0}} {
		if _, err := kv.PutString(ctx, fmt.Sprint(emp), docOf(emp, n)); err != nil {
			t.Fatal(err)
		}
	}
	get := func(query string) (riskPageJSON, *http.Response) { return getRisk(t, hs.URL, query) }
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		p, _ := get("")
		return len(p.Employees) == 5, fmt.Sprintf("%d employees ranked", len(p.Employees))
	})
	p, _ := get("")
	var order []string
	for _, e := range p.Employees {
		order = append(order, e.Employee)
	}
	// 5: three criticals; 8: high, medium, medium; 42 (from serveAPI): one
	// low; 6 and 9: one low each, tied, by id.
	if got := strings.Join(order, ","); got != "5,8,6,9,42" {
		t.Fatalf("ranking %s", got)
	}
	if e := p.Employees[0]; e.Counts["critical"] != 3 || e.Level != "moderate" || e.Score != 58.59 {
		t.Errorf("employee 5: %+v", e)
	}
	if e := p.Employees[2]; e.Score != 8.04 || e.Level != "unknown" {
		t.Errorf("employee 6: %+v", e)
	}

	// Walk one at a time while the view changes: the walk stays on its
	// version, so nobody is skipped or seen twice.
	var walked []string
	query := "?limit=1"
	for range 10 {
		p, resp := get(query)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("page %s: %d", query, resp.StatusCode)
		}
		for _, e := range p.Employees {
			walked = append(walked, e.Employee)
		}
		if len(walked) == 1 {
			// After the first page, employee 9 jumps from behind the
			// cursor to the top: a walk of the live ranking would skip it.
			if _, err := kv.PutString(ctx, "9", docOf(9, [4]int{0, 0, 0, 9})); err != nil {
				t.Fatal(err)
			}
			testkit.Eventually(t, 10*time.Second, func() (bool, string) {
				p, _ := get("?limit=1")
				return len(p.Employees) == 1 && p.Employees[0].Employee == "9", "9 not on top yet"
			})
		}
		next := resp.Header.Get("X-Next-Cursor")
		if next == "" {
			break
		}
		query = "?limit=1&cursor=" + url.QueryEscape(next)
	}
	if got := strings.Join(walked, ","); got != "5,8,6,9,42" {
		t.Fatalf("a walk over a changing view gave %s", got)
	}
	for _, bad := range []string{"?limit=0", "?limit=1&limit=2", "?cursor=abc", "?cursor=1_NaN_5", "?colour=red", "?%zz"} {
		if _, resp := get(bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", bad, resp.StatusCode)
		}
	}
	if _, resp := get("?cursor=999999_1_5"); resp.StatusCode != http.StatusGone {
		t.Errorf("a cursor of a version no longer kept: %d, want 410", resp.StatusCode)
	}
}

// TestRiskDecay: with a half-life, an old critical incident weighs less
// than a new low one.
func TestRiskDecay(t *testing.T) {
	now := time.Now().Unix()
	for _, tt := range []struct {
		halfLife time.Duration
		first    string
	}{{0, "11"}, {24 * time.Hour, "12"}} {
		hs, kv, _ := serveAPI(t, Options{RiskHalfLife: tt.halfLife})
		ctx := context.Background()
		old := fmt.Sprintf(`{"low":{"count":0,"incidents":[]},"medium":{"count":0,"incidents":[]},"high":{"count":0,"incidents":[]},"critical":{"count":1,"incidents":[{"type":"misuse","priority":"critical","employee_id":11,"timestamp":%d}]}}`, now-10*86400)
		fresh := fmt.Sprintf(`{"low":{"count":1,"incidents":[{"type":"misuse","priority":"low","employee_id":12,"timestamp":%d}]},"medium":{"count":0,"incidents":[]},"high":{"count":0,"incidents":[]},"critical":{"count":0,"incidents":[]}}`, now)
		if _, err := kv.PutString(ctx, "11", old); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.PutString(ctx, "12", fresh); err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 10*time.Second, func() (bool, string) {
			_, b := do(t, http.MethodGet, hs.URL+"/risk?limit=1", "")
			return strings.Contains(string(b), `"employee_id":"`+tt.first+`"`), fmt.Sprintf("half-life %s: %s", tt.halfLife, b)
		})
	}
}

// TestCursorRankingsKeptByTimeAndBytes: a ranking a cursor walks is kept
// for the TTL after its last page however many versions come meanwhile,
// within the byte budget (the least recently paged go first); a cursor
// past either is counted.
func TestCursorRankingsKeptByTimeAndBytes(t *testing.T) {
	ranking := func(n int) []risk.Ranked {
		r := make([]risk.Ranked, n)
		for i := range r {
			r[i].Employee = strconv.Itoa(i)
		}
		return r
	}
	one := rankingBytes(ranking(100))
	c := newCursorRankings(10*time.Minute, 2*one, prometheus.NewRegistry())
	now := time.Now()
	c.now = func() time.Time { return now }
	c.pin(rankingID{version: 1}, ranking(100))
	c.pin(rankingID{version: 2, scored: 5}, ranking(100))
	now = now.Add(9 * time.Minute)
	if _, ok := c.get(rankingID{version: 1}); !ok { // paged again: kept longer
		t.Fatal("a ranking paged 9 minutes ago is gone")
	}
	if _, ok := c.get(rankingID{version: 2}); ok {
		t.Fatal("another ranking of the same version (scored at another moment) was returned")
	}
	c.pin(rankingID{version: 3}, ranking(100)) // over the budget: 2 goes (least recently paged)
	if _, ok := c.get(rankingID{version: 2, scored: 5}); ok {
		t.Error("past the budget, the least recently paged ranking is still kept")
	}
	now = now.Add(9 * time.Minute)
	if _, ok := c.get(rankingID{version: 1}); !ok {
		t.Error("a ranking paged 9 minutes ago is gone")
	}
	now = now.Add(10 * time.Minute)
	if _, ok := c.get(rankingID{version: 1}); ok {
		t.Error("a ranking not paged for 10 minutes is still kept")
	}
	if got := testutil.ToFloat64(c.gone); got != 3 {
		t.Errorf("incidents_api_risk_cursors_gone_total = %v, want 3", got)
	}
	if c.bytes != 0 || len(c.kept) != 0 {
		t.Errorf("%d bytes and %d rankings kept after all expired", c.bytes, len(c.kept))
	}
}

// TestRiskWalkSurvivesRescoringAndManyVersions: with decay, scores are
// decayed anew while a walk goes on, and hundreds of versions come between
// two of its pages; the walk still sees every employee once, since its
// cursor names the very ranking it started on (version and decay moment).
func TestRiskWalkSurvivesRescoringAndManyVersions(t *testing.T) {
	hs, kv, a := serveAPI(t, Options{RiskHalfLife: time.Minute})
	a.store.decayEvery = 0 // every second
	ctx := context.Background()
	now := time.Now().Unix()
	const employees = 24
	for emp := 1001; emp <= 1000+employees; emp++ {
		doc := docAt(emp, [4]int{1 + emp%3, emp % 4, emp % 5, emp % 2}, now-int64(emp%7*5))
		if _, err := kv.PutString(ctx, strconv.Itoa(emp), doc); err != nil {
			t.Fatal(err)
		}
	}
	get := func(query string) (riskPageJSON, string) {
		t.Helper()
		p, resp := getRisk(t, hs.URL, query)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("/risk%s: %d", query, resp.StatusCode)
		}
		return p, resp.Header.Get("X-Next-Cursor")
	}
	testkit.Eventually(t, 10*time.Second, func() (bool, string) {
		p, _ := get("?limit=100")
		return len(p.Employees) == employees+1, fmt.Sprintf("%d ranked", len(p.Employees))
	})
	walk := func(versions bool) {
		t.Helper()
		seen := map[string]int{}
		query := "?limit=5"
		for pages := 0; ; pages++ {
			top, _ := get("?limit=1")
			p, next := get(query)
			for _, e := range p.Employees {
				seen[e.Employee]++
			}
			if next == "" {
				break
			}
			if pages > employees {
				t.Fatal("the walk does not end")
			}
			// Scores are decayed anew (same view version, another ranking)...
			testkit.Eventually(t, 10*time.Second, func() (bool, string) {
				now, _ := get("?limit=1")
				return now.Employees[0].Score != top.Employees[0].Score, fmt.Sprintf("not re-scored yet: %s %v", now.Version, now.Employees[0].Score)
			})
			// ... and, in the second walk, hundreds of versions come.
			if versions && pages == 0 {
				for i := range 300 {
					if _, err := kv.PutString(ctx, "42", strings.Replace(doc42, `"timestamp":1`, fmt.Sprintf(`"timestamp":%d`, now-int64(i)), 1)); err != nil {
						t.Fatal(err)
					}
				}
			}
			query = "?limit=5&cursor=" + url.QueryEscape(next)
		}
		for emp, n := range seen {
			if n != 1 {
				t.Errorf("employee %s seen %d times", emp, n)
			}
		}
		if len(seen) != employees+1 {
			t.Errorf("the walk saw %d employees, want %d", len(seen), employees+1)
		}
	}
	walk(false)
	walk(true)
}
