package policy

import (
	"net/netip"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/netseg/netseg/api/segment"
)

// PassResult is the result of one pass of the decision.
type PassResult struct {
	Action segment.Action `json:"action"`
	Origin segment.Origin `json:"origin"`
}

// Decision is the decision for one connection.
type Decision struct {
	Verdict segment.Verdict `json:"verdict"`
	// Expected: allowed by a ZonePolicy Allow rule or a ServiceDependency.
	Expected bool           `json:"expected"`
	Origin   segment.Origin `json:"origin"`
	SrcZone  string         `json:"srcZone"`
	DstZone  string         `json:"dstZone"`
	Enforced PassResult     `json:"enforced"`
	Staged   PassResult     `json:"staged"`
}

// combine makes the verdict out of the two passes.
func combine(enforced, staged PassResult) Decision {
	d := Decision{Enforced: enforced, Staged: staged}
	switch {
	case enforced.Action != segment.Allow:
		d.Verdict, d.Origin = segment.Denied, enforced.Origin
	case staged.Action != segment.Allow:
		d.Verdict, d.Origin = segment.WouldDeny, staged.Origin
	default:
		d.Verdict, d.Origin = segment.Allowed, enforced.Origin
		d.Expected = d.Origin.Kind == segment.OriginZonePolicy || d.Origin.Kind == segment.OriginServiceDependency
	}
	return d
}

// peer is a resolved Peer.
type peer struct {
	endpoint bool
	ns       string
	labels   labels.Set
	ips      []netip.Addr
	zone     string
}

// ZoneOfAddr returns the zone of an address: the zone of the endpoint that
// has it, else of the CIDR zone that contains it, else unzoned.
func (c *Compiled) ZoneOfAddr(a netip.Addr) string {
	a = a.Unmap().WithZone("")
	if e, ok := c.m.epByIP[a]; ok {
		return e.zone
	}
	return c.m.zoneOfAddr(a)
}

// resolve finds a peer's zone. A bare address of a known endpoint is that
// endpoint; an endpoint named without labels or addresses is looked up.
func (m *model) resolve(p Peer) peer {
	if !p.IsEndpoint() {
		ips := normAddrs(p.IPs)
		if len(ips) == 0 {
			return peer{zone: Unzoned}
		}
		if e, ok := m.epByIP[ips[0]]; ok {
			return peer{endpoint: true, ns: e.Namespace, labels: e.labels, ips: e.IPs, zone: e.zone}
		}
		return peer{ips: ips[:1], zone: m.zoneOfAddr(ips[0])}
	}
	if p.Labels == nil && p.IPs == nil {
		for _, e := range m.endpoints {
			if e.Namespace == p.Namespace && e.Name == p.Name {
				return peer{endpoint: true, ns: e.Namespace, labels: e.labels, ips: e.IPs, zone: e.zone}
			}
		}
	}
	r := peer{endpoint: true, ns: p.Namespace, labels: labels.Set(p.Labels), ips: normAddrs(p.IPs)}
	r.zone, _ = m.zoneOfLabels(m.namespaceLabels(p.Namespace), r.labels)
	return r
}

// Decide is the reference decision for a connection from src to dst on
// port/proto (port is ignored for ICMP), following the decision order of
// docs/semantics.md.
func (c *Compiled) Decide(src, dst Peer, port uint16, proto segment.Protocol) Decision {
	s, d := c.m.resolve(src), c.m.resolve(dst)
	dec := combine(c.m.pass(s, d, port, proto, true), c.m.pass(s, d, port, proto, false))
	dec.SrcZone, dec.DstZone = s.zone, d.zone
	return dec
}

func (m *model) pass(s, d peer, port uint16, proto segment.Protocol, enforced bool) PassResult {
	if proto == segment.ICMP {
		port = 0
	}
	for _, r := range m.rules {
		if r.broken || enforced && r.monitor || !r.from.has(s.zone) || !r.to.has(d.zone) || !matchPorts(r.ports, port, proto) {
			continue
		}
		if r.action == segment.Delegate {
			break
		}
		return PassResult{r.action, m.origins[r.origin]}
	}
	perimeter := s.endpoint && m.refuses(d.zone, s.ns)
	if s.endpoint && !perimeter {
		for _, e := range m.entries {
			if e.sd.isClient(s.ns, s.labels) && m.covers(e, d) && matchPorts(e.ports, port, proto) {
				return PassResult{segment.Allow, m.origins[e.origin]}
			}
		}
	}
	a, o := m.fallback(s.zone, d.zone, enforced, perimeter)
	return PassResult{a, m.origins[o]}
}

func (m *model) covers(e *entry, d peer) bool {
	if d.endpoint {
		return e.coversEndpoint(d.ns, d.labels, d.ips)
	}
	return e.cidr.IsValid() && len(d.ips) > 0 && e.cidr.Contains(d.ips[0])
}
