package policy

import (
	"fmt"
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/v1alpha1"
)

// byteSrc turns fuzz or random bytes into choices; it returns 0 once the
// bytes run out, so every input makes a valid (if small) world.
type byteSrc struct {
	b []byte
	i int
}

func (s *byteSrc) n(k int) int {
	if k <= 0 || s.i >= len(s.b) {
		return 0
	}
	v := int(s.b[s.i])
	s.i++
	return v % k
}

func pick[T any](s *byteSrc, xs ...T) T { return xs[s.n(len(xs))] }

var genCIDRs = []string{"203.0.113.0/24", "203.0.113.0/25", "198.51.100.0/24", "10.0.0.0/24", "2001:db8::/64", "0.0.0.0/0"}

func genPorts(s *byteSrc) []v1alpha1.PortRange {
	var out []v1alpha1.PortRange
	for range s.n(3) {
		p := pick[int32](s, 22, 80, 443, 8000, 53)
		r := v1alpha1.PortRange{Protocol: pick[v1alpha1.Protocol](s, "TCP", "UDP", "SCTP", ""), Port: p}
		if s.n(2) == 1 {
			end := p + int32(s.n(200))
			r.EndPort = &end
		}
		out = append(out, r)
	}
	return out
}

// genInput builds a small random world from bytes. Endpoints have one
// address each and no two share one.
func genInput(b []byte) Input {
	s := &byteSrc{b: b}
	var in Input
	in.Config.UnzonedDefault = pick[Action](s, "", Allow, Deny)
	zoneNames := []string{"z0", "z1", "z2", "z3"}
	for i := range s.n(5) {
		z := mkZone(zoneNames[i], pick[int32](s, 10, 20, 20, 30), pick(s, "Allow", "Deny"), pick(s, "", "Enforce", "Monitor"), nil)
		switch s.n(4) {
		case 0:
			z.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"seg": pick(s, "a", "b")}}
		case 1:
			z.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": pick(s, "x", "y")}}
		case 2:
			z.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"seg": pick(s, "a", "b")}}
			z.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": pick(s, "x", "y")}}
		}
		for range s.n(3) {
			z.Spec.CIDRs = append(z.Spec.CIDRs, pick(s, genCIDRs...))
		}
		in.Zones = append(in.Zones, z)
	}
	refPool := []string{"z0", "z1", "z2", "z3", "*", "unzoned", "missing"}
	for i := range s.n(4) {
		p := mkPolicy(fmt.Sprintf("p%d", i), pick[int32](s, 1, 2, 2), pick(s, "", "Monitor"))
		for j := range 1 + s.n(4) {
			r := mkRule(fmt.Sprintf("r%d", j), pick(s, "Allow", "Deny", "Delegate"),
				[]string{pick(s, refPool...)}, []string{pick(s, refPool...)}, genPorts(s)...)
			if s.n(3) == 0 {
				r.To = append(r.To, v1alpha1.ZoneRef{Zone: pick(s, refPool...)})
			}
			p.Spec.Rules = append(p.Spec.Rules, r)
		}
		in.ZonePolicies = append(in.ZonePolicies, p)
	}
	nss := []string{"n0", "n1", "n2"}
	for _, ns := range nss {
		if s.n(3) > 0 {
			in.Namespaces = append(in.Namespaces, Namespace{Name: ns, Labels: map[string]string{"seg": pick(s, "a", "b")}})
		}
	}
	for i := range s.n(9) {
		ip := fmt.Sprintf("10.0.%d.%d", s.n(2), i+1)
		if s.n(4) == 0 {
			ip = fmt.Sprintf("2001:db8::%d", i+1)
		}
		in.Endpoints = append(in.Endpoints, ep(pick(s, nss...), fmt.Sprintf("e%d", i), pick(s, "x", "y", "w"), ip))
	}
	for i := range s.n(4) {
		sd := mkSD(pick(s, nss...), fmt.Sprintf("sd%d", i), map[string]string{"app": pick(s, "x", "y", "w")})
		for j := range 1 + s.n(3) {
			name := fmt.Sprintf("d%d", j)
			switch s.n(3) {
			case 0:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, depService(name, pick(s, "", "n0", "n1"), pick(s, "svc", "gone"), genPorts(s)...))
			case 1:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, depWorkload(name, pick(s, "", "n0", "n2"), map[string]string{"app": pick(s, "x", "y")}, genPorts(s)...))
			default:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, depCIDR(name, pick(s, genCIDRs...), genPorts(s)...))
			}
		}
		in.ServiceDependencies = append(in.ServiceDependencies, sd)
	}
	in.Services = []Service{{Namespace: "n0", Name: "svc", Selector: map[string]string{"app": "x"},
		Ports: []PortRange{{TCP, 80, 80}}}}
	return in
}

