package policy_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

// perimeterShop is the shop with dependencies that try to open the
// payments and lab zones from outside: ops declares the payments API and
// the lab network, and pay declares its own API for the vault.
func perimeterShop(payments, lab v1alpha1.Admission) policy.Input {
	in := policytest.Shop()
	for i := range in.Zones {
		switch in.Zones[i].Name {
		case "payments":
			in.Zones[i].Spec.AdmitDependencies = payments
		case "lab":
			in.Zones[i].Spec.AdmitDependencies = lab
		}
	}
	in.ServiceDependencies = append(in.ServiceDependencies,
		policytest.ServiceDependency("ops", "monitoring", map[string]string{"app": "monitoring"},
			policytest.DepWorkload("payments-api", "pay", map[string]string{"app": "payments"}, policytest.Port("TCP", 8443)),
			policytest.DepCIDR("lab-http", "198.51.100.0/24", policytest.Port("TCP", 80))),
		policytest.ServiceDependency("pay", "vault", map[string]string{"app": "vault"},
			policytest.DepWorkload("payments-api", "pay", map[string]string{"app": "payments"}, policytest.Port("TCP", 8443))))
	return in
}

func TestDecidePerimeter(t *testing.T) {
	type probe struct {
		name     string
		src, dst policy.Peer
		port     uint16
	}
	probes := []probe{
		{"other namespace's dependency", epPeer("ops", "monitoring"), epPeer("pay", "payments"), 8443},
		{"delegated to a dependency", epPeer("shop", "checkout"), epPeer("pay", "payments"), 8443},
		{"the zone's own namespace", epPeer("pay", "vault"), epPeer("pay", "payments"), 8443},
		{"no dependency at all", epPeer("ops", "monitoring"), epPeer("pay", "payments"), 9000},
		{"a zone policy rule still decides", epPeer("ops", "monitoring"), epPeer("pay", "payments"), 22},
		{"a monitor-mode perimeter stages", epPeer("ops", "monitoring"), addr("198.51.100.7"), 80},
		{"an address has no namespace", addr("192.0.2.1"), epPeer("pay", "payments"), 8443},
	}
	tests := []struct {
		name          string
		payments, lab v1alpha1.Admission
		want          []outcome
		warnings      []string
	}{
		{"Any, the default", "", "", []outcome{
			{segment.Allowed, true, "ServiceDependency ops/monitoring entry payments-api", "ops", "payments"},
			{segment.Allowed, true, "ServiceDependency shop/checkout entry payments-api", "web", "payments"},
			{segment.Allowed, true, "ServiceDependency pay/vault entry payments-api", "payments", "payments"},
			{segment.Denied, false, "ZoneDefault ops -> payments", "ops", "payments"},
			{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "payments"},
			{segment.Allowed, true, "ServiceDependency ops/monitoring entry lab-http", "ops", "lab"},
			{segment.Denied, false, "ZoneDefault unzoned -> payments", "unzoned", "payments"},
		}, nil},
		{"ZoneNamespaces", v1alpha1.AdmitZoneNamespaces, v1alpha1.AdmitZoneNamespaces, []outcome{
			{segment.Denied, false, "ZonePerimeter ops -> payments", "ops", "payments"},
			{segment.Denied, false, "ZonePerimeter web -> payments", "web", "payments"},
			{segment.Allowed, true, "ServiceDependency pay/vault entry payments-api", "payments", "payments"},
			{segment.Denied, false, "ZonePerimeter ops -> payments", "ops", "payments"},
			{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "payments"},
			{segment.WouldDeny, false, "ZonePerimeter ops -> lab", "ops", "lab"},
			{segment.Denied, false, "ZoneDefault unzoned -> payments", "unzoned", "payments"},
		}, []string{
			"ServiceDependency ops/monitoring: spec.dependsOn[0]: entry payments-api reaches zone payments, which does not admit dependencies from namespace ops (spec.admitDependencies); only a ZonePolicy rule can open it",
			"ServiceDependency ops/monitoring: spec.dependsOn[1]: entry lab-http reaches zone lab, which does not admit dependencies from namespace ops (spec.admitDependencies); only a ZonePolicy rule can open it",
			"ServiceDependency shop/checkout: spec.dependsOn[0]: entry payments-api reaches zone payments, which does not admit dependencies from namespace shop (spec.admitDependencies); only a ZonePolicy rule can open it",
		}},
		{"None", v1alpha1.AdmitNone, v1alpha1.AdmitAny, []outcome{
			{segment.Denied, false, "ZonePerimeter ops -> payments", "ops", "payments"},
			{segment.Denied, false, "ZonePerimeter web -> payments", "web", "payments"},
			{segment.Denied, false, "ZonePerimeter payments -> payments", "payments", "payments"},
			{segment.Denied, false, "ZonePerimeter ops -> payments", "ops", "payments"},
			{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "payments"},
			{segment.Allowed, true, "ServiceDependency ops/monitoring entry lab-http", "ops", "lab"},
			{segment.Denied, false, "ZoneDefault unzoned -> payments", "unzoned", "payments"},
		}, []string{
			"ServiceDependency ops/monitoring: spec.dependsOn[0]: entry payments-api reaches zone payments, which does not admit dependencies from namespace ops (spec.admitDependencies); only a ZonePolicy rule can open it",
			"ServiceDependency pay/vault: spec.dependsOn[0]: entry payments-api reaches zone payments, which does not admit dependencies from namespace pay (spec.admitDependencies); only a ZonePolicy rule can open it",
			"ServiceDependency shop/checkout: spec.dependsOn[0]: entry payments-api reaches zone payments, which does not admit dependencies from namespace shop (spec.admitDependencies); only a ZonePolicy rule can open it",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := perimeterShop(tc.payments, tc.lab)
			c := policy.Compile(in)
			if len(c.Errors) > 0 {
				t.Fatalf("errors: %v", c.Errors)
			}
			for i, p := range probes {
				got := summary(c.Decide(p.src, p.dst, p.port, segment.TCP))
				if diff := cmp.Diff(tc.want[i], got); diff != "" {
					t.Errorf("%s: Decide(%v, %v, %d) (-want +got):\n%s", p.name, p.src, p.dst, p.port, diff)
				}
			}
			var warned []string
			for _, w := range c.Warnings {
				if w.Kind == "ServiceDependency" {
					warned = append(warned, w.String())
				}
			}
			if diff := cmp.Diff(tc.warnings, warned); diff != "" {
				t.Errorf("warnings (-want +got):\n%s", diff)
			}
			// The kernel's rule lists decide the same, origins included.
			if bad := checkTracer(c, in); len(bad) > 0 {
				t.Errorf("rule lists disagree with Decide:\n%s", strings.Join(bad, "\n"))
			}
		})
	}
}

func TestPerimeterProblems(t *testing.T) {
	in := policytest.Shop()
	in.Zones[3].Spec.AdmitDependencies = v1alpha1.AdmitZoneNamespaces // partners: a CIDR zone
	in.Zones[4].Spec.AdmitDependencies = "Nobody"
	c := policy.Compile(in)
	var got []string
	for _, p := range append(c.Errors, c.Warnings...) {
		if p.Field == "spec.admitDependencies" {
			got = append(got, p.String())
		}
	}
	want := []string{
		`Zone lab: spec.admitDependencies: must be Any, ZoneNamespaces or None, not "Nobody"; using None`,
		"Zone partners: spec.admitDependencies: ZoneNamespaces without a namespaceSelector admits no namespace's dependencies, as None does",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}
