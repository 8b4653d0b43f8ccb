// Package simulator serves the upstream incident API from data held in
// memory: a capture read from disk, or realistic data generated over time.
// It injects the upstream's faults on demand (latency, 5xx, cut-off bodies)
// and pages Django-REST style, so that the pipeline can be tried and tested
// without an upstream account.
package simulator

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/wait"
)

// Faults are the upstream's misbehaviours to inject.
type Faults struct {
	// Latency is the mean delay of a response; each waits 0.5x to 1.5x of it.
	Latency time.Duration
	// FailRate is the share of requests answered with a 502, a 500 or a
	// body cut off half-way, one third each.
	FailRate float64
	// PageSize, when positive, pages incident lists Django-REST style.
	PageSize int
	// Window, when positive, lists each incident only for this long after
	// it was added (as incident APIs that list recent incidents do), so
	// that a later poll cannot bring back what the pipeline lost.
	Window time.Duration
}

// Server serves the upstream API. Its data may change while it serves.
type Server struct {
	user, password string

	mu         sync.Mutex
	faults     Faults
	rng        *rand.Rand
	incidents  map[incident.Type][]json.RawMessage
	added      map[incident.Type][]time.Time // when each incident was added, for Faults.Window
	rendered   map[incident.Type][]byte      // unpaged bodies, until the type's data changes
	identities map[string]json.RawMessage
	requests   map[string]int
	before     func() // runs before each request, e.g. a generator catching up
}

// NewServer returns a server with no data that requires basic auth with
// user and password (none when both are empty).
func NewServer(user, password string, faults Faults, seed uint64) *Server {
	return &Server{
		user:       user,
		password:   password,
		faults:     faults,
		rng:        rand.New(rand.NewPCG(seed, seed^0x5eed)),
		incidents:  map[incident.Type][]json.RawMessage{},
		added:      map[incident.Type][]time.Time{},
		rendered:   map[incident.Type][]byte{},
		identities: map[string]json.RawMessage{},
		requests:   map[string]int{},
	}
}

// SetFaults changes the injected faults.
func (s *Server) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = f
}

// SetIncidents replaces the incident list of type t.
func (s *Server) SetIncidents(t incident.Type, items []json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.incidents[t] = append([]json.RawMessage(nil), items...)
	s.added[t] = slices.Repeat([]time.Time{time.Now()}, len(items))
	delete(s.rendered, t)
}

// AppendIncidents adds incidents at the end of type t's list.
func (s *Server) AppendIncidents(t incident.Type, items ...json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.incidents[t] = append(s.incidents[t], items...)
	s.added[t] = append(s.added[t], slices.Repeat([]time.Time{time.Now()}, len(items))...)
	delete(s.rendered, t)
}

// SetIdentities replaces the identities map (IP → raw employee id JSON).
func (s *Server) SetIdentities(m map[string]json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identities = make(map[string]json.RawMessage, len(m))
	for k, v := range m {
		s.identities[k] = v
	}
}

// AddIdentity maps ip to employee.
func (s *Server) AddIdentity(ip string, employee json.RawMessage) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.identities[ip] = employee
}

// Requests returns how many requests each path has had.
func (s *Server) Requests(path string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[path]
}

// LoadDir reads a capture directory: <type>.json as {"results": [...]} for
// each type present, and identities.json.
func (s *Server) LoadDir(dir string) error {
	for _, t := range incident.Types() {
		b, err := os.ReadFile(filepath.Join(dir, string(t)+".json"))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("loading capture: %w", err)
		}
		items, _, err := incident.DecodeResults(b)
		if err != nil {
			return fmt.Errorf("loading capture %s: %w", t, err)
		}
		s.SetIncidents(t, items)
	}
	b, err := os.ReadFile(filepath.Join(dir, "identities.json"))
	if err != nil {
		return fmt.Errorf("loading capture: %w", err)
	}
	var ids map[string]json.RawMessage
	if err := json.Unmarshal(b, &ids); err != nil {
		return fmt.Errorf("loading capture identities: %w", err)
	}
	s.SetIdentities(ids)
	return nil
}

