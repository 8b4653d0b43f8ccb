package faults

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
)

// item is one upstream incident and its type.
type item struct {
	t   incident.Type
	raw json.RawMessage
}

// Upstream serves a capture through the simulator in window mode, adding it
// chunk by chunk, so that what was listed early is no longer listed later.
type Upstream struct {
	URL, User, Password string

	sim    *simulator.Server
	srv    *http.Server
	chunks [][]item
	next   int
	valid  map[string]bool
	window time.Duration
}

// NewUpstream loads the capture in dir, shuffled by seed into chunks of
// chunk incidents, and serves it on loopback; each incident is listed for
// window after it is added.
func NewUpstream(dir string, chunk int, window time.Duration, seed uint64) (*Upstream, error) {
	sim := simulator.NewServer("harness", "harness-password", simulator.Faults{Window: window}, seed)
	var all []item
	for _, t := range incident.Types() {
		b, err := os.ReadFile(filepath.Join(dir, string(t)+".json"))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("reading the capture: %w", err)
		}
		items, _, err := incident.DecodeResults(b)
		if err != nil {
			return nil, fmt.Errorf("reading the capture's %s: %w", t, err)
		}
		for _, raw := range items {
			all = append(all, item{t: t, raw: raw})
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, "identities.json"))
	if err != nil {
		return nil, fmt.Errorf("reading the capture: %w", err)
	}
	var ids map[string]json.RawMessage
	if err := json.Unmarshal(b, &ids); err != nil {
		return nil, fmt.Errorf("reading the capture's identities: %w", err)
	}
	sim.SetIdentities(ids)
	rng := rand.New(rand.NewPCG(seed, 0xfa17))
	rng.Shuffle(len(all), func(i, j int) { all[i], all[j] = all[j], all[i] })
	u := &Upstream{sim: sim, valid: map[string]bool{}, window: window, User: "harness", Password: "harness-password"}
	for lo := 0; lo < len(all); lo += chunk {
		u.chunks = append(u.chunks, all[lo:min(lo+chunk, len(all))])
	}
	for _, it := range all {
		key, err := servedKey(it)
		if err != nil {
			return nil, err
		}
		u.valid[key] = true
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("serving the upstream: %w", err)
	}
	u.URL = "http://" + l.Addr().String()
	u.srv = &http.Server{Handler: sim, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = u.srv.Serve(l) }()
	return u, nil
}

// servedKey is the canonical form of an upstream incident as the view
// serves it: the upstream object plus its type.
func servedKey(it item) (string, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(it.raw, &obj); err != nil {
		return "", fmt.Errorf("reading a captured incident: %w", err)
	}
	obj["type"], _ = json.Marshal(string(it.t))
	b, err := json.Marshal(obj)
	if err != nil {
		return "", err
	}
	return Canonical(b)
}

// Close stops serving.
func (u *Upstream) Close() { _ = u.srv.Close() }

// Valid is every incident the upstream can ever list, canonical.
func (u *Upstream) Valid() map[string]bool { return u.valid }

// Window is how long each incident is listed.
func (u *Upstream) Window() time.Duration { return u.window }

// Add lists the next chunk; it reports false when the capture is used up.
func (u *Upstream) Add() bool {
	if u.next >= len(u.chunks) {
		return false
	}
	u.list(u.next)
	u.next++
	return true
}

// Relist lists chunk i again, for another window: the same incidents,
// which the pipeline counts once.
func (u *Upstream) Relist(i int) { u.list(i) }

func (u *Upstream) list(i int) {
	byType := map[incident.Type][]json.RawMessage{}
	for _, it := range u.chunks[i] {
		byType[it.t] = append(byType[it.t], it.raw)
	}
	for t, items := range byType {
		u.sim.AppendIncidents(t, items...)
	}
}

// Chunks is how many chunks the capture makes; Added how many are listed
// or were.
func (u *Upstream) Chunks() int { return len(u.chunks) }

// Added is how many chunks have been added.
func (u *Upstream) Added() int { return u.next }

// Listed is the canonical form of every incident listed now.
func (u *Upstream) Listed() (map[string]bool, error) {
	listed := map[string]bool{}
	for _, t := range incident.Types() {
		for _, raw := range u.sim.Listed(t) {
			key, err := servedKey(item{t: t, raw: raw})
			if err != nil {
				return nil, err
			}
			listed[key] = true
		}
	}
	return listed, nil
}

// ChunkKeys is the canonical form of every incident of chunk i.
func (u *Upstream) ChunkKeys(i int) []string {
	var keys []string
	for _, it := range u.chunks[i] {
		key, _ := servedKey(it)
		keys = append(keys, key)
	}
	return keys
}
