package incident

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// maxEmployeeIDLen bounds an employee id so that hostile input cannot make
// huge KV keys or subjects.
const maxEmployeeIDLen = 64

// Identity names who an incident is about: an employee id, or an IP address
// that the IDENTITIES bucket maps to an employee. Exactly one is set.
type Identity struct {
	EmployeeID string     // canonical decimal employee id, or ""
	IP         netip.Addr // valid when the incident names an IP
}

// IsIP reports whether the identity is an IP address still to be resolved.
func (id Identity) IsIP() bool { return id.IP.IsValid() }

// String returns the employee id or the IP.
func (id Identity) String() string {
	if id.IsIP() {
		return id.IP.String()
	}
	return id.EmployeeID
}

// errNotEmployeeID is returned for a value that is not an employee id.
var errNotEmployeeID = errors.New("not an employee id")

// ParseEmployeeID returns the canonical form of an employee id given as a
// JSON integer or a string of decimal digits: digits without leading zeros.
func ParseEmployeeID(s string) (string, error) {
	if s == "" || len(s) > maxEmployeeIDLen {
		return "", errNotEmployeeID
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return "", errNotEmployeeID
		}
	}
	t := strings.TrimLeft(s, "0")
	if t == "" {
		t = "0"
	}
	return t, nil
}

// ParseIP parses an IPv4 or IPv6 address and returns it in canonical form:
// IPv4-mapped IPv6 addresses become IPv4, so both spellings resolve alike.
func ParseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("not an IP address: %w", err)
	}
	return a.Unmap(), nil
}

// parseIdentity interprets the raw JSON value of an identity field.
func parseIdentity(raw json.RawMessage, kind IdentityKind) (Identity, error) {
	if s, ok := stringContent(raw); ok {
		return identityOfString(s, kind)
	}
	var v any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return Identity{}, err
	}
	switch x := v.(type) {
	case json.Number:
		if kind == ByIP {
			return Identity{}, fmt.Errorf("want an IP address string, got number %s", x)
		}
		id, err := ParseEmployeeID(string(x))
		if err != nil {
			return Identity{}, fmt.Errorf("number %s is not an employee id", x)
		}
		return Identity{EmployeeID: id}, nil
	case string:
		return identityOfString(x, kind)
	default:
		return Identity{}, fmt.Errorf("want a number or string, got %s", truncate(string(raw)))
	}
}

// identityOfString interprets a string identity: digits are an employee id.
func identityOfString(x string, kind IdentityKind) (Identity, error) {
	if kind != ByIP {
		if id, err := ParseEmployeeID(x); err == nil {
			return Identity{EmployeeID: id}, nil
		}
		if kind == ByEmployee {
			return Identity{}, fmt.Errorf("%q is not an employee id", truncate(x))
		}
	}
	ip, err := ParseIP(x)
	if err != nil {
		if kind == ByIP {
			return Identity{}, fmt.Errorf("%q is not an IP address", truncate(x))
		}
		return Identity{}, fmt.Errorf("%q is neither an employee id nor an IP address", truncate(x))
	}
	return Identity{IP: ip}, nil
}

// truncate keeps error messages short whatever the input.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// ipKeyPrefix marks IP keys that are not plain IPv4 (v6, zones): those are
// base64url-encoded, since ':' and '%' are not allowed in KV keys or subjects.
const ipKeyPrefix = "ip6."

// IPKey encodes an IP address as a KV key and subject suffix. IPv4 stays
// readable ("10.0.0.1") so operators can `nats kv get IDENTITIES 10.0.0.1`;
// anything else is "ip6." followed by base64url of the canonical text.
func IPKey(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is4() {
		return ip.String()
	}
	return ipKeyPrefix + base64.RawURLEncoding.EncodeToString([]byte(ip.String()))
}

// ParseIPKey reverses IPKey.
func ParseIPKey(key string) (netip.Addr, error) {
	if rest, ok := strings.CutPrefix(key, ipKeyPrefix); ok {
		b, err := base64.RawURLEncoding.DecodeString(rest)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("decoding IP key %q: %w", key, err)
		}
		return ParseIP(string(b))
	}
	ip, err := ParseIP(key)
	if err != nil || !ip.Is4() {
		return netip.Addr{}, fmt.Errorf("decoding IP key %q: not an IPv4 address", key)
	}
	return ip, nil
}
