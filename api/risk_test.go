package api

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/incidentpipe/pipeline/internal/risk"
	"github.com/incidentpipe/pipeline/internal/testkit"
)

// docOf is an employee document with n incidents of each priority.
func docOf(emp int, n [4]int) string {
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
			fmt.Fprintf(&b, `{"type":"misuse","priority":%q,"employee_id":%d,"timestamp":%d}`, p, emp, j)
		}
		b.WriteString("]}")
	}
	b.WriteByte('}')
	return b.String()
}

func TestRiskRankingPagedAtOneVersion(t *testing.T) {
	hs, kv, _ := serveAPI(t, Options{})
	ctx := context.Background()
	for emp, n := range map[int][4]int{5: {0, 0, 0, 3}, 6: {1, 0, 0, 0}, 8: {0, 2, 1, 0}, 9: {1, 0, 0, 0}} {
		if _, err := kv.PutString(ctx, fmt.Sprint(emp), docOf(emp, n)); err != nil {
			t.Fatal(err)
		}
	}
	type page struct {
		Version   string `json:"version"`
		Employees []struct {
			Employee string         `json:"employee_id"`
			Score    float64        `json:"score"`
			Level    string         `json:"level"`
			Counts   map[string]int `json:"counts"`
		} `json:"employees"`
	}
	get := func(query string) (page, *http.Response) {
		t.Helper()
		resp, b := do(t, http.MethodGet, hs.URL+"/risk"+query, "")
		var p page
		if resp.StatusCode == http.StatusOK {
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatalf("%s: %v", b, err)
			}
		}
		return p, resp
	}
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

// TestRecentRankingsBounded: past versions keep only their rankings, at
// most keptVersions of them and, for large views, fewer; the current one
// always stays.
func TestRecentRankingsBounded(t *testing.T) {
	s := newStore(slog.New(slog.DiscardHandler), newMetrics(prometheus.NewRegistry()))
	for v := uint64(1); v <= 40; v++ {
		s.remember(&snapshot{version: v, ranking: make([]risk.Ranked, 10)})
	}
	if len(s.recent) != keptVersions {
		t.Errorf("small rankings: %d versions kept, want %d", len(s.recent), keptVersions)
	}
	if _, ok := s.at(40 - keptVersions); ok {
		t.Error("a version past keptVersions is still kept")
	}
	if r, ok := s.at(40); !ok || len(r) != 10 {
		t.Errorf("the current version: kept %v, %d entries", ok, len(r))
	}
	big := keptRanked/3 + 1
	for v := uint64(41); v <= 45; v++ {
		s.remember(&snapshot{version: v, ranking: make([]risk.Ranked, big)})
	}
	total := 0
	for _, r := range s.recent {
		total += len(r.ranked)
	}
	if len(s.recent) != 2 || total > keptRanked {
		t.Errorf("large rankings: %d versions, %d entries kept, want 2 within %d", len(s.recent), total, keptRanked)
	}
	s.remember(&snapshot{version: 46, ranking: make([]risk.Ranked, 2*keptRanked)})
	if _, ok := s.at(46); !ok || len(s.recent) != 1 {
		t.Errorf("a ranking larger than the bound: %d versions kept, the current one kept %v", len(s.recent), ok)
	}
}
