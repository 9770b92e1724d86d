package policy

import (
	"net/netip"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/v1alpha1"
)

// Test address conventions: pods in 10.0.0.0/16 (one /24 per namespace),
// the partners zone 203.0.113.0/24, the lab zone 198.51.100.0/24, and
// 192.0.2.0/24 for addresses in no zone.

func mkZone(name string, prio int32, def, mode string, nsSel map[string]string, cidrs ...string) v1alpha1.Zone {
	z := v1alpha1.Zone{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.ZoneSpec{
		Priority: prio, DefaultAction: v1alpha1.Action(def), Mode: v1alpha1.Mode(mode), CIDRs: cidrs}}
	if nsSel != nil {
		z.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: nsSel}
	}
	return z
}

func mkPolicy(name string, prio int32, mode string, rules ...v1alpha1.ZoneRule) v1alpha1.ZonePolicy {
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

func mkRule(name, action string, from, to []string, ports ...v1alpha1.PortRange) v1alpha1.ZoneRule {
	return v1alpha1.ZoneRule{Name: name, Action: v1alpha1.Action(action), From: refs(from...), To: refs(to...), Ports: ports}
}

func port(proto string, p int32, end ...int32) v1alpha1.PortRange {
	r := v1alpha1.PortRange{Protocol: v1alpha1.Protocol(proto), Port: p}
	if len(end) > 0 {
		r.EndPort = &end[0]
	}
	return r
}

func mkSD(ns, name string, client map[string]string, deps ...v1alpha1.Dependency) v1alpha1.ServiceDependency {
	return v1alpha1.ServiceDependency{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.ServiceDependencySpec{Workload: metav1.LabelSelector{MatchLabels: client}, DependsOn: deps}}
}

func depWorkload(name, ns string, sel map[string]string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, Workload: &v1alpha1.WorkloadRef{Namespace: ns,
		LabelSelector: metav1.LabelSelector{MatchLabels: sel}}, Ports: ports}
}

func depService(name, ns, svc string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, Service: &v1alpha1.ServiceRef{Namespace: ns, Name: svc}, Ports: ports}
}

func depCIDR(name, cidr string, ports ...v1alpha1.PortRange) v1alpha1.Dependency {
	return v1alpha1.Dependency{Name: name, CIDR: cidr, Ports: ports}
}

func ep(ns, name, app, ip string) Endpoint {
	return Endpoint{Namespace: ns, Name: name, Labels: map[string]string{"app": app}, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
}

// shopInput is a small shop: web, payments and ops zones, a partner
// network, a Monitor-mode lab network, and an unzoned "misc" namespace.
func shopInput() Input {
	return Input{
		Zones: []v1alpha1.Zone{
			mkZone("web", 100, "Deny", "", map[string]string{"segment": "web"}),
			mkZone("payments", 50, "Deny", "Enforce", map[string]string{"segment": "payments"}),
			mkZone("ops", 200, "Allow", "", map[string]string{"segment": "ops"}),
			mkZone("partners", 300, "Deny", "", nil, "203.0.113.0/24"),
			mkZone("lab", 310, "Deny", "Monitor", nil, "198.51.100.0/24"),
		},
		ZonePolicies: []v1alpha1.ZonePolicy{
			mkPolicy("perimeter", 10, "",
				mkRule("web-to-payments", "Delegate", []string{"web"}, []string{"payments"}),
				mkRule("ops-anywhere", "Allow", []string{"ops"}, []string{"*"}, port("TCP", 22), port("UDP", 161, 162)),
				mkRule("no-partners-to-payments", "Deny", []string{"partners"}, []string{"payments"}),
				mkRule("partners-to-web", "Allow", []string{"partners"}, []string{"web"}, port("TCP", 443), port("SCTP", 3868)),
				mkRule("web-internal", "Allow", []string{"web"}, []string{"web"}),
			),
			mkPolicy("staged-lockdown", 20, "Monitor",
				mkRule("no-web-to-unzoned", "Deny", []string{"web"}, []string{"unzoned"}),
				mkRule("no-ops-to-web-http", "Deny", []string{"ops"}, []string{"web"}, port("TCP", 8000, 8100)),
				mkRule("no-unzoned-to-ops", "Deny", []string{"unzoned"}, []string{"ops"}),
			),
		},
		ServiceDependencies: []v1alpha1.ServiceDependency{
			mkSD("shop", "checkout", map[string]string{"app": "checkout"},
				depService("payments-api", "pay", "payments", port("TCP", 8443)),
				depWorkload("cache", "shop", map[string]string{"app": "redis"}, port("TCP", 6379)),
				depCIDR("card-network", "203.0.113.0/25", port("TCP", 443)),
			),
			mkSD("web", "frontend", map[string]string{"app": "frontend"},
				depWorkload("checkout", "shop", map[string]string{"app": "checkout"}, port("TCP", 8080)),
			),
		},
		Namespaces: []Namespace{
			{Name: "web", Labels: map[string]string{"segment": "web"}},
			{Name: "shop", Labels: map[string]string{"segment": "web"}},
			{Name: "pay", Labels: map[string]string{"segment": "payments"}},
			{Name: "ops", Labels: map[string]string{"segment": "ops"}},
		},
		Endpoints: []Endpoint{
			ep("web", "frontend", "frontend", "10.0.1.10"),
			ep("shop", "checkout", "checkout", "10.0.2.10"),
			ep("shop", "redis", "redis", "10.0.2.20"),
			ep("pay", "payments", "payments", "10.0.3.10"),
			ep("pay", "vault", "vault", "10.0.3.20"),
			ep("ops", "monitoring", "monitoring", "10.0.4.10"),
			ep("misc", "legacy", "legacy", "10.0.5.10"),
		},
		Services: []Service{
			{Namespace: "pay", Name: "payments", Selector: map[string]string{"app": "payments"}},
		},
	}
}
