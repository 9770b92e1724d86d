package policy

// The tracer below is test code: it evaluates a compiled endpoint's rule
// lists the way the kernel evaluates the chains rendered from them, and
// the tests in trace_test.go (package policy_test, in the same test
// binary) hold it to Decide. It lives in package policy because it reads
// the model's sets and origins directly.

import (
	"fmt"
	"net/netip"

	"github.com/netseg/netseg/api/segment"
)

// TraceEgress evaluates an endpoint's egress rule lists for a connection
// to dst, as the kernel would: first match in Policy, then Tail.
func (c *Compiled) TraceEgress(ns, name string, dst netip.Addr, port uint16, proto segment.Protocol) (Decision, error) {
	e, ok := c.Endpoint(ns, name)
	if !ok {
		return Decision{}, fmt.Errorf("endpoint %s/%s not found", ns, name)
	}
	d := c.trace(e.Egress, dst, port, proto)
	d.SrcZone, d.DstZone = e.Zone, c.zoneOf(dst)
	return d, nil
}

// TraceIngress evaluates an endpoint's ingress rule lists for a connection
// from src, an address that is not a local endpoint.
func (c *Compiled) TraceIngress(ns, name string, src netip.Addr, port uint16, proto segment.Protocol) (Decision, error) {
	e, ok := c.Endpoint(ns, name)
	if !ok {
		return Decision{}, fmt.Errorf("endpoint %s/%s not found", ns, name)
	}
	d := c.trace(e.Ingress, src, port, proto)
	d.SrcZone, d.DstZone = c.zoneOf(src), e.Zone
	return d, nil
}

func (c *Compiled) trace(dir Direction, a netip.Addr, port uint16, proto segment.Protocol) Decision {
	a = a.Unmap()
	if proto == segment.ICMP {
		port = 0
	}
	pass := func(l RuleList) PassResult {
		for _, r := range l.Policy {
			if c.matchRule(r, a, port, proto) {
				if r.Action == segment.Delegate {
					break
				}
				return PassResult{r.Action, c.Origins[r.Origin]}
			}
		}
		for _, r := range l.Tail {
			if c.matchRule(r, a, port, proto) {
				return PassResult{r.Action, c.Origins[r.Origin]}
			}
		}
		return PassResult{segment.Deny, segment.Origin{}} // unreachable: the tail ends with a catch-all
	}
	return combine(pass(dir.Enforced), pass(dir.Staged))
}

func (c *Compiled) matchRule(r Rule, a netip.Addr, port uint16, proto segment.Protocol) bool {
	if !matchPorts(r.Ports, port, proto) {
		return false
	}
	if r.Peer.Any() {
		return true
	}
	ps, _ := c.Set(r.Peer.Set)
	return addrInSet(ps, a) != r.Peer.Not
}

// zoneOf finds an address's zone from the zone sets.
func (c *Compiled) zoneOf(a netip.Addr) string {
	a = a.Unmap()
	for _, z := range c.Zones {
		if ps, ok := c.Set(ZoneSet(z.Name)); ok && addrInSet(ps, a) {
			return z.Name
		}
	}
	return Unzoned
}
