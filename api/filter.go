package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/view"
)

// filter is a query of GET /incidents.
type filter struct {
	priorities [4]bool // by priority index; all true when not given
	types      map[incident.Type]bool
	since      *float64
	until      *float64
	limit      int
	cursor     string
}

// maxLimit bounds one page of employees.
const maxLimit = 10000

// parseFilter reads priority=, type= (each repeatable or comma-separated),
// since=, until= (timestamps, inclusive), limit= and cursor=. It reports
// false when the query has none of them.
func parseFilter(rawQuery string) (filter, bool, error) {
	f := filter{priorities: [4]bool{true, true, true, true}}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return f, true, errors.New("the query is not valid URL encoding")
	}
	used := false
	for key, values := range q {
		used = true
		var list []string
		for _, v := range values {
			list = append(list, strings.Split(v, ",")...)
		}
		switch key {
		case "priority":
			f.priorities = [4]bool{}
			for _, p := range list {
				i := incident.Priority(p).Index()
				if i < 0 {
					return f, true, fmt.Errorf("priority %q: want low, medium, high or critical", p)
				}
				f.priorities[i] = true
			}
		case "type":
			f.types = map[incident.Type]bool{}
			for _, t := range list {
				typ, err := incident.ParseType(t)
				if err != nil {
					return f, true, err
				}
				f.types[typ] = true
			}
		case "since", "until":
			v, ok := parseTimestamp(values)
			if !ok {
				return f, true, fmt.Errorf("%s: want one timestamp, a decimal number of seconds since the epoch", key)
			}
			if key == "since" {
				f.since = &v
			} else {
				f.until = &v
			}
		case "limit":
			n, err := parseLimit(values)
			if err != nil {
				return f, true, err
			}
			f.limit = n
		case "cursor":
			c, err := incident.ParseEmployeeID(values[0])
			if err != nil || len(values) > 1 {
				return f, true, errNoCursor
			}
			f.cursor = c
		default:
			return f, true, fmt.Errorf("unknown query parameter %q", key)
		}
	}
	return f, used, nil
}

// timestampSyntax is a JSON number: no NaN, Inf, hex or leading '+'.
var timestampSyntax = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)

// parseTimestamp reads the one value of since= or until=.
func parseTimestamp(values []string) (float64, bool) {
	if len(values) != 1 || len(values[0]) > 64 || !timestampSyntax.MatchString(values[0]) {
		return 0, false
	}
	v, err := strconv.ParseFloat(values[0], 64)
	return v, err == nil && !math.IsInf(v, 0)
}

// parseLimit reads the one value of limit=: employees on a page.
func parseLimit(values []string) (int, error) {
	n, err := strconv.Atoi(values[0])
	if err != nil || len(values) > 1 || !digits(values[0]) || n < 1 || n > maxLimit {
		return 0, fmt.Errorf("limit: want a number of employees from 1 to %d", maxLimit)
	}
	return n, nil
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}

func (f filter) keeps(e view.Entry, t incident.Type) bool {
	if f.types != nil && !f.types[t] {
		return false
	}
	if f.since != nil && e.Timestamp.Value < *f.since {
		return false
	}
	return f.until == nil || e.Timestamp.Value <= *f.until
}

// onlyPaging reports whether f selects every incident (it may still page).
func (f filter) onlyPaging() bool {
	return f.priorities == [4]bool{true, true, true, true} && f.types == nil && f.since == nil && f.until == nil
}

// errNoCursor is a cursor that names no place in the document.
var errNoCursor = errors.New("cursor: not a cursor this API gave")

// render writes the filtered document of snap, in document order, and
// returns the cursor of the next page ("" on the last).
func (f filter) render(snap *snapshot) ([]byte, string, error) {
	keys, docs := snap.keys, snap.docs
	if f.cursor != "" {
		i, found := slices.BinarySearchFunc(keys, f.cursor, compareEmployeeIDs)
		if found {
			i++
		}
		keys, docs = keys[i:], docs[i:]
	}
	var b bytes.Buffer
	b.WriteByte('{')
	written, next := 0, ""
	for i, k := range keys {
		if f.limit > 0 && written == f.limit {
			next = keys[i-1]
			break
		}
		doc := docs[i]
		var raw []byte
		if f.onlyPaging() {
			raw = doc.raw
		} else {
			raw = f.filterEmployee(doc.employee())
			if raw == nil {
				continue
			}
		}
		if written > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.Quote(k))
		b.WriteByte(':')
		b.Write(raw)
		written++
	}
	b.WriteByte('}')
	return b.Bytes(), next, nil
}

// filterEmployee returns the employee's document with only the incidents f
// keeps, or nil when none is left.
func (f filter) filterEmployee(doc *view.Employee) []byte {
	var out view.Employee
	n := 0
	for i, l := range doc.Buckets {
		if !f.priorities[i] {
			continue
		}
		for _, e := range l {
			var head struct {
				Type incident.Type `json:"type"`
			}
			if f.types != nil {
				if err := json.Unmarshal(e.JSON, &head); err != nil {
					continue
				}
			}
			if f.keeps(e, head.Type) {
				out.Buckets[i] = append(out.Buckets[i], e)
				n++
			}
		}
	}
	if n == 0 {
		return nil
	}
	b, _ := out.MarshalJSON()
	return b
}

// filtered answers a GET /incidents with a query: computed per request, as
// the combinations cannot all be prepared.
func (a *API) filtered(w http.ResponseWriter, r *http.Request, f filter) {
	b, next, err := a.filters.answer(r.Context(), a.store.snap.Load(), f)
	switch {
	case errors.Is(err, errNoCursor):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, "busy with other filtered requests; retry shortly")
		return
	}
	if next != "" {
		q := r.URL.Query()
		q.Set("cursor", next)
		w.Header().Set("Link", "<"+r.URL.Path+"?"+q.Encode()+`>; rel="next"`)
		w.Header().Set("X-Next-Cursor", next)
	}
	serve(w, r, b)
}