var probeAddrs = []string{"203.0.113.5", "203.0.113.200", "198.51.100.9", "192.0.2.1", "10.0.0.200", "2001:db8::99", "2001:db8:1::1"}

type probe struct {
	port  uint16
	proto Protocol
}

var probes = []probe{{22, TCP}, {80, TCP}, {81, UDP}, {443, SCTP}, {8100, TCP}, {53, UDP}, {0, ICMP}, {250, TCP}}

// checkTracer holds the rule lists to Decide: every endpoint's egress
// lists to every probe address and endpoint, and its ingress lists from
// them. It reports the first mismatches.
func checkTracer(c *Compiled, in Input) []string {
	var addrs []netip.Addr
	for _, a := range probeAddrs {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	for _, e := range c.Endpoints {
		addrs = append(addrs, e.IPs...)
	}
	var bad []string
	for _, e := range c.Endpoints {
		self := Peer{Namespace: e.Namespace, Name: e.Name}
		for _, a := range addrs {
			for _, p := range probes {
				want := c.Decide(self, AddrPeer(a), p.port, p.proto)
				got, err := c.TraceEgress(e.Namespace, e.Name, a, p.port, p.proto)
				if err != nil || got != want {
					bad = append(bad, fmt.Sprintf("egress %s/%s -> %s %d/%s: trace %+v, decide %+v (%v)", e.Namespace, e.Name, a, p.port, p.proto, got, want, err))
				}
				want = c.Decide(AddrPeer(a), self, p.port, p.proto)
				got, err = c.TraceIngress(e.Namespace, e.Name, a, p.port, p.proto)
				if err != nil || got != want {
					bad = append(bad, fmt.Sprintf("ingress %s -> %s/%s %d/%s: trace %+v, decide %+v (%v)", a, e.Namespace, e.Name, p.port, p.proto, got, want, err))
				}
				if len(bad) > 3 {
					return bad
				}
			}
		}
	}
	return bad
}

// checkSetShapes checks the form of every set: prefixes sorted by address
// and length and pairwise disjoint, an endpoint address in a set listed as
// its own /32 (/128), never inside a wider prefix (the dataplane renders
// such a set as one element per prefix, and a pod's arrival as one more).
func checkSetShapes(c *Compiled) []string {
	endpoint := map[netip.Addr]bool{}
	for _, e := range c.Endpoints {
		for _, a := range e.IPs {
			endpoint[a] = true
		}
	}
	var bad []string
	for _, s := range c.Sets {
		for i, p := range s.Prefixes {
			if i > 0 {
				q := s.Prefixes[i-1]
				if ComparePrefixes(q, p) >= 0 || q.Overlaps(p) {
					bad = append(bad, fmt.Sprintf("set %s: %s then %s: not sorted and disjoint", s.Name, q, p))
				}
			}
			if p.Bits() == p.Addr().BitLen() {
				continue
			}
			for a := range endpoint {
				if p.Contains(a) {
					bad = append(bad, fmt.Sprintf("set %s: endpoint address %s inside %s", s.Name, a, p))
				}
			}
		}
	}
	return bad
}
