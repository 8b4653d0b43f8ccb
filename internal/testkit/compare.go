package testkit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
)

// CompareIncidents compares two GET /incidents documents the way the contract
// reads them: key order free, equal timestamps in either order, every
// number keeping its JSON type and digits. It returns the differences.
func CompareIncidents(expected, actual []byte) []string {
	var exp, act map[string]map[string]json.RawMessage
	if err := decode(expected, &exp); err != nil {
		return []string{"expected: " + err.Error()}
	}
	if err := decode(actual, &act); err != nil {
		return []string{"actual is not an object of employees: " + err.Error()}
	}
	var problems []string
	for _, emp := range sortedKeys(exp) {
		if _, ok := act[emp]; !ok {
			problems = append(problems, "employee "+emp+" missing")
		}
	}
	for _, emp := range sortedKeys(act) {
		e, ok := exp[emp]
		if !ok {
			problems = append(problems, "employee "+emp+" unexpected")
			continue
		}
		a := act[emp]
		if len(a) != 4 {
			problems = append(problems, fmt.Sprintf("%s: %d priorities, want 4", emp, len(a)))
		}
		for _, p := range []string{"low", "medium", "high", "critical"} {
			problems = append(problems, compareBucket(emp+"/"+p, e[p], a[p])...)
		}
	}
	return problems
}

type bucket struct {
	Count     *int              `json:"count"`
	Incidents []json.RawMessage `json:"incidents"`
}

func compareBucket(where string, expRaw, actRaw json.RawMessage) []string {
	var exp, act bucket
	if err := decode(actRaw, &act); err != nil || act.Count == nil || act.Incidents == nil {
		return []string{where + ": not {count, incidents}"}
	}
	_ = decode(expRaw, &exp)
	var problems []string
	if *act.Count != len(act.Incidents) {
		problems = append(problems, fmt.Sprintf("%s: count %d but %d incidents", where, *act.Count, len(act.Incidents)))
	}
	var last float64
	for i, raw := range act.Incidents {
		var head struct{ Timestamp json.Number }
		if err := decode(raw, &head); err != nil {
			problems = append(problems, where+": incident is not an object")
			continue
		}
		ts, err := strconv.ParseFloat(string(head.Timestamp), 64)
		if err != nil {
			problems = append(problems, where+": timestamp not a number")
		}
		if i > 0 && ts < last {
			problems = append(problems, where+": not sorted by timestamp")
		}
		last = ts
	}
	e, a := canonAll(exp.Incidents), canonAll(act.Incidents)
	if !slices.Equal(e, a) {
		problems = append(problems, fmt.Sprintf("%s: incidents differ\n  want %v\n  got  %v", where, e, a))
	}
	return problems
}

// canonAll renders each incident with sorted keys and literal numbers, sorted.
func canonAll(raws []json.RawMessage) []string {
	out := make([]string, 0, len(raws))
	for _, r := range raws {
		var v any
		if err := decode(r, &v); err != nil {
			out = append(out, "invalid:"+string(r))
			continue
		}
		b, _ := json.Marshal(v) // maps sort their keys; json.Number keeps its digits
		out = append(out, string(b))
	}
	sort.Strings(out)
	return out
}

func decode(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
