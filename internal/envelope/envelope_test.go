package envelope

import (
	"testing"

	"github.com/incidentpipe/pipeline/internal/incident"
)

func TestRoundTripAndRefusals(t *testing.T) {
	raw := []byte(`{"priority":"low","ip":"10.0.0.1","timestamp":1}`)
	in, err := incident.Decode(incident.Probing, raw)
	if err != nil {
		t.Fatal(err)
	}
	e := Enriched{ID: in.ID, Type: incident.Probing, EmployeeID: "42", IP: "10.0.0.1", Incident: raw}
	b, err := e.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, got, err := Decode(b)
	if err != nil || back.ID != in.ID || back.EmployeeID != "42" || got.ID != in.ID || string(back.Incident) != string(raw) {
		t.Fatalf("round trip: %+v %+v %v", back, got, err)
	}
	if ip, ok := back.Addr(); !ok || ip.String() != "10.0.0.1" {
		t.Errorf("Addr = %v %v", ip, ok)
	}
	for name, tt := range map[string]struct {
		body   string
		reason incident.Reason
	}{
		"not JSON":           {`{`, incident.ReasonInvalidEnvelope},
		"no employee, no ip": {`{"id":"x","type":"probing","incident":{"priority":"low","ip":"10.0.0.1","timestamp":1}}`, incident.ReasonInvalidEnvelope},
		"employee not an id": {`{"id":"x","type":"probing","employee_id":"4a","incident":{"priority":"low","ip":"10.0.0.1","timestamp":1}}`, incident.ReasonInvalidEnvelope},
		"invalid incident":   {`{"id":"x","type":"probing","employee_id":"4","incident":{"priority":"low"}}`, incident.ReasonMissingTimestamp},
		"unknown type":       {`{"id":"x","type":"phishing","employee_id":"4","incident":{}}`, incident.ReasonUnknownType},
	} {
		if _, _, err := Decode([]byte(tt.body)); incident.ReasonOf(err) != tt.reason {
			t.Errorf("%s: %v, want %s", name, err, tt.reason)
		}
	}
}
