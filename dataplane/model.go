package dataplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/netseg/netseg/api/segment"
)

// Ruleset is the desired state of the kernel for one node: everything the
// dataplane programs comes from here, and Sync makes the kernel match it.
type Ruleset struct {
	// Endpoints are the local container interfaces to enforce.
	Endpoints []Endpoint
	// Sets are the named peer sets the rules refer to.
	Sets []Set
	// Quarantine holds addresses of interfaces that are known but whose
	// rules are not (or could not be) programmed: no traffic to or from them.
	Quarantine []netip.Addr
	// Managed are the pod networks netseg manages. A packet from or to an
	// address inside them that is no programmed endpoint is dropped (fail
	// closed); an empty list disables the catch-all.
	Managed []netip.Prefix
	// Node are the node's own addresses. They are never in the catch-all,
	// though a pod network holds them (a bridge's gateway, a ptp host
	// veth's address): the node keeps reaching itself there.
	Node []netip.Addr
}

// Endpoint is one container interface.
type Endpoint struct {
	// ID is stable for the interface's life, e.g. "<containerID>/<ifname>".
	ID string
	// HostIface is the host-side veth; anti-spoofing is bound to it. Empty
	// for endpoints without a local device (no anti-spoofing chain).
	HostIface string
	// IPs are the container's addresses on this interface.
	IPs []netip.Addr
	// Egress decides connections this endpoint opens; Ingress decides
	// connections to it from sources that are not local endpoints.
	Egress, Ingress Policy
}

// Policy is a first-match rule list per pass. A pass evaluates its rules,
// then its tail: a Delegate rule (or no match) continues with the tail.
// Staged nil means the staged pass decides exactly as the enforced one
// (no Monitor mode involved). A list that ends without a match denies
// (fail closed), counted as no_rule_matched.
type Policy struct {
	Enforced, EnforcedTail []Rule
	Staged, StagedTail     []Rule
}

// Rule matches a peer and ports and decides.
type Rule struct {
	// Peer is a set name from Ruleset.Sets; "" matches any address.
	Peer string
	// PeerNot inverts the set match: the peer is not in Peer.
	PeerNot bool
	// Ports: empty matches every protocol and port (ICMP included); a rule
	// with ports never matches ICMP. A range with First 0 matches every
	// port of its protocol (how ICMP and ICMPv6 are listed).
	Ports  []segment.PortRange
	Action segment.Action
	// Origin identifies the policy element that decided (the compiler's
	// origin id); it is stamped into the connection's conntrack mark.
	Origin uint16
}

// Set is a named set of peer prefixes.
type Set struct {
	Name     string
	Prefixes []netip.Prefix
}

// MaxOrigin is the largest origin id a conntrack mark can carry.
const MaxOrigin = segment.MaxOriginID

// Mark is the conntrack mark netseg stamps on a connection when its first
// packet is decided. Layout (32 bits):
//
//	bits  0-13  enforced pass: origin id
//	bits 14-15  enforced pass: action (1 allow, 2 deny)
//	bits 16-29  staged pass:   origin id
//	bits 30-31  staged pass:   action (1 allow, 2 deny)
//
// The final verdict follows from the two halves (see Decision).
type Mark uint32

// MakeMark builds a mark from both passes' results.
func MakeMark(enforced, staged segment.Action, enforcedOrigin, stagedOrigin uint16) Mark {
	return Mark(uint32(enforcedOrigin&MaxOrigin) | uint32(enforced&3)<<14 |
		uint32(stagedOrigin&MaxOrigin)<<16 | uint32(staged&3)<<30)
}

// half returns the enforced (low) or staged (high) 16-bit half for a
// single pass's decision.
func half(a segment.Action, origin uint16) uint32 { return uint32(origin&MaxOrigin) | uint32(a&3)<<14 }

// Decision decodes a mark: the verdict, and the origin of the pass that
// decided it (the enforced pass's, except for would-deny: the staged one's).
func (m Mark) Decision() (segment.Verdict, uint16) {
	ea, eo := segment.Action(m>>14&3), uint16(m&MaxOrigin)
	sa, so := segment.Action(m>>30&3), uint16(m>>16&MaxOrigin)
	switch {
	case ea == segment.Deny:
		return segment.Denied, eo
	case ea == segment.Allow && sa == segment.Deny:
		return segment.WouldDeny, so
	case ea == segment.Allow:
		return segment.Allowed, eo
	}
	return segment.None, 0
}

// Validate reports the first problem that would make the ruleset
// unprogrammable, naming the endpoint or set.
func (rs *Ruleset) Validate() error {
	sets := make(map[string]bool, len(rs.Sets))
	for _, s := range rs.Sets {
		if s.Name == "" {
			return fmt.Errorf("set with empty name")
		}
		if sets[s.Name] {
			return fmt.Errorf("set %q defined twice", s.Name)
		}
		sets[s.Name] = true
	}
	ids := make(map[string]bool, len(rs.Endpoints))
	// Endpoints of one workload share their rule lists: each list is
	// checked once (as a tail and as a head, which differ).
	type listRef struct {
		id   listID
		tail bool
	}
	checked := map[listRef]bool{}
	for _, ep := range rs.Endpoints {
		if ep.ID == "" {
			return fmt.Errorf("endpoint with empty id (ips %v)", ep.IPs)
		}
		if ids[ep.ID] {
			return fmt.Errorf("endpoint %s defined twice", ep.ID)
		}
		ids[ep.ID] = true
		for _, p := range []struct {
			name  string
			rules []Rule
		}{{"egress", ep.Egress.Enforced}, {"egress tail", ep.Egress.EnforcedTail},
			{"egress staged", ep.Egress.Staged}, {"egress staged tail", ep.Egress.StagedTail},
			{"ingress", ep.Ingress.Enforced}, {"ingress tail", ep.Ingress.EnforcedTail},
			{"ingress staged", ep.Ingress.Staged}, {"ingress staged tail", ep.Ingress.StagedTail}} {
			if len(p.rules) == 0 {
				continue
			}
			ref := listRef{idOfList(p.rules), strings.HasSuffix(p.name, "tail")}
			if checked[ref] {
				continue
			}
			checked[ref] = true
			for i, r := range p.rules {
				if r.Action == segment.Delegate && ref.tail {
					return fmt.Errorf("endpoint %s: %s rule %d: delegate in a tail", ep.ID, p.name, i)
				}
				if r.Peer != "" && !sets[r.Peer] {
					return fmt.Errorf("endpoint %s: %s rule %d: unknown peer set %q", ep.ID, p.name, i, r.Peer)
				}
				if r.Action != segment.Allow && r.Action != segment.Deny && r.Action != segment.Delegate {
					return fmt.Errorf("endpoint %s: %s rule %d: bad action %d", ep.ID, p.name, i, r.Action)
				}
				if r.Origin > MaxOrigin {
					return fmt.Errorf("endpoint %s: %s rule %d: origin %d above %d", ep.ID, p.name, i, r.Origin, MaxOrigin)
				}
				for _, pr := range r.Ports {
					if pr.Last < pr.First {
						return fmt.Errorf("endpoint %s: %s rule %d: port range %d-%d is reversed", ep.ID, p.name, i, pr.First, pr.Last)
					}
				}
			}
		}
	}
	return nil
}
