// Package segment holds the words netseg's parts share: the action of a
// rule, the protocol and ports it matches, the verdict on a connection and
// the origin that decided it, and a node's container interface (Endpoint).
// The compiler (controller/policy), the
// enforcement mapping, the dataplane, explain, the flow-log pipeline and
// the flow record schema (api/flow) all use these types, so a value
// crosses from policy to kernel to log without conversion.
//
// It imports nothing but the standard library: the dataplane and the CNI
// side link it without any Kubernetes code. The CRD types (api/v1alpha1)
// keep their own string types, which are the API schema; they become
// segment values where the compiler reads them.
package segment

import (
	"fmt"
)

// Action is what a rule, or a zone's default, does with a new
// connection. It is a small number because the conntrack mark carries it,
// two bits per pass (dataplane.Mark); in JSON and text it is its name.
type Action uint8

// Actions. The zero Action is unset (a configuration default applies).
const (
	Allow Action = 1
	Deny  Action = 2
	// Delegate ends a ZonePolicy's rules without deciding: evaluation
	// continues after them (a rule list's tail).
	Delegate Action = 3
)

var actionNames = [...]string{Allow: "Allow", Deny: "Deny", Delegate: "Delegate"}

func (a Action) String() string {
	if int(a) < len(actionNames) && a != 0 {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// MarshalText writes the action's name; the zero Action writes as empty
// text.
func (a Action) MarshalText() ([]byte, error) {
	if a == 0 {
		return []byte{}, nil
	}
	if int(a) >= len(actionNames) {
		return nil, fmt.Errorf("invalid action %d", uint8(a))
	}
	return []byte(actionNames[a]), nil
}

// UnmarshalText reads a name as MarshalText writes it: Allow, Deny or
// Delegate (case-sensitive, as in the CRDs), or empty text for the zero
// Action.
func (a *Action) UnmarshalText(b []byte) error {
	for v, name := range actionNames {
		if string(b) == name {
			*a = Action(v)
			return nil
		}
	}
	return fmt.Errorf("unknown action %q (want Allow, Deny or Delegate)", b)
}

// Verdict is the outcome of a connection's decision, both passes
// combined.
type Verdict uint8

// Verdicts.
const (
	None      Verdict = iota // not decided by netseg (conntrack mark 0)
	Allowed                  // passes, and the staged pass agrees
	Denied                   // the enforced pass denies it
	WouldDeny                // passes, but a staged rule denies it
)

var verdictNames = [...]string{None: "none", Allowed: "allowed", Denied: "denied", WouldDeny: "would-deny"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return fmt.Sprintf("Verdict(%d)", uint8(v))
}

// MarshalText writes the verdict's name, e.g. would-deny.
func (v Verdict) MarshalText() ([]byte, error) {
	if int(v) >= len(verdictNames) {
		return nil, fmt.Errorf("invalid verdict %d", uint8(v))
	}
	return []byte(verdictNames[v]), nil
}

// UnmarshalText reads a name as MarshalText writes it.
func (v *Verdict) UnmarshalText(b []byte) error {
	for i, name := range verdictNames {
		if string(b) == name {
			*v = Verdict(i)
			return nil
		}
	}
	return fmt.Errorf("unknown verdict %q (want allowed, denied, would-deny or none)", b)
}
