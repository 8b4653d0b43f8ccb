package faults

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"
)

// Placement is where the view shows an incident.
type Placement struct {
	Employee string
	Priority string
}

// Checker records every incident that GET /incidents showed.
type Checker struct {
	api    string
	client *http.Client

	mu    sync.Mutex
	shown map[string]Placement // canonical incident → where it was first shown
	moved []string             // shown again somewhere else before any fault
}

// NewChecker reads the API at base (http://host:port).
func NewChecker(base string) *Checker {
	return &Checker{api: base, client: &http.Client{Timeout: 10 * time.Second}, shown: map[string]Placement{}}
}

// SetAPI points the checker at another API, as when the pipeline restarted
// on other ports.
func (c *Checker) SetAPI(base string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.api = base
}

// Shown returns how many distinct incidents the API has shown.
func (c *Checker) Shown() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.shown)
}

// ShownKeys returns the canonical form of every incident shown.
func (c *Checker) ShownKeys() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.shown))
	for k := range c.shown {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Poll reads GET /incidents once and records what it shows; it returns how
// many incidents it showed for the first time.
func (c *Checker) Poll(ctx context.Context) (int, error) {
	doc, err := c.fetch(ctx)
	if err != nil {
		return 0, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	added := 0
	for key, places := range doc {
		p := places[0]
		if was, ok := c.shown[key]; ok {
			if was != p {
				c.moved = append(c.moved, fmt.Sprintf("%s shown at %v, then at %v", key, was, p))
			}
			continue
		}
		c.shown[key] = p
		added++
	}
	return added, nil
}

// View is a GET /incidents document read as canonical incident → every
// place it is listed (more than one is a duplicate).
type View map[string][]Placement

// fetch reads and parses GET /incidents.
func (c *Checker) fetch(ctx context.Context) (View, error) {
	c.mu.Lock()
	api := c.api
	c.mu.Unlock()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/incidents", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading GET /incidents: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /incidents: %s", resp.Status)
	}
	return ParseView(body)
}

// ParseView reads a GET /incidents document.
func ParseView(body []byte) (View, error) {
	var doc map[string]map[string]struct {
		Incidents []json.RawMessage `json:"incidents"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("parsing GET /incidents: %w", err)
	}
	v := View{}
	for employee, groups := range doc {
		for priority, g := range groups {
			for _, raw := range g.Incidents {
				key, err := Canonical(raw)
				if err != nil {
					return nil, err
				}
				v[key] = append(v[key], Placement{Employee: employee, Priority: priority})
			}
		}
	}
	return v, nil
}

// Canonical is an incident's JSON with sorted keys and no white space, its
// numbers spelled as given: the same incident reads the same.
func Canonical(raw json.RawMessage) (string, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return "", fmt.Errorf("canonical incident: %w", err)
	}
	b, err := json.Marshal(v) // maps marshal with sorted keys
	return string(b), err
}

// Report is what a comparison after recovery found.
type Report struct {
	Shown      int      // incidents shown before the fault
	Lost       []string // shown before, missing after
	Duplicated []string // listed more than once after
	Moved      []string // listed under another employee or priority than shown
	Invalid    []string // listed after, never listed by the upstream
}

// OK reports whether nothing was lost, duplicated, moved or invented.
func (r Report) OK() bool {
	return len(r.Lost)+len(r.Duplicated)+len(r.Moved)+len(r.Invalid) == 0
}

func (r Report) String() string {
	first := func(s []string) string {
		if len(s) == 0 {
			return ""
		}
		return " (first: " + s[0] + ")"
	}
	return fmt.Sprintf("shown %d: lost %d%s, duplicated %d%s, moved %d%s, invalid %d%s",
		r.Shown, len(r.Lost), first(r.Lost), len(r.Duplicated), first(r.Duplicated),
		len(r.Moved), first(r.Moved), len(r.Invalid), first(r.Invalid))
}

// Compare reads the view of the API at base after recovery and compares it
// with everything shown before; valid is every incident the upstream ever
// listed.
func (c *Checker) Compare(ctx context.Context, base string, valid map[string]bool) (Report, error) {
	after, err := NewChecker(base).fetch(ctx)
	if err != nil {
		return Report{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := Report{Shown: len(c.shown), Moved: append([]string(nil), c.moved...)}
	for key, was := range c.shown {
		places, ok := after[key]
		switch {
		case !ok:
			r.Lost = append(r.Lost, key)
		case places[0] != was:
			r.Moved = append(r.Moved, fmt.Sprintf("%s shown at %v, now at %v", key, was, places[0]))
		}
	}
	for key, places := range after {
		if len(places) > 1 {
			r.Duplicated = append(r.Duplicated, fmt.Sprintf("%s at %v", key, places))
		}
		if !valid[key] {
			r.Invalid = append(r.Invalid, key)
		}
	}
	sort.Strings(r.Lost)
	return r, nil
}
