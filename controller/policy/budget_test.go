package policy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

// hostileTenant is the shop plus, in namespace tenant, sds
// ServiceDependencies of entries CIDR entries each, whose workload selects
// nothing: valid objects that only take origin ids.
func hostileTenant(sds, entries int) policy.Input {
	in := policytest.Shop()
	for i := range sds {
		var deps []v1alpha1.Dependency
		for j := range entries {
			deps = append(deps, policytest.DepCIDR(fmt.Sprintf("e%d", j), fmt.Sprintf("198.18.%d.%d/32", j/256, j%256), policytest.Port("TCP", 443)))
		}
		in.ServiceDependencies = append(in.ServiceDependencies,
			policytest.ServiceDependency("tenant", fmt.Sprintf("sd%02d", i), map[string]string{"app": "nothing"}, deps...))
	}
	return in
}

// shopDecisions are the shop's decisions between every two endpoints and
// to the probe addresses, without origin ids (a budget may renumber).
func shopDecisions(c *policy.Compiled) []outcome {
	var out []outcome
	var peers []policy.Peer
	for _, e := range policytest.Shop().Endpoints {
		peers = append(peers, epPeer(e.Namespace, e.Name))
	}
	for _, a := range policytest.ProbeAddrs {
		peers = append(peers, addr(a))
	}
	for _, s := range peers {
		for _, d := range peers {
			for _, p := range policytest.Probes {
				out = append(out, summary(c.Decide(s, d, p.Port, p.Proto)))
			}
		}
	}
	return out
}

// TestBudgetsIsolateTenants: the case, 64 ServiceDependencies of
// 256 entries in one namespace (16,384 origin ids, past the 14 bits of a
// conntrack mark), used to give ids past the mark's range to every zone
// default and so quarantine every endpoint. Now the namespace's budget
// takes the first two objects and refuses the rest by name, every other
// namespace decides exactly as without the tenant, the shared origins keep
// their ids, and no id leaves the mark's range.
func TestBudgetsIsolateTenants(t *testing.T) {
	alone := policy.Compile(policytest.Shop())
	c := policy.Compile(hostileTenant(64, 256))
	var refused []string
	for _, p := range c.Errors {
		if p.Namespace != "tenant" || p.Field != "spec.dependsOn" {
			t.Errorf("unexpected error: %s", p)
			continue
		}
		refused = append(refused, p.Name)
	}
	if len(refused) != 62 || refused[0] != "sd02" || refused[61] != "sd63" {
		t.Errorf("refused %d objects (%v...), want sd02..sd63", len(refused), refused[:min(3, len(refused))])
	}
	want := "ServiceDependency tenant/sd02: spec.dependsOn: over the dependency budget of namespace tenant: its 256 entries weigh 256 (one per port range each lists) and would make 768, 256 over the budget of 512 per namespace; not compiled"
	if len(c.Errors) > 0 && c.Errors[0].String() != want {
		t.Errorf("first error:\n got %s\nwant %s", c.Errors[0], want)
	}
	if diff := cmp.Diff(shopDecisions(alone), shopDecisions(c)); diff != "" {
		t.Errorf("the shop decides otherwise beside the tenant (-alone +with tenant):\n%s", diff)
	}
	if n := len(c.Origins) - 1; n > segment.MaxOriginID {
		t.Errorf("%d origins, past the mark's %d", n, segment.MaxOriginID)
	}
	// Shared origins come first: the same ids with or without the tenant.
	shared := slices.IndexFunc(alone.Origins, func(o segment.Origin) bool { return o.Kind == segment.OriginServiceDependency })
	if diff := cmp.Diff(alone.Origins[:shared], c.Origins[:shared]); diff != "" {
		t.Errorf("shared origins renumbered by the tenant (-alone +with tenant):\n%s", diff)
	}
	for _, o := range c.Origins[shared:] {
		if o.Kind != segment.OriginServiceDependency {
			t.Fatalf("origin %d (%s) after the dependency entries", o.ID, o)
		}
	}
}

