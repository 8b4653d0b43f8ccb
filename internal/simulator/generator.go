package simulator

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// GeneratorOptions shape the generated data.
type GeneratorOptions struct {
	Employees      int           // default 2000
	InitialPerType int           // incidents of each type at start; default 50
	NewEvery       time.Duration // one new incident per interval; default 2s (0 keeps the default, <0 never)
	// LateIdentityShare is the share of employees whose IP identities appear
	// only LateIdentityDelay after start, as identities lag in real life.
	LateIdentityShare float64       // default 0.05
	LateIdentityDelay time.Duration // default 30s
	Seed              uint64
	Now               func() time.Time
}

// Generator fills a Server with realistic data that grows over time: seven
// types, thousands of employees with IPs in 17.0.0.0/8, mixed priorities,
// sorted by timestamp. It advances lazily, when a request comes.
type Generator struct {
	srv  *Server
	opts GeneratorOptions

	mu        sync.Mutex
	rng       *rand.Rand
	start     time.Time
	employees []employee
	added     int // new incidents generated since start
	lateShown bool
	lastTS    float64
}

type employee struct {
	id   int
	ips  []netip.Addr
	late bool
}

// NewGenerator seeds srv with data and keeps it growing.
func NewGenerator(srv *Server, o GeneratorOptions) *Generator {
	if o.Employees <= 0 {
		o.Employees = 2000
	}
	if o.InitialPerType <= 0 {
		o.InitialPerType = 50
	}
	if o.NewEvery == 0 {
		o.NewEvery = 2 * time.Second
	}
	if o.LateIdentityShare == 0 {
		o.LateIdentityShare = 0.05
	}
	if o.LateIdentityDelay == 0 {
		o.LateIdentityDelay = 30 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	g := &Generator{srv: srv, opts: o, rng: rand.New(rand.NewPCG(o.Seed, o.Seed+1)), start: o.Now()}
	g.makeEmployees()
	g.publishIdentities(false)
	from := float64(g.start.Add(-7*24*time.Hour).UnixNano()) / 1e9
	for _, t := range incident.Types() {
		ts := make([]float64, o.InitialPerType)
		for i := range ts {
			ts[i] = from + g.rng.Float64()*7*24*3600
		}
		slices.Sort(ts)
		items := make([]json.RawMessage, len(ts))
		for i, x := range ts {
			items[i] = g.incident(t, x)
		}
		srv.SetIncidents(t, items)
	}
	g.lastTS = float64(g.start.UnixNano()) / 1e9
	srv.mu.Lock()
	srv.before = g.catchUp
	srv.mu.Unlock()
	return g
}

func (g *Generator) makeEmployees() {
	seenID := map[int]bool{}
	seenIP := map[netip.Addr]bool{}
	for len(g.employees) < g.opts.Employees {
		id := 1 + g.rng.IntN(999999)
		if seenID[id] {
			continue
		}
		seenID[id] = true
		e := employee{id: id, late: g.rng.Float64() < g.opts.LateIdentityShare}
		for n := 1 + g.rng.IntN(2); len(e.ips) < n; {
			ip := netip.AddrFrom4([4]byte{17, byte(g.rng.IntN(256)), byte(g.rng.IntN(256)), byte(1 + g.rng.IntN(254))})
			if !seenIP[ip] {
				seenIP[ip] = true
				e.ips = append(e.ips, ip)
			}
		}
		g.employees = append(g.employees, e)
	}
}

// publishIdentities sets the server's identities; late ones only if withLate.
func (g *Generator) publishIdentities(withLate bool) {
	m := map[string]json.RawMessage{}
	for _, e := range g.employees {
		if e.late && !withLate {
			continue
		}
		for _, ip := range e.ips {
			m[ip.String()] = json.RawMessage(strconv.Itoa(e.id))
		}
	}
	g.srv.SetIdentities(m)
}

func (g *Generator) priority() incident.Priority {
	weights := []struct {
		p incident.Priority
		w float64
	}{{incident.Low, 0.35}, {incident.Medium, 0.3}, {incident.High, 0.2}, {incident.Critical, 0.15}}
	x := g.rng.Float64()
	for _, w := range weights {
		if x < w.w {
			return w.p
		}
		x -= w.w
	}
	return incident.Low
}

// incident renders one incident of type t at timestamp ts, in the
// upstream's member order.
func (g *Generator) incident(t incident.Type, ts float64) json.RawMessage {
	e := g.employees[g.rng.IntN(len(g.employees))]
	ip := e.ips[g.rng.IntN(len(e.ips))].String()
	outside := fmt.Sprintf("%d.%d.%d.%d", 1+g.rng.IntN(223), g.rng.IntN(256), g.rng.IntN(256), 1+g.rng.IntN(254))
	p := g.priority()
	tsText := strconv.FormatFloat(ts, 'f', -1, 64)
	var s string
	switch t {
	case incident.Denial:
		s = fmt.Sprintf(`{"priority":%q,"reported_by":%d,"timestamp":%s,"source_ip":%q}`, p, e.id, tsText, outside)
	case incident.Intrusion:
		s = fmt.Sprintf(`{"priority":%q,"internal_ip":%q,"source_ip":%q,"timestamp":%s}`, p, ip, outside, tsText)
	case incident.Executable:
		s = fmt.Sprintf(`{"priority":%q,"machine_ip":%q,"timestamp":%s}`, p, ip, tsText)
	case incident.Misuse, incident.Unauthorized:
		s = fmt.Sprintf(`{"priority":%q,"employee_id":%d,"timestamp":%s}`, p, e.id, tsText)
	case incident.Probing:
		s = fmt.Sprintf(`{"priority":%q,"ip":%q,"timestamp":%s}`, p, ip, tsText)
	default:
		if g.rng.IntN(2) == 0 {
			s = fmt.Sprintf(`{"priority":%q,"identifier":%d,"timestamp":%s}`, p, e.id, tsText)
		} else {
			s = fmt.Sprintf(`{"priority":%q,"identifier":%q,"timestamp":%s}`, p, ip, tsText)
		}
	}
	return json.RawMessage(s)
}

// catchUp adds the incidents and identities due by now.
func (g *Generator) catchUp() {
	g.mu.Lock()
	defer g.mu.Unlock()
	elapsed := g.opts.Now().Sub(g.start)
	if !g.lateShown && elapsed >= g.opts.LateIdentityDelay {
		g.lateShown = true
		g.publishIdentities(true)
	}
	if g.opts.NewEvery < 0 {
		return
	}
	due := int(elapsed / g.opts.NewEvery)
	for ; g.added < due; g.added++ {
		ts := float64(g.start.Add(time.Duration(g.added+1)*g.opts.NewEvery).UnixNano()) / 1e9
		ts = max(ts, g.lastTS)
		g.lastTS = ts
		t := incident.Types()[g.rng.IntN(len(incident.Types()))]
		g.srv.AppendIncidents(t, g.incident(t, ts))
	}
}
