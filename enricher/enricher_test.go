package enricher

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/incidentpipe/pipeline/internal/incident"
)

func TestAttribute(t *testing.T) {
	ids := newIdentities()
	ids.m[netip.MustParseAddr("10.0.0.1")] = "77"
	ids.m[netip.MustParseAddr("2001:db8::1")] = "88"
	tests := []struct {
		subject, data string
		employee, ip  string
		reason        incident.Reason
	}{
		{"incidents.raw.misuse", `{"priority":"low","employee_id":5,"timestamp":1}`, "5", "", ""},
		{"incidents.raw.probing", `{"priority":"low","ip":"10.0.0.1","timestamp":1}`, "77", "10.0.0.1", ""},
		{"incidents.raw.probing", `{"priority":"low","ip":"2001:DB8:0::1","timestamp":1}`, "88", "2001:db8::1", ""},
		{"incidents.raw.other", `{"priority":"low","identifier":"10.0.0.2","timestamp":1}`, "", "10.0.0.2", ""},
		{"incidents.raw.denial", `{"priority":"low","reported_by":9,"source_ip":"10.0.0.1","timestamp":1}`, "9", "", ""},
		{"incidents.raw.phishing", `{}`, "", "", incident.ReasonUnknownType},
		{"incidents.raw.misuse", `{"priority":"low"}`, "", "", incident.ReasonMissingTimestamp},
		{"incidents.raw.misuse", `{"priority":"low","employee_id":5,"timestamp":NaN}`, "", "", incident.ReasonInvalidJSON},
		{"incidents.raw.misuse", "{\"priority\":\"low\",\"employee_id\":5,\"timestamp\":1,\"x\":\"\xff\"}", "", "", incident.ReasonInvalidUTF8},
		{"incidents.raw.misuse", `{"priority":"low","employee_id":5,"timestamp":1,"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`, "", "", incident.ReasonTooDeep},
		{"incidents.raw.misuse", `{"priority":"low","priority":"high","employee_id":5,"timestamp":1}`, "", "", incident.ReasonDuplicateKey},
	}
	for _, tt := range tests {
		env, _, err := attribute(tt.subject, []byte(tt.data), "", ids)
		if tt.reason != "" {
			if incident.ReasonOf(err) != tt.reason {
				t.Errorf("%s %s: err %v, want %s", tt.subject, tt.data, err, tt.reason)
			}
			continue
		}
		if err != nil || env.EmployeeID != tt.employee || env.IP != tt.ip || string(env.Incident) != tt.data {
			t.Errorf("%s %s: %+v %v", tt.subject, tt.data, env, err)
		}
	}
}

// BenchmarkEnrich measures the work per raw incident: decode, id, identity
// lookup and the enriched message body.
func BenchmarkEnrich(b *testing.B) {
	ids := newIdentities()
	for i := range 10000 {
		ids.m[netip.AddrFrom4([4]byte{17, 0, byte(i >> 8), byte(i)})] = fmt.Sprint(100000 + i)
	}
	data := []byte(`{"priority":"high","internal_ip":"17.0.3.7","source_ip":"1.2.3.4","timestamp":1629254311.8207245}`)
	b.ReportAllocs()
	for b.Loop() {
		env, _, err := attribute("incidents.raw.intrusion", data, "0123456789abcdef0123456789abcdef", ids)
		if err != nil || env.EmployeeID == "" {
			b.Fatal(err)
		}
		if _, err := env.Encode(); err != nil {
			b.Fatal(err)
		}
	}
}