// ServeHTTP answers GET /incidents/<type>/ and GET /identities/, and
// /healthz without credentials.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/healthz" {
		_, _ = w.Write([]byte("ok\n"))
		return
	}
	if s.user != "" || s.password != "" {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(s.user)) != 1 ||
			subtle.ConstantTimeCompare([]byte(p), []byte(s.password)) != 1 {
			w.Header().Set("WWW-Authenticate", `Basic realm="incidents"`)
			http.Error(w, `{"detail":"Invalid username/password."}`, http.StatusUnauthorized)
			return
		}
	}
	parts := strings.FieldsFunc(r.URL.Path, func(c rune) bool { return c == '/' })
	var t incident.Type
	switch {
	case len(parts) == 1 && parts[0] == "identities":
	case len(parts) == 2 && parts[0] == "incidents":
		var err error
		if t, err = incident.ParseType(parts[1]); err != nil {
			http.Error(w, `{"detail":"Not found."}`, http.StatusNotFound)
			return
		}
	default:
		http.Error(w, `{"detail":"Not found."}`, http.StatusNotFound)
		return
	}
	s.mu.Lock()
	before := s.before
	s.mu.Unlock()
	if before != nil {
		before() // outside s.mu: it calls back into s
	}
	s.mu.Lock()
	s.requests[r.URL.Path]++
	f := s.faults
	delay := time.Duration(float64(f.Latency) * (0.5 + s.rng.Float64()))
	fail := s.rng.Float64() < f.FailRate
	kind := s.rng.IntN(3)
	var body []byte
	if t == "" {
		body, _ = json.Marshal(s.identities)
	} else {
		body = s.page(r, t, f.PageSize)
	}
	s.mu.Unlock()

	if delay > 0 && wait.For(r.Context(), delay) != nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if fail {
		switch kind {
		case 0:
			http.Error(w, "<html>502 Bad Gateway</html>", http.StatusBadGateway)
		case 1:
			http.Error(w, "<html>500 Internal Server Error</html>", http.StatusInternalServerError)
		default:
			// Promise the whole body, send a piece: the client sees a cut-off body.
			w.Header().Set("Content-Length", strconv.Itoa(len(body)+100))
			_, _ = w.Write(body[:len(body)/2])
		}
		return
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// Listed returns the incidents of type t the upstream lists now.
func (s *Server) Listed(t incident.Type) []json.RawMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.listed(t))
}

// listed is type t's list as served now: within the window, if any; s.mu
// is held.
func (s *Server) listed(t incident.Type) []json.RawMessage {
	items := s.incidents[t]
	if w := s.faults.Window; w > 0 {
		// Incidents are added in time order: the listed ones are a suffix.
		since := time.Now().Add(-w)
		first, _ := slices.BinarySearchFunc(s.added[t], since, func(a, since time.Time) int {
			if a.Before(since) {
				return -1
			}
			return 1
		})
		items = items[first:]
	}
	return items
}

// page renders type t's list, or one page of it; s.mu is held.
func (s *Server) page(r *http.Request, t incident.Type, size int) []byte {
	items := s.listed(t)
	if items == nil {
		items = []json.RawMessage{}
	}
	if size <= 0 {
		// A window changes the list with time alone: only a list without
		// one is kept rendered until its data changes.
		cached := s.faults.Window <= 0
		if b, ok := s.rendered[t]; ok && cached {
			return b
		}
		b, _ := json.Marshal(map[string]any{"results": items})
		if cached {
			s.rendered[t] = b
		}
		return b
	}
	n, err := strconv.Atoi(r.URL.Query().Get("page"))
	if err != nil || n < 1 {
		n = 1
	}
	lo, hi := min((n-1)*size, len(items)), min(n*size, len(items))
	link := func(p int) any {
		if p < 1 || (p-1)*size >= len(items) {
			return nil
		}
		return fmt.Sprintf("http://%s%s?page=%d", r.Host, r.URL.Path, p)
	}
	b, _ := json.Marshal(map[string]any{
		"count": len(items), "next": link(n + 1), "previous": link(n - 1), "results": items[lo:hi],
	})
	return b
}
