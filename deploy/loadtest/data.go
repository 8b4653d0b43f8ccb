package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"

	"github.com/incidentpipe/pipeline/internal/incident"
	"github.com/incidentpipe/pipeline/internal/simulator"
)

// dataset is generated upstream data: N incidents over M employees, each
// employee with one IP, spread over the seven types, timestamps increasing.
type dataset struct {
	employees []int
	ips       []netip.Addr
	rng       *rand.Rand
	ts        float64
}

func newDataset(employees int, seed uint64) *dataset {
	d := &dataset{rng: rand.New(rand.NewPCG(seed, seed+1)), ts: 1.6e9}
	for i := range employees {
		d.employees = append(d.employees, 100000+i)
		d.ips = append(d.ips, netip.AddrFrom4([4]byte{17, byte(i >> 16), byte(i >> 8), byte(i)}))
	}
	return d
}

func (d *dataset) identities() map[string]json.RawMessage {
	m := make(map[string]json.RawMessage, len(d.ips))
	for i, ip := range d.ips {
		m[ip.String()] = json.RawMessage(strconv.Itoa(d.employees[i]))
	}
	return m
}

var priorities = []incident.Priority{incident.Low, incident.Medium, incident.High, incident.Critical}

// next renders one incident of type t for employee index e.
func (d *dataset) next(t incident.Type, e int) (json.RawMessage, string) {
	d.ts += 0.001 + d.rng.Float64()*0.01
	ts := strconv.FormatFloat(d.ts, 'f', 6, 64)
	p := priorities[d.rng.IntN(4)]
	id, ip := d.employees[e], d.ips[e]
	var s string
	switch t {
	case incident.Denial:
		s = fmt.Sprintf(`{"priority":%q,"reported_by":%d,"timestamp":%s,"source_ip":"203.0.113.7"}`, p, id, ts)
	case incident.Intrusion:
		s = fmt.Sprintf(`{"priority":%q,"internal_ip":%q,"source_ip":"198.51.100.9","timestamp":%s}`, p, ip, ts)
	case incident.Executable:
		s = fmt.Sprintf(`{"priority":%q,"machine_ip":%q,"timestamp":%s}`, p, ip, ts)
	case incident.Probing:
		s = fmt.Sprintf(`{"priority":%q,"ip":%q,"timestamp":%s}`, p, ip, ts)
	case incident.Other:
		s = fmt.Sprintf(`{"priority":%q,"identifier":%d,"timestamp":%s}`, p, id, ts)
	default:
		s = fmt.Sprintf(`{"priority":%q,"employee_id":%d,"timestamp":%s}`, p, id, ts)
	}
	return json.RawMessage(s), ts
}

// fill puts n incidents and the identities into srv.
func (d *dataset) fill(srv *simulator.Server, n int) {
	types := incident.Types()
	byType := map[incident.Type][]json.RawMessage{}
	for i := range n {
		t := types[i%len(types)]
		raw, _ := d.next(t, d.rng.IntN(len(d.employees)))
		byType[t] = append(byType[t], raw)
	}
	for _, t := range types {
		srv.SetIncidents(t, byType[t])
	}
	srv.SetIdentities(d.identities())
}