// TestClusterOriginBudget: with the namespace budget raised past the
// mark's range, the cluster-wide budget refuses what does not fit, by
// name, and everything compiled keeps an id the mark carries.
func TestClusterOriginBudget(t *testing.T) {
	in := hostileTenant(64, 256)
	in.Config.EntryBudget = 1 << 20
	c := policy.Compile(in)
	var refused []string
	for _, p := range c.Errors {
		if !strings.Contains(p.Message, "over the cluster's origin budget") {
			t.Errorf("unexpected error: %s", p)
		}
		refused = append(refused, p.Name)
	}
	if len(refused) == 0 || refused[len(refused)-1] != "sd63" {
		t.Fatalf("refused %v, want the last objects of tenant", refused)
	}
	if n := len(c.Origins) - 1; n > segment.MaxOriginID || n < segment.MaxOriginID-256 {
		t.Errorf("%d origins: want the mark's range (%d) nearly full", n, segment.MaxOriginID)
	}
	for _, o := range c.Origins[1:] {
		if o.ID == 0 {
			t.Fatalf("origin %s has no id", o)
		}
	}
}

// TestBudgetIsPerNamespace: two namespaces at their budget both compile.
func TestBudgetIsPerNamespace(t *testing.T) {
	in := hostileTenant(2, 256)
	for i := range 2 {
		var deps []v1alpha1.Dependency
		for j := range 256 {
			deps = append(deps, policytest.DepCIDR(fmt.Sprintf("e%d", j), fmt.Sprintf("198.19.%d.%d/32", i, j), policytest.Port("TCP", 443)))
		}
		in.ServiceDependencies = append(in.ServiceDependencies, policytest.ServiceDependency("other", fmt.Sprintf("sd%d", i), map[string]string{"app": "x"}, deps...))
	}
	if c := policy.Compile(in); len(c.Errors) > 0 {
		t.Errorf("errors: %v", c.Errors[0])
	}
}

// TestTenantControlledZones: a zone that selects pods by podSelector alone
// is one any namespace's pod can join by its labels; validate and status
// warn when that matters (default Deny, or named by a ZonePolicy Allow).
func TestTenantControlledZones(t *testing.T) {
	in := policytest.Shop()
	deny := policytest.Zone("vault", 40, "Deny", "", nil)
	deny.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "vault"}}
	open := policytest.Zone("metrics", 40, "Allow", "", nil)
	open.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "exporter"}}
	quiet := policytest.Zone("batch", 40, "Allow", "", nil)
	quiet.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "batch"}}
	in.Zones = append(in.Zones, deny, open, quiet)
	in.ZonePolicies = append(in.ZonePolicies, policytest.ZonePolicy("scrape", 30, "",
		policytest.Rule("ops-to-metrics", "Allow", []string{"ops"}, []string{"metrics"}, policytest.Port("TCP", 9100))))
	c := policy.Compile(in)
	var got []string
	for _, w := range c.Warnings {
		if w.Field == "spec.podSelector" {
			got = append(got, w.String())
		}
	}
	want := []string{
		"Zone metrics: spec.podSelector: selects pods by podSelector alone and a ZonePolicy Allow rule names it: any namespace's pod with these labels joins the zone; add a namespaceSelector to keep it to namespaces an admin labels",
		"Zone vault: spec.podSelector: selects pods by podSelector alone and its default is Deny: any namespace's pod with these labels joins the zone; add a namespaceSelector to keep it to namespaces an admin labels",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

// TestBudgetWeighsPortRanges: an entry weighs one per port range it lists,
// since each is a rule per family in every chain the entry reaches. Eight
// entries of "0.0.0.0/0" with 64 ports each fill the default budget of
// 512; a ninth object of one such entry is refused, naming its weight.
func TestBudgetWeighsPortRanges(t *testing.T) {
	var ports []v1alpha1.PortRange
	for k := range 64 {
		ports = append(ports, policytest.Port("TCP", int32(10000+k)))
	}
	in := policytest.Shop()
	var deps []v1alpha1.Dependency
	for j := range 8 {
		deps = append(deps, policytest.DepCIDR(fmt.Sprintf("e%d", j), "0.0.0.0/0", ports...))
	}
	in.ServiceDependencies = append(in.ServiceDependencies,
		policytest.ServiceDependency("tenant", "a-wide", map[string]string{"app": "tenant"}, deps...),
		policytest.ServiceDependency("tenant", "b-one-more", map[string]string{"app": "tenant"}, policytest.DepCIDR("e", "0.0.0.0/0", ports...)))
	c := policy.Compile(in)
	want := "ServiceDependency tenant/b-one-more: spec.dependsOn: over the dependency budget of namespace tenant: its 1 entries weigh 64 (one per port range each lists) and would make 576, 64 over the budget of 512 per namespace; not compiled"
	if len(c.Errors) != 1 || c.Errors[0].String() != want {
		t.Fatalf("errors %v, want one:\n%s", c.Errors, want)
	}
}
