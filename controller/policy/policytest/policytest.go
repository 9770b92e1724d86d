// Package policytest builds policy inputs for tests: fixture builders
// for zones, zone policies and service dependencies, the "shop" world, and
// Gen, a small random world from bytes (for fuzzing and for random tests
// that hold a rule evaluator to policy's Decide). It is test support:
// only tests import it, and production binaries must not link it.
package policytest

import (
	"fmt"
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
)

// Test address conventions: pods in 10.0.0.0/16 (one /24 per namespace),
// the partners zone 203.0.113.0/24, the lab zone 198.51.100.0/24, and
// 192.0.2.0/24 for addresses in no zone.

// Zone builds a zone; nsSel, when not nil, selects its namespaces.
func Zone(name string, prio int32, def, mode string, nsSel map[string]string, cidrs ...string) v1alpha1.Zone {
	z := v1alpha1.Zone{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.ZoneSpec{
		Priority: prio, DefaultAction: v1alpha1.Action(def), Mode: v1alpha1.Mode(mode), CIDRs: cidrs}}
	if nsSel != nil {
		z.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: nsSel}
	}
	return z
}

// ZonePolicy builds a zone policy of rules.
func ZonePolicy(name string, prio int32, mode string, rules ...v1alpha1.ZoneRule) v1alpha1.ZonePolicy {
	return v1alpha1.ZonePolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.ZonePolicySpec{Priority: prio, Mode: v1alpha1.Mode(mode), Rules: rules}}
}

func refs(zones ...string) []v1alpha1.ZoneRef {
	var out []v1alpha1.ZoneRef
	for _, z := range zones {
		out = append(out, v1alpha1.ZoneRef{Zone: z})
	}
	return out
}

// Rule builds a zone policy rule from zones to zones.
func Rule(name, action string, from, to []string, ports ...v1alpha1.PortRange) v1alpha1.ZoneRule {
	return v1alpha1.ZoneRule{Name: name, Action: v1alpha1.Action(action), From: refs(from...), To: refs(to...), Ports: ports}
}

// Port is a port, or a range with end.
func Port(proto string, p int32, end ...int32) v1alpha1.PortRange {
	r := v1alpha1.PortRange{Protocol: v1alpha1.Protocol(proto), Port: p}
	if len(end) > 0 {
		r.EndPort = &end[0]
	}
	return r
}

// ServiceDependency builds a dependency list for the workload client.
func ServiceDependency(ns, name string, client map[string]string, deps ...v1alpha1.Dependency) v1alpha1.ServiceDependency {
	return v1alpha1.ServiceDependency{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.ServiceDependencySpec{Workload: metav1.LabelSelector{MatchLabels: client}, DependsOn: deps}}
}

// DepWorkload is a dependency on the workload sel in ns.
func DepWorkload(name, ns string, sel map[string]string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, Workload: &v1alpha1.WorkloadRef{Namespace: ns,
		LabelSelector: metav1.LabelSelector{MatchLabels: sel}}, Ports: ports}
}

// DepService is a dependency on the Service ns/svc.
func DepService(name, ns, svc string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, Service: &v1alpha1.ServiceRef{Namespace: ns, Name: svc}, Ports: ports}
}

// DepCIDR is a dependency on a network.
func DepCIDR(name, cidr string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, CIDR: cidr, Ports: ports}
}

