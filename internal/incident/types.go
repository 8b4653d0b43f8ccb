// Package incident is the domain of the pipeline: incident types, priorities,
// the identity field each type names, decoding and validation of upstream
// incidents, and the canonical incident id.
package incident

import "fmt"

// Type is an upstream incident type, as it appears in /incidents/<type>/.
type Type string

// The seven upstream incident types.
const (
	Denial       Type = "denial"
	Intrusion    Type = "intrusion"
	Executable   Type = "executable"
	Misuse       Type = "misuse"
	Unauthorized Type = "unauthorized"
	Probing      Type = "probing"
	Other        Type = "other"
)

// Types returns every incident type in a stable order.
func Types() []Type {
	return []Type{Denial, Intrusion, Executable, Misuse, Unauthorized, Probing, Other}
}

// ParseType returns the Type named s, or an error for an unknown name.
func ParseType(s string) (Type, error) {
	for _, t := range Types() {
		if string(t) == s {
			return t, nil
		}
	}
	return "", fmt.Errorf("unknown incident type %q", s)
}

// IdentityKind says what an identity field may hold.
type IdentityKind int

// Identity kinds.
const (
	// ByEmployee fields hold an employee id (a JSON integer or a string of digits).
	ByEmployee IdentityKind = iota
	// ByIP fields hold an IP address (v4 or v6) as a string.
	ByIP
	// ByEither fields hold an employee id or an IP address.
	ByEither
)

// IdentityField returns the field of t's incidents that names the employee
// involved, and what it may hold. source_ip on denial and intrusion names the
// outside attacker and is never the identity.
func (t Type) IdentityField() (string, IdentityKind) {
	switch t {
	case Denial:
		return "reported_by", ByEmployee
	case Intrusion:
		return "internal_ip", ByIP
	case Executable:
		return "machine_ip", ByIP
	case Misuse, Unauthorized:
		return "employee_id", ByEmployee
	case Probing:
		return "ip", ByIP
	case Other:
		return "identifier", ByEither
	}
	return "", ByEither
}

// Priority is an incident priority.
type Priority string

// The four priorities, lowest first.
const (
	Low      Priority = "low"
	Medium   Priority = "medium"
	High     Priority = "high"
	Critical Priority = "critical"
)

// Priorities returns the four priorities, lowest first: the order of the
// buckets in an employee's document.
func Priorities() []Priority { return []Priority{Low, Medium, High, Critical} }

// Index returns p's position in Priorities, or -1 for an unknown priority.
func (p Priority) Index() int {
	for i, q := range Priorities() {
		if p == q {
			return i
		}
	}
	return -1
}
