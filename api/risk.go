package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/go-chi/chi/v5"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/risk"
)

// riskPage is one page of GET /risk.
type riskPage struct {
	Version   string      `json:"version"`
	Employees []riskEntry `json:"employees"`
}

type riskEntry struct {
	Employee string         `json:"employee_id"`
	Score    float64        `json:"score"`
	Level    risk.Level     `json:"level"`
	Counts   map[string]int `json:"counts"`
}

// riskCursor is where a page of the ranking ends: the last employee's
// (score, id) in one ranking.
type riskCursor struct {
	ranking  rankingID
	score    float64
	employee string
}

func (c riskCursor) String() string {
	return c.ranking.String() + "_" + strconv.FormatFloat(c.score, 'g', -1, 64) + "_" + c.employee
}

var errBadRiskCursor = errors.New("cursor: not a cursor this API gave")

func parseRiskCursor(s string) (riskCursor, error) {
	parts := strings.Split(s, "_")
	if len(parts) != 3 {
		return riskCursor{}, errBadRiskCursor
	}
	id, ok := parseRankingID(parts[0])
	sc, err2 := strconv.ParseFloat(parts[1], 64)
	emp, err3 := incident.ParseEmployeeID(parts[2])
	if !ok || err2 != nil || err3 != nil || math.IsNaN(sc) || math.IsInf(sc, 0) {
		return riskCursor{}, errBadRiskCursor
	}
	return riskCursor{ranking: id, score: sc, employee: emp}, nil
}

// riskRanking answers GET /risk: employees ranked by risk score, highest
// first, each with its level and counts per priority; paged with limit= and
// cursor=, every page of one walk taken from the same view version, so that
// a live ranking neither skips nor repeats anyone.
func (a *API) riskRanking(w http.ResponseWriter, r *http.Request) {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		writeError(w, http.StatusBadRequest, "the query is not valid URL encoding")
		return
	}
	limit := 100
	snap := a.store.snap.Load()
	id, ranked := snap.rankingID, snap.ranking
	start := 0
	for key, values := range q {
		if len(values) != 1 {
			writeError(w, http.StatusBadRequest, key+": give it once")
			return
		}
		switch key {
		case "limit":
			n, err := parseLimit(values)
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			limit = n
		case "cursor":
			c, err := parseRiskCursor(values[0])
			if err != nil {
				writeError(w, http.StatusBadRequest, err.Error())
				return
			}
			if c.ranking != snap.rankingID {
				var kept bool
				if ranked, kept = a.store.cursors.get(c.ranking); !kept {
					writeError(w, http.StatusGone, "the ranking this cursor belongs to is no longer kept (10 minutes after its last page, or past the memory budget); start again without a cursor")
					return
				}
			}
			id = c.ranking
			start, _ = slices.BinarySearchFunc(ranked, risk.Ranked{Employee: c.employee, Score: c.score}, risk.Compare)
			if start < len(ranked) && ranked[start].Employee == c.employee {
				start++
			}
		default:
			writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown query parameter %q", key))
			return
		}
	}
	end := min(start+limit, len(ranked))
	page := riskPage{Version: id.String(), Employees: make([]riskEntry, 0, end-start)}
	for _, rk := range ranked[start:end] {
		page.Employees = append(page.Employees, entryOf(rk))
	}
	if end < len(ranked) {
		last := ranked[end-1]
		a.store.cursors.pin(id, ranked)
		next := riskCursor{ranking: id, score: last.Score, employee: last.Employee}.String()
		w.Header().Set("X-Next-Cursor", next)
		w.Header().Set("Link", "<"+r.URL.Path+"?"+url.Values{"cursor": {next}, "limit": {strconv.Itoa(limit)}}.Encode()+`>; rel="next"`)
	}
	b, err := json.Marshal(page)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	serve(w, r, newBody(b))
}

// employeeRisk is GET /risk/{employee_id}: one employee's entry of the
// current ranking, with what the console needs to explain it exactly as
// ranked (the half-life and the moment scores were decayed to).
type employeeRisk struct {
	riskEntry
	Rank     int     `json:"rank"` // 1 for the highest
	Version  string  `json:"version"`
	HalfLife float64 `json:"half_life_seconds"` // 0: no decay
	ScoredAt float64 `json:"scored_at"`         // Unix seconds scores are decayed to (0: no decay)
}

// employeeRiskEntry answers GET /risk/{employee_id}.
func (a *API) employeeRiskEntry(w http.ResponseWriter, r *http.Request) {
	id, err := incident.ParseEmployeeID(chi.URLParam(r, "employee_id"))
	if err != nil {
		writeError(w, http.StatusNotFound, "no incidents for this employee")
		return
	}
	snap := a.store.snap.Load()
	i := slices.IndexFunc(snap.ranking, func(rk risk.Ranked) bool { return rk.Employee == id })
	if i < 0 {
		writeError(w, http.StatusNotFound, "no incidents for this employee")
		return
	}
	out := employeeRisk{riskEntry: entryOf(snap.ranking[i]), Rank: i + 1, Version: snap.rankingID.String()}
	if a.store.halfLife > 0 {
		out.HalfLife = a.store.halfLife.Seconds()
		out.ScoredAt = float64(snap.rankingID.scored) / 1000
	}
	b, err := json.Marshal(out)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "internal error")
		return
	}
	serve(w, r, newBody(b))
}

// entryOf is rk as /risk shows it.
func entryOf(rk risk.Ranked) riskEntry {
	counts := make(map[string]int, 4)
	for i, p := range incident.Priorities() {
		counts[string(p)] = rk.Counts[i]
	}
	return riskEntry{Employee: rk.Employee, Score: math.Round(rk.Score*100) / 100, Level: risk.LevelOf(rk.Score), Counts: counts}
}
