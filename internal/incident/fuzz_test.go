package incident

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

// FuzzDecode feeds arbitrary bytes as an incident of every type: decoding
// never panics, refuses with a reason, or yields an incident whose view JSON
// is valid, carries the type, and has the same id.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{"priority":"low","reported_by":325375,"timestamp":1629254311.8207245,"source_ip":"112.248.31.181"}`,
		`{"priority":"medium","identifier":"17.24.153.5","timestamp":1629264009.9386644}`,
		`{"priority":"critical","ip":"2001:db8::1","timestamp":1,"x":{"y":[1,2.50,"\u00e9"]}}`,
		`{"priority":"high","employee_id":"0042","timestamp":1e3,"type":"spoof"}`,
		`{"priority":"low","employee_id":1,"timestamp":"1"}`,
		`[1,2]`, `null`, `{"priority":`, `{}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		for _, typ := range Types() {
			in, err := Decode(typ, []byte(raw))
			if err != nil {
				if ReasonOf(err) == "" {
					t.Fatalf("error without a reason: %v", err)
				}
				continue
			}
			view := in.ViewJSON()
			if !json.Valid(view) {
				t.Fatalf("view JSON invalid: %s", view)
			}
			if !strings.HasPrefix(string(view), `{"type":"`+string(typ)+`"`) {
				t.Fatalf("view JSON does not start with the type: %s", view)
			}
			id, err := ViewID(view)
			if err != nil || id != in.ID || id != ID(typ, []byte(raw)) {
				t.Fatalf("ids disagree: decode %s, view %s (%v), raw %s", in.ID, id, err, ID(typ, []byte(raw)))
			}
			if in.Priority.Index() < 0 {
				t.Fatalf("accepted priority %q", in.Priority)
			}
			if in.Identity.IsIP() == (in.Identity.EmployeeID != "") {
				t.Fatalf("identity must be exactly one of employee or IP: %+v", in.Identity)
			}
		}
	})
}

// FuzzIdentity feeds arbitrary identity values: resolution never panics, an
// employee id is canonical digits, an IP survives the KV key encoding.
func FuzzIdentity(f *testing.F) {
	for _, s := range []string{`1223`, `"1223"`, `"0042"`, `"17.24.153.5"`, `"2001:DB8::1"`, `"fe80::1%eth0"`,
		`"::ffff:10.0.0.1"`, `"bob"`, `4.5`, `-1`, `null`, `true`, `""`, `"1.2.3.4.5"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, value string) {
		for _, kind := range []IdentityKind{ByEmployee, ByIP, ByEither} {
			id, err := parseIdentity(json.RawMessage(value), kind)
			if err != nil {
				continue
			}
			switch {
			case id.IsIP():
				if kind == ByEmployee {
					t.Fatalf("employee field resolved to IP %v", id.IP)
				}
				key := IPKey(id.IP)
				back, err := ParseIPKey(key)
				if err != nil || back != id.IP {
					t.Fatalf("IPKey(%v) = %q does not round-trip: %v %v", id.IP, key, back, err)
				}
				if id.IP != id.IP.Unmap() {
					t.Fatalf("IP %v not canonical", id.IP)
				}
			default:
				if kind == ByIP {
					t.Fatalf("IP field resolved to employee %q", id.EmployeeID)
				}
				e := id.EmployeeID
				if e == "" || (len(e) > 1 && e[0] == '0') || strings.Trim(e, "0123456789") != "" {
					t.Fatalf("employee id %q not canonical", e)
				}
			}
		}
		if ip, err := ParseIP(strings.Trim(value, `"`)); err == nil {
			if back, err := ParseIPKey(IPKey(ip)); err != nil || back != ip {
				t.Fatalf("IPKey round trip of %v: %v %v", ip, back, err)
			}
		} else if _, err := netip.ParseAddr(strings.Trim(value, `"`)); err == nil {
			t.Fatalf("ParseIP refused an address netip accepts: %s", value)
		}
	})
}

// FuzzDecodeResults feeds arbitrary bytes as a whole upstream page: decoding
// never panics; every item is a slice of the page; a page that is valid JSON
// with one "results" array splits into exactly its elements, each valid.
func FuzzDecodeResults(f *testing.F) {
	for _, s := range []string{
		`{"count":2,"next":"http://x/?page=2","results":[{"a":1.10}, 5]}`,
		`{"results":[{"priority":"low","employee_id":1,"timestamp":NaN},{"b":[1,{"c":"]"}]}],"next":null}`,
		`{"results":[` + strings.Repeat("[", 200) + strings.Repeat("]", 200) + `]}`,
		`{"results":[{"a":"\"}"} junk, 1]}`,
		`{"results":[{"a":1}`, `{"results":{}}`, `{"next":1}`, `{}`, `[]`, "{\"results\":[\"\xff\"]}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, page string) {
		items, next, err := DecodeResults([]byte(page))
		// Read as it arrives, a byte at a time, the page decodes the same.
		streamed, serr := ScanResults(iotest.OneByteReader(strings.NewReader(page)), ScanOptions{})
		if (err == nil) != (serr == nil) || len(streamed.Items) != len(items) || streamed.Next != next {
			t.Fatalf("streamed: %d items, next %q, %v; whole: %d items, next %q, %v", len(streamed.Items), streamed.Next, serr, len(items), next, err)
		}
		for i := range items {
			if string(items[i]) != string(streamed.Items[i]) {
				t.Fatalf("item %d: streamed %q, whole %q", i, streamed.Items[i], items[i])
			}
		}
		if err != nil {
			return
		}
		for _, it := range items {
			if !strings.Contains(page, string(it)) || len(it) == 0 {
				t.Fatalf("item %q is not a part of the page", it)
			}
		}
		var parsed struct {
			Results *[]json.RawMessage `json:"results"`
		}
		if json.Valid([]byte(page)) && json.Unmarshal([]byte(page), &parsed) == nil && parsed.Results != nil {
			if len(*parsed.Results) != len(items) {
				t.Fatalf("valid page of %d results split into %d items", len(*parsed.Results), len(items))
			}
			for _, it := range items {
				if !json.Valid(it) {
					t.Fatalf("item %q of a valid page is not valid JSON", it)
				}
			}
		}
	})
}
