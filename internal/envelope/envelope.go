// Package envelope is the message format of INCIDENTS_ENRICHED.
package envelope

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/incidentpipe/pipeline/internal/incident"
)

// Enriched is an upstream incident with its type and resolved employee.
// EmployeeID is empty while the incident is unattributed; IP is the address
// the incident named, if any.
type Enriched struct {
	ID         string          `json:"id"`
	Type       incident.Type   `json:"type"`
	EmployeeID string          `json:"employee_id,omitempty"`
	IP         string          `json:"ip,omitempty"`
	Incident   json.RawMessage `json:"incident"`
}

// Encode returns the message body.
func (e Enriched) Encode() ([]byte, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encoding enriched incident %s: %w", e.ID, err)
	}
	return b, nil
}

// Decode reads an enriched message body and decodes the incident it carries.
func Decode(data []byte) (Enriched, incident.Incident, error) {
	var e Enriched
	if err := json.Unmarshal(data, &e); err != nil {
		return Enriched{}, incident.Incident{}, &incident.InvalidError{Reason: incident.ReasonInvalidEnvelope, Detail: err.Error()}
	}
	// The id came with the envelope: validated, not hashed again.
	in, err := incident.DecodeWithID(e.Type, e.Incident, e.ID)
	if err != nil {
		return e, incident.Incident{}, err
	}
	if e.EmployeeID == "" && e.IP == "" {
		return e, in, &incident.InvalidError{Reason: incident.ReasonInvalidEnvelope, Detail: "neither employee_id nor ip is set"}
	}
	if e.EmployeeID != "" {
		if _, err := incident.ParseEmployeeID(e.EmployeeID); err != nil {
			return e, in, &incident.InvalidError{Reason: incident.ReasonInvalidEnvelope, Detail: "employee_id is not an employee id"}
		}
	}
	return e, in, nil
}

// Addr returns the IP the incident named, if any.
func (e Enriched) Addr() (netip.Addr, bool) {
	if e.IP == "" {
		return netip.Addr{}, false
	}
	ip, err := incident.ParseIP(e.IP)
	return ip, err == nil
}
