package incident

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestDecodeIdentityPerType(t *testing.T) {
	tests := []struct {
		name     string
		typ      Type
		raw      string
		employee string
		ip       string
		reason   Reason
	}{
		{"denial reported_by", Denial, `{"priority":"low","reported_by":325375,"timestamp":1.5,"source_ip":"1.2.3.4"}`, "325375", "", ""},
		{"denial ignores source_ip", Denial, `{"priority":"low","timestamp":1.5,"source_ip":"1.2.3.4"}`, "", "", ReasonMissingIdentity},
		{"intrusion internal_ip", Intrusion, `{"priority":"high","internal_ip":"17.1.2.3","source_ip":"9.9.9.9","timestamp":1}`, "", "17.1.2.3", ""},
		{"executable machine_ip", Executable, `{"priority":"high","machine_ip":"17.1.2.4","timestamp":1}`, "", "17.1.2.4", ""},
		{"misuse employee_id", Misuse, `{"priority":"medium","employee_id":42,"timestamp":1}`, "42", "", ""},
		{"unauthorized employee_id string", Unauthorized, `{"priority":"medium","employee_id":"0042","timestamp":1}`, "42", "", ""},
		{"probing ip", Probing, `{"priority":"critical","ip":"17.0.0.1","timestamp":1}`, "", "17.0.0.1", ""},
		{"probing ipv6", Probing, `{"priority":"critical","ip":"2001:DB8::1","timestamp":1}`, "", "2001:db8::1", ""},
		{"probing mapped v4", Probing, `{"priority":"critical","ip":"::ffff:17.0.0.1","timestamp":1}`, "", "17.0.0.1", ""},
		{"other number", Other, `{"priority":"low","identifier":1223,"timestamp":1}`, "1223", "", ""},
		{"other digit string", Other, `{"priority":"low","identifier":"1223","timestamp":1}`, "1223", "", ""},
		{"other ip", Other, `{"priority":"low","identifier":"17.24.153.5","timestamp":1}`, "", "17.24.153.5", ""},
		{"other neither", Other, `{"priority":"low","identifier":"bob","timestamp":1}`, "", "", ReasonInvalidIdentity},
		{"ip field with number", Probing, `{"priority":"low","ip":17,"timestamp":1}`, "", "", ReasonInvalidIdentity},
		{"employee field with ip", Misuse, `{"priority":"low","employee_id":"1.2.3.4","timestamp":1}`, "", "", ReasonInvalidIdentity},
		{"employee id float", Misuse, `{"priority":"low","employee_id":4.5,"timestamp":1}`, "", "", ReasonInvalidIdentity},
		{"negative employee id", Misuse, `{"priority":"low","employee_id":-4,"timestamp":1}`, "", "", ReasonInvalidIdentity},
		{"null identity", Misuse, `{"priority":"low","employee_id":null,"timestamp":1}`, "", "", ReasonMissingIdentity},
		{"unknown priority", Misuse, `{"priority":"urgent","employee_id":1,"timestamp":1}`, "", "", ReasonUnknownPriority},
		{"missing priority", Misuse, `{"employee_id":1,"timestamp":1}`, "", "", ReasonUnknownPriority},
		{"missing timestamp", Misuse, `{"priority":"low","employee_id":1}`, "", "", ReasonMissingTimestamp},
		{"string timestamp", Misuse, `{"priority":"low","employee_id":1,"timestamp":"yesterday"}`, "", "", ReasonInvalidTimestamp},
		{"huge timestamp", Misuse, `{"priority":"low","employee_id":1,"timestamp":1e999}`, "", "", ReasonInvalidTimestamp},
		{"timestamp past the year 9999", Misuse, `{"priority":"low","employee_id":1,"timestamp":1e300}`, "", "", ReasonInvalidTimestamp},
		{"timestamp just past 9999", Misuse, `{"priority":"low","employee_id":1,"timestamp":253402300800}`, "", "", ReasonInvalidTimestamp},
		{"timestamp before the year 1", Misuse, `{"priority":"low","employee_id":1,"timestamp":-1e300}`, "", "", ReasonInvalidTimestamp},
		{"timestamp just before year 1", Misuse, `{"priority":"low","employee_id":1,"timestamp":-62135596801}`, "", "", ReasonInvalidTimestamp},
		{"timestamp at the end of 9999", Misuse, `{"priority":"low","employee_id":1,"timestamp":253402300799}`, "1", "", ""},
		{"timestamp at the start of year 1", Misuse, `{"priority":"low","employee_id":1,"timestamp":-62135596800}`, "1", "", ""},
		{"not an object", Misuse, `[1,2]`, "", "", ReasonNotObject},
		{"not json", Misuse, `{"priority":`, "", "", ReasonInvalidJSON},
		{"unknown type", Type("phishing"), `{}`, "", "", ReasonUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in, err := Decode(tt.typ, []byte(tt.raw))
			if tt.reason != "" {
				if got := ReasonOf(err); got != tt.reason {
					t.Fatalf("reason = %q (err %v), want %q", got, err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if in.Identity.EmployeeID != tt.employee {
				t.Errorf("employee = %q, want %q", in.Identity.EmployeeID, tt.employee)
			}
			gotIP := ""
			if in.Identity.IsIP() {
				gotIP = in.Identity.IP.String()
			}
			if gotIP != tt.ip {
				t.Errorf("ip = %q, want %q", gotIP, tt.ip)
			}
		})
	}
}

func TestIDIsCanonical(t *testing.T) {
	a := `{"priority":"low","employee_id":1,"timestamp":1629254311.8207245}`
	same := []string{
		`{"timestamp":1629254311.8207245, "employee_id":1, "priority":"low"}`,
		"{\n \"priority\": \"low\",\n \"employee_id\": 1,\n \"timestamp\": 1629254311.82072450\n}",
		`{"priority":"\u006cow","employee_id":1,"timestamp":1629254311.8207245}`,
	}
	different := []string{
		`{"priority":"low","employee_id":2,"timestamp":1629254311.8207245}`,
		`{"priority":"low","employee_id":1,"timestamp":1629254311.8207246}`,
		`{"priority":"low","employee_id":"1","timestamp":1629254311.8207245}`,
		`{"priority":"low","employee_id":1,"timestamp":1629254311.8207245,"extra":null}`,
	}
	want := ID(Misuse, []byte(a))
	for _, s := range same {
		if got := ID(Misuse, []byte(s)); got != want {
			t.Errorf("ID(%s) = %s, want %s", s, got, want)
		}
	}
	for _, s := range different {
		if got := ID(Misuse, []byte(s)); got == want {
			t.Errorf("ID(%s) equals ID of a different incident", s)
		}
	}
	if ID(Unauthorized, []byte(a)) == want {
		t.Error("same content of another type has the same id")
	}
	if ID(Misuse, []byte("not json")) == ID(Misuse, []byte("not json!")) {
		t.Error("invalid incidents with different bytes share an id")
	}
}

func TestViewJSONKeepsValuesAndID(t *testing.T) {
	raw := `{"priority":"high","employee_id":7,"timestamp":1629254311.8207245000,"big":12345678901234567890,` +
		`"nested":{"b":[1, 2.50],"a":"é\u00e9<>"},"type":"spoof"}`
	in, err := Decode(Misuse, []byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	view := in.ViewJSON()
	want := `{"type":"misuse","priority":"high","employee_id":7,"timestamp":1629254311.8207245000,"big":12345678901234567890,` +
		`"nested":{"b":[1,2.50],"a":"é\u00e9<>"}}`
	if string(view) != want {
		t.Fatalf("ViewJSON =\n%s\nwant\n%s", view, want)
	}
	if !json.Valid(view) {
		t.Fatal("view is not valid JSON")
	}
	id, err := ViewID(view)
	if err != nil || id != in.ID {
		t.Fatalf("ViewID = %q, %v; want %q", id, err, in.ID)
	}
}

func TestTimestampCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1", "2", -1},
		{"2.5", "2.50", 0},
		{"1629254311.8207245", "1629254311.8207245", 0},
		{"1629254311", "1629254311.5", -1},
		{"-1", "0", -1},
		{"1e3", "999", 1},
	}
	for _, tt := range tests {
		a, err1 := ParseTimestamp([]byte(tt.a))
		b, err2 := ParseTimestamp([]byte(tt.b))
		if err := errors.Join(err1, err2); err != nil {
			t.Fatal(err)
		}
		if got := a.Compare(b); got != tt.want {
			t.Errorf("Compare(%s, %s) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestIPKeyRoundTrip(t *testing.T) {
	for _, s := range []string{"17.1.2.3", "2001:db8::1", "fe80::1%eth0", "::1", "::ffff:10.1.2.3"} {
		ip, err := ParseIP(s)
		if err != nil {
			t.Fatal(err)
		}
		key := IPKey(ip)
		for _, c := range key {
			ok := c == '-' || c == '_' || c == '.' || c == '=' || c == '/' ||
				(c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
			if !ok {
				t.Fatalf("IPKey(%s) = %q has %q, not allowed in a KV key", s, key, c)
			}
		}
		back, err := ParseIPKey(key)
		if err != nil || back != ip {
			t.Fatalf("ParseIPKey(%q) = %v, %v; want %v", key, back, err, ip)
		}
	}
}

func TestDecodeResults(t *testing.T) {
	items, next, err := DecodeResults([]byte(`{"count":2,"next":"http://x/?page=2","results":[{"a":1.10}, 5]}`))
	if err != nil || len(items) != 2 || next != "http://x/?page=2" || string(items[0]) != `{"a":1.10}` {
		t.Fatalf("got %q %q %v", items, next, err)
	}
	for _, bad := range []string{``, `{"results": [{"priority": "hi`, `{"detail":"x"}`, `[]`, `{"results":[]} trailing`} {
		if _, _, err := DecodeResults([]byte(bad)); err == nil {
			t.Errorf("DecodeResults(%q) succeeded", bad)
		}
	}
}

// TestScanResults: a page read as it arrives keeps only what Skip does not
// drop, counts every element, tells Hold before holding more, and returns
// nothing of a page cut off, however large its incidents.
func TestScanResults(t *testing.T) {
	big := `{"note":"` + strings.Repeat("x", 300<<10) + `"}`
	page := `{"count":4,"results":[{"a":1},` + big + `, {"a":2} ,{"a":3}],"next":"http://x/?page=2"}`
	held := int64(0)
	res, err := ScanResults(iotest.HalfReader(strings.NewReader(page)), ScanOptions{
		Skip: func(i int, raw []byte) bool { return i == 2 && string(raw) == `{"a":2}` },
		Hold: func(n int64) error { held += n; return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != 4 || len(res.Items) != 3 || string(res.Items[1]) != big || string(res.Items[2]) != `{"a":3}` || res.Next != "http://x/?page=2" {
		t.Fatalf("got %d of %d items, next %q", len(res.Items), res.Count, res.Next)
	}
	if held < int64(len(big)) {
		t.Errorf("Hold was told of %d bytes; the page keeps more than %d", held, len(big))
	}
	full := errors.New("full")
	if _, err := ScanResults(strings.NewReader(page), ScanOptions{Hold: func(n int64) error { return full }}); !errors.Is(err, full) {
		t.Errorf("a refused hold: %v", err)
	}
	var pe *PageError
	if res, err := ScanResults(strings.NewReader(page[:len(page)/2]), ScanOptions{}); !errors.As(err, &pe) || len(res.Items) != 0 {
		t.Errorf("a cut-off page: %d items, %v; want a PageError and nothing", len(res.Items), err)
	}
	broken := errors.New("connection reset")
	if _, err := ScanResults(io.MultiReader(strings.NewReader(page[:100]), iotest.ErrReader(broken)), ScanOptions{}); !errors.Is(err, broken) || errors.As(err, &pe) {
		t.Errorf("a failed read: %v; want the reader's error", err)
	}
}

func BenchmarkScanResultsKnown(b *testing.B) {
	var sb strings.Builder
	sb.WriteString(`{"results":[`)
	for i := range 10_000 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `{"priority":"critical","reported_by":%d,"timestamp":1629254311.8207245,"source_ip":"112.248.31.181"}`, i)
	}
	sb.WriteString(`]}`)
	page := sb.String()
	b.SetBytes(int64(len(page)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ScanResults(strings.NewReader(page), ScanOptions{Skip: func(int, []byte) bool { return true }}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeAndID(b *testing.B) {
	raw := []byte(`{"priority":"critical","reported_by":325375,"timestamp":1629254311.8207245,"source_ip":"112.248.31.181"}`)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(Denial, raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkID(b *testing.B) {
	raw := []byte(`{"priority":"critical","reported_by":325375,"timestamp":1629254311.8207245,"source_ip":"112.248.31.181"}`)
	b.ReportAllocs()
	for b.Loop() {
		_ = ID(Denial, raw)
	}
}

func TestCanonicalNumber(t *testing.T) {
	for in, want := range map[string]string{
		"10": "10", "1e1": "10", "1.0E+1": "10", "1.5e3": "1500", "1.50": "1.5", "2.500": "2.5",
		"15E-3": "0.015", "-1.2e-1": "-0.12", "0e5": "0", "0.012e3": "12", "1e999": "1e999",
		"1629254311.8207245": "1629254311.8207245", "-7": "-7",
	} {
		if got := string(canonicalNumber([]byte(in))); got != want {
			t.Errorf("canonicalNumber(%s) = %s, want %s", in, got, want)
		}
	}
}

// TestScanResultsReadsPastOversizeIncidents: an incident longer than the
// window is read past, never held, and reported (place, size, beginning,
// a sum that does not depend on its layout); the incidents around it are
// kept. Anything else longer than the window fails the page.
func TestScanResultsReadsPastOversizeIncidents(t *testing.T) {
	const window = 4096
	long := strings.Repeat(`x\"],{`, 2000)
	big := `{"note": "` + long + `", "deep": [[{"a": "]"}], {}], "n": 1}`
	tight := strings.NewReplacer(`"note": "`, `"note":"`, `, "deep": `, `,"deep":`, `{"a": "]"}`, `{"a":"]"}`, `, {}], "n": 1}`, `,{}],"n":1}`).Replace(big)
	sum := func(page string) [32]byte {
		t.Helper()
		res, err := ScanResults(iotest.OneByteReader(strings.NewReader(page)), ScanOptions{MaxWindow: window})
		if err != nil {
			t.Fatal(err)
		}
		if res.Count != 3 || len(res.Items) != 2 || string(res.Items[0]) != `{"a":1}` || string(res.Items[1]) != `{"a":3}` || len(res.TooLarge) != 1 {
			t.Fatalf("got %d of %d items, %d too large", len(res.Items), res.Count, len(res.TooLarge))
		}
		o := res.TooLarge[0]
		elem := page[strings.Index(page, `{"note"`):strings.Index(page, `,{"a":3}`)] // white space after it counted
		if o.Index != 1 || o.Size != int64(len(elem)) || string(o.Head) != elem[:min(len(elem), OversizeHead)] {
			t.Fatalf("oversize %d: %d bytes (want %d), head %d bytes", o.Index, o.Size, len(elem), len(o.Head))
		}
		return o.Sum
	}
	loose := sum(`{"results":[{"a":1}, ` + big + ` ,{"a":3}],"next":null}`)
	if want := sha256.Sum256([]byte(tight)); loose != want {
		t.Errorf("the sum is not that of the incident without its white space")
	}
	if sum(`{"results":[{"a":1},`+tight+`,{"a":3}]}`) != loose {
		t.Errorf("the same incident laid out otherwise has another sum")
	}
	var pe *PageError
	for name, page := range map[string]string{
		"long next":      `{"results":[],"next":"` + strings.Repeat("x", 2*window) + `"}`,
		"cut off inside": `{"results":[{"a":1},` + big[:len(big)/2],
		"} closes":       `{"results":[` + big + `}`,
	} {
		if _, err := ScanResults(strings.NewReader(page), ScanOptions{MaxWindow: window}); !errors.As(err, &pe) {
			t.Errorf("%s: %v; want a PageError", name, err)
		}
	}
}
