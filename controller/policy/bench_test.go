package policy_test

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

// benchInput is 1,000 endpoints in 50 namespaces and 10 zones, 200
// ServiceDependencies of 3 entries each, and 20 ZonePolicy rules.
func benchInput() policy.Input {
	var in policy.Input
	for z := range 10 {
		in.Zones = append(in.Zones, policytest.Zone(fmt.Sprintf("zone%d", z), int32(z), "Deny", "", map[string]string{"zone": fmt.Sprint(z)}))
	}
	in.Zones = append(in.Zones, policytest.Zone("external", 50, "Deny", "", nil, "203.0.113.0/24", "198.51.100.0/24"))
	for p := range 2 {
		pol := policytest.ZonePolicy(fmt.Sprintf("policy%d", p), int32(p), "")
		for r := range 10 {
			action := []string{"Allow", "Deny", "Delegate"}[r%3]
			pol.Spec.Rules = append(pol.Spec.Rules, policytest.Rule(fmt.Sprintf("rule%d", r), action,
				[]string{fmt.Sprintf("zone%d", (r+p)%10)}, []string{fmt.Sprintf("zone%d", (r*3+p)%10), "external"},
				policytest.Port("TCP", int32(1000+r), int32(1000+r+p*10))))
		}
		in.ZonePolicies = append(in.ZonePolicies, pol)
	}
	for n := range 50 {
		ns := fmt.Sprintf("ns%d", n)
		in.Namespaces = append(in.Namespaces, policy.Namespace{Name: ns, Labels: map[string]string{"zone": fmt.Sprint(n % 10)}})
		in.Services = append(in.Services, policy.Service{Namespace: ns, Name: "api", Selector: map[string]string{"app": "app0"},
			Ports: []segment.PortRange{{Protocol: segment.TCP, First: 8443, Last: 8443}}})
		for e := range 20 {
			in.Endpoints = append(in.Endpoints, policy.Endpoint{Namespace: ns, Name: fmt.Sprintf("pod%d", e),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", e%10)},
				IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, byte(n), 0, byte(e + 1)})}})
		}
		for s := range 4 {
			sd := policytest.ServiceDependency(ns, fmt.Sprintf("sd%d", s), map[string]string{"app": fmt.Sprintf("app%d", s)},
				policytest.DepService("api", fmt.Sprintf("ns%d", (n+1)%50), "api"),
				v1alpha1.Dependency{Name: "db", Workload: &v1alpha1.WorkloadRef{Namespace: fmt.Sprintf("ns%d", (n+s)%50),
					LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app9"}}}, Ports: []v1alpha1.PortRange{policytest.Port("TCP", 5432)}},
				policytest.DepCIDR("partner", "203.0.113.0/24", policytest.Port("TCP", 443)))
			in.ServiceDependencies = append(in.ServiceDependencies, sd)
		}
	}
	return in
}

func BenchmarkCompile(b *testing.B) {
	in := benchInput()
	c := policy.Compile(in)
	if len(c.Endpoints) != 1000 || len(c.Errors) > 0 {
		b.Fatalf("%d endpoints, errors %v", len(c.Endpoints), c.Errors)
	}
	b.ResetTimer()
	for b.Loop() {
		policy.Compile(in)
	}
}