// Endpoint is a pod with the label app and one address.
func Endpoint(ns, name, app, ip string) policy.Endpoint {
	return policy.Endpoint{Namespace: ns, Name: name, Labels: map[string]string{"app": app}, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
}

// Shop is a small shop: web, payments and ops zones, a partner
// network, a Monitor-mode lab network, and an unzoned "misc" namespace.
func Shop() policy.Input {
	return policy.Input{
		Zones: []v1alpha1.Zone{
			Zone("web", 100, "Deny", "", map[string]string{"segment": "web"}),
			Zone("payments", 50, "Deny", "Enforce", map[string]string{"segment": "payments"}),
			Zone("ops", 200, "Allow", "", map[string]string{"segment": "ops"}),
			Zone("partners", 300, "Deny", "", nil, "203.0.113.0/24"),
			Zone("lab", 310, "Deny", "Monitor", nil, "198.51.100.0/24"),
		},
		ZonePolicies: []v1alpha1.ZonePolicy{
			ZonePolicy("perimeter", 10, "",
				Rule("web-to-payments", "Delegate", []string{"web"}, []string{"payments"}),
				Rule("ops-anywhere", "Allow", []string{"ops"}, []string{"*"}, Port("TCP", 22), Port("UDP", 161, 162)),
				Rule("no-partners-to-payments", "Deny", []string{"partners"}, []string{"payments"}),
				Rule("partners-to-web", "Allow", []string{"partners"}, []string{"web"}, Port("TCP", 443), Port("SCTP", 3868)),
				Rule("web-internal", "Allow", []string{"web"}, []string{"web"}),
			),
			ZonePolicy("staged-lockdown", 20, "Monitor",
				Rule("no-web-to-unzoned", "Deny", []string{"web"}, []string{"unzoned"}),
				Rule("no-ops-to-web-http", "Deny", []string{"ops"}, []string{"web"}, Port("TCP", 8000, 8100)),
				Rule("no-unzoned-to-ops", "Deny", []string{"unzoned"}, []string{"ops"}),
			),
		},
		ServiceDependencies: []v1alpha1.ServiceDependency{
			ServiceDependency("shop", "checkout", map[string]string{"app": "checkout"},
				DepService("payments-api", "pay", "payments", Port("TCP", 8443)),
				DepWorkload("cache", "shop", map[string]string{"app": "redis"}, Port("TCP", 6379)),
				DepCIDR("card-network", "203.0.113.0/25", Port("TCP", 443)),
			),
			ServiceDependency("web", "frontend", map[string]string{"app": "frontend"},
				DepWorkload("checkout", "shop", map[string]string{"app": "checkout"}, Port("TCP", 8080)),
			),
		},
		Namespaces: []policy.Namespace{
			{Name: "web", Labels: map[string]string{"segment": "web"}},
			{Name: "shop", Labels: map[string]string{"segment": "web"}},
			{Name: "pay", Labels: map[string]string{"segment": "payments"}},
			{Name: "ops", Labels: map[string]string{"segment": "ops"}},
		},
		Endpoints: []policy.Endpoint{
			Endpoint("web", "frontend", "frontend", "10.0.1.10"),
			Endpoint("shop", "checkout", "checkout", "10.0.2.10"),
			Endpoint("shop", "redis", "redis", "10.0.2.20"),
			Endpoint("pay", "payments", "payments", "10.0.3.10"),
			Endpoint("pay", "vault", "vault", "10.0.3.20"),
			Endpoint("ops", "monitoring", "monitoring", "10.0.4.10"),
			Endpoint("misc", "legacy", "legacy", "10.0.5.10"),
		},
		Services: []policy.Service{
			{Namespace: "pay", Name: "payments", Selector: map[string]string{"app": "payments"}},
		},
	}
}

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

// Gen builds a small random world from bytes (fuzz input or random):
// up to four zones, four zone policies, nine endpoints in three
// namespaces and four service dependencies. Endpoints have one address
// each (10.0.0-1.N, or 2001:db8::N) and no two share one.
func Gen(b []byte) policy.Input {
	s := &byteSrc{b: b}
	var in policy.Input
	in.Config.UnzonedDefault = pick[segment.Action](s, 0, segment.Allow, segment.Deny)
	in.Config.EntryBudget = pick(s, 0, 0, 1, 2, 4) // small budgets refuse some objects
	zoneNames := []string{"z0", "z1", "z2", "z3"}
	for i := range s.n(5) {
		z := Zone(zoneNames[i], pick[int32](s, 10, 20, 20, 30), pick(s, "Allow", "Deny"), pick(s, "", "Enforce", "Monitor"), nil)
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
		z.Spec.AdmitDependencies = pick[v1alpha1.Admission](s, "", "", v1alpha1.AdmitAny, v1alpha1.AdmitZoneNamespaces, v1alpha1.AdmitNone)
		in.Zones = append(in.Zones, z)
	}
	refPool := []string{"z0", "z1", "z2", "z3", "*", "unzoned", "missing"}
	for i := range s.n(4) {
		p := ZonePolicy(fmt.Sprintf("p%d", i), pick[int32](s, 1, 2, 2), pick(s, "", "Monitor"))
		for j := range 1 + s.n(4) {
			r := Rule(fmt.Sprintf("r%d", j), pick(s, "Allow", "Deny", "Delegate"),
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
			in.Namespaces = append(in.Namespaces, policy.Namespace{Name: ns, Labels: map[string]string{"seg": pick(s, "a", "b")}})
		}
	}
	for i := range s.n(9) {
		ip := fmt.Sprintf("10.0.%d.%d", s.n(2), i+1)
		if s.n(4) == 0 {
			ip = fmt.Sprintf("2001:db8::%d", i+1)
		}
		in.Endpoints = append(in.Endpoints, Endpoint(pick(s, nss...), fmt.Sprintf("e%d", i), pick(s, "x", "y", "w"), ip))
	}
	for i := range s.n(4) {
		sd := ServiceDependency(pick(s, nss...), fmt.Sprintf("sd%d", i), map[string]string{"app": pick(s, "x", "y", "w")})
		for j := range 1 + s.n(3) {
			name := fmt.Sprintf("d%d", j)
			switch s.n(3) {
			case 0:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, DepService(name, pick(s, "", "n0", "n1"), pick(s, "svc", "gone"), genPorts(s)...))
			case 1:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, DepWorkload(name, pick(s, "", "n0", "n2"), map[string]string{"app": pick(s, "x", "y")}, genPorts(s)...))
			default:
				sd.Spec.DependsOn = append(sd.Spec.DependsOn, DepCIDR(name, pick(s, genCIDRs...), genPorts(s)...))
			}
		}
		in.ServiceDependencies = append(in.ServiceDependencies, sd)
	}
	in.Services = []policy.Service{{Namespace: "n0", Name: "svc", Selector: map[string]string{"app": "x"},
		Ports: []segment.PortRange{{Protocol: segment.TCP, First: 80, Last: 80}}}}
	return in
}

// ProbeAddrs are addresses to probe a world's decisions with: in zone
// networks, in the pod network, outside every zone, both families.
var ProbeAddrs = []string{"203.0.113.5", "203.0.113.200", "198.51.100.9", "192.0.2.1", "10.0.0.200", "2001:db8::99", "2001:db8:1::1"}

// Probe is a destination port and protocol (Port is 0 for ICMP).
type Probe struct {
	Port  uint16
	Proto segment.Protocol
}

// Probes are the ports and protocols to probe a world's decisions with:
// inside and outside the ranges Gen draws.

var Probes = []Probe{{22, segment.TCP}, {80, segment.TCP}, {81, segment.UDP}, {443, segment.SCTP}, {8100, segment.TCP}, {53, segment.UDP}, {0, segment.ICMP}, {250, segment.TCP}}
