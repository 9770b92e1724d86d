// Package enforce turns compiled policy into the dataplane's ruleset for
// the endpoints that live on this node: it maps the compiler's rule lists,
// peer sets and origin ids onto dataplane types, and fails closed (the
// endpoint is quarantined) for anything it cannot express.
package enforce

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"sort"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/dataplane"
)

// Ruleset builds the dataplane ruleset for the endpoints registered on this
// node (locals) from c. An endpoint that c does not know, or whose rules
// cannot be expressed, is quarantined and reported; the others are
// unaffected.
func Ruleset(c *policy.Compiled, locals []segment.Endpoint) (*dataplane.Ruleset, []error) {
	rs := &dataplane.Ruleset{Endpoints: make([]dataplane.Endpoint, 0, len(locals))}
	var errs []error
	used := map[string]bool{}
	memo := map[listsID]memoized{}
	managed := make(map[netip.Prefix]bool, len(locals))
	for _, l := range locals {
		for _, p := range l.IPs {
			managed[p.Masked()] = true
		}
		er, ok := c.Endpoint(l.Namespace, l.Name)
		if !ok {
			errs = append(errs, fmt.Errorf("endpoint %s (%s/%s): not in the compiled policy: quarantined", l.ID, l.Namespace, l.Name))
			rs.Quarantine = append(rs.Quarantine, l.Addrs()...)
			continue
		}
		eg, err1 := memoDirection(memo, er.Egress, used)
		in, err2 := memoDirection(memo, er.Ingress, used)
		if err := firstErr(err1, err2); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s (%s/%s): %w: quarantined", l.ID, l.Namespace, l.Name, err))
			rs.Quarantine = append(rs.Quarantine, l.Addrs()...)
			continue
		}
		rs.Endpoints = append(rs.Endpoints, dataplane.Endpoint{ID: l.ID, HostIface: l.HostIface, IPs: l.Addrs(), Egress: eg, Ingress: in})
	}
	for _, s := range c.Sets {
		if used[s.Name] {
			rs.Sets = append(rs.Sets, dataplane.Set{Name: s.Name, Prefixes: s.Prefixes})
		}
	}
	for name := range used {
		if _, ok := c.Set(name); !ok {
			rs.Sets = append(rs.Sets, dataplane.Set{Name: name}) // referenced but empty
		}
	}
	sort.Slice(rs.Sets, func(i, j int) bool { return rs.Sets[i].Name < rs.Sets[j].Name })
	rs.Managed = make([]netip.Prefix, 0, len(managed))
	for p := range managed {
		rs.Managed = append(rs.Managed, p)
	}
	slices.SortFunc(rs.Managed, policy.ComparePrefixes)
	return rs, errs
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// listsID identifies a direction's four rule lists by their backing
// arrays: the compiler shares lists between endpoints with the same zone
// and dependencies, so most endpoints map to a handful of IDs.
type listsID [4]struct {
	p *policy.Rule
	n int
}

type memoized struct {
	p   dataplane.Policy
	err error
}

func idOf(d policy.Direction) listsID {
	var id listsID
	for i, l := range [][]policy.Rule{d.Enforced.Policy, d.Enforced.Tail, d.Staged.Policy, d.Staged.Tail} {
		if len(l) > 0 {
			id[i].p, id[i].n = &l[0], len(l)
		}
	}
	return id
}

// memoDirection is direction, computed once per set of shared lists. The
// peer sets a memoized policy uses are already marked in used.
func memoDirection(memo map[listsID]memoized, d policy.Direction, used map[string]bool) (dataplane.Policy, error) {
	id := idOf(d)
	if m, ok := memo[id]; ok {
		return m.p, m.err
	}
	p, err := direction(d, used)
	memo[id] = memoized{p, err}
	return p, err
}

// direction maps one direction's two passes. When the staged pass is the
// enforced one (no Monitor mode involved), it is left out: the dataplane
// then stamps both halves of the mark from the enforced rules.
func direction(d policy.Direction, used map[string]bool) (dataplane.Policy, error) {
	var p dataplane.Policy
	var err error
	if p.Enforced, err = rules(d.Enforced.Policy, used); err != nil {
		return p, err
	}
	if p.EnforcedTail, err = rules(d.Enforced.Tail, used); err != nil {
		return p, err
	}
	if reflect.DeepEqual(d.Enforced, d.Staged) {
		return p, nil
	}
	if p.Staged, err = rules(d.Staged.Policy, used); err != nil {
		return p, err
	}
	if p.Staged == nil {
		p.Staged = []dataplane.Rule{} // non-nil: a staged pass exists
	}
	p.StagedTail, err = rules(d.Staged.Tail, used)
	return p, err
}

func rules(in []policy.Rule, used map[string]bool) ([]dataplane.Rule, error) {
	var out []dataplane.Rule
	for _, r := range in {
		if r.Origin > dataplane.MaxOrigin {
			return nil, fmt.Errorf("origin id %d above the %d a conntrack mark carries", r.Origin, dataplane.MaxOrigin)
		}
		switch r.Action {
		case segment.Allow, segment.Deny, segment.Delegate:
		default:
			return nil, fmt.Errorf("unknown action %q", r.Action)
		}
		dr := dataplane.Rule{Peer: r.Peer.Set, PeerNot: r.Peer.Not, Action: r.Action, Origin: r.Origin}
		if dr.Peer != "" {
			used[dr.Peer] = true
		}
		for _, pr := range r.Ports {
			ports, err := portRanges(pr)
			if err != nil {
				return nil, err
			}
			dr.Ports = append(dr.Ports, ports...)
		}
		out = append(out, dr)
	}
	return out, nil
}

// portRanges maps a policy's port range onto the dataplane's: a policy's
// ICMP means the ICMP of the address's family, so it becomes ICMP and
// ICMPv6 (without ports: each matches only in its own family).
func portRanges(pr segment.PortRange) ([]segment.PortRange, error) {
	switch pr.Protocol {
	case segment.TCP, segment.UDP, segment.SCTP:
		return []segment.PortRange{pr}, nil
	case segment.ICMP:
		return []segment.PortRange{{Protocol: segment.ICMP}, {Protocol: segment.ICMPv6}}, nil
	}
	return nil, fmt.Errorf("unknown protocol %q", pr.Protocol)
}
