package policy_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

type outcome struct {
	Verdict          segment.Verdict
	Expected         bool
	Origin           string
	SrcZone, DstZone string
}

func summary(d policy.Decision) outcome {
	return outcome{d.Verdict, d.Expected, d.Origin.String(), d.SrcZone, d.DstZone}
}

func epPeer(ns, name string) policy.Peer { return policy.Peer{Namespace: ns, Name: name} }

func addr(s string) policy.Peer { return policy.AddrPeer(netip.MustParseAddr(s)) }

func TestDecide(t *testing.T) {
	tests := []struct {
		name     string
		unzoned  segment.Action
		src, dst policy.Peer
		port     uint16
		proto    segment.Protocol
		want     outcome
	}{
		{"policy allow", 0, epPeer("ops", "monitoring"), epPeer("web", "frontend"), 22, segment.TCP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "web"}},
		{"policy allow in udp port range", 0, epPeer("ops", "monitoring"), epPeer("pay", "payments"), 162, segment.UDP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "payments"}},
		{"port past the range falls to the defaults", 0, epPeer("ops", "monitoring"), epPeer("pay", "payments"), 163, segment.UDP,
			outcome{segment.Denied, false, "ZoneDefault ops -> payments", "ops", "payments"}},
		{"same port, other protocol", 0, epPeer("ops", "monitoring"), epPeer("pay", "payments"), 161, segment.TCP,
			outcome{segment.Denied, false, "ZoneDefault ops -> payments", "ops", "payments"}},
		{"policy deny from a cidr zone", 0, addr("203.0.113.5"), epPeer("pay", "payments"), 443, segment.TCP,
			outcome{segment.Denied, false, "ZonePolicy perimeter rule no-partners-to-payments", "partners", "payments"}},
		{"sctp", 0, addr("203.0.113.200"), epPeer("web", "frontend"), 3868, segment.SCTP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule partners-to-web", "partners", "web"}},
		{"icmp never matches a rule with ports", 0, addr("203.0.113.200"), epPeer("web", "frontend"), 0, segment.ICMP,
			outcome{segment.Denied, false, "ZoneDefault partners -> web", "partners", "web"}},
		{"icmp matches a rule without ports", 0, epPeer("shop", "redis"), epPeer("web", "frontend"), 0, segment.ICMP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule web-internal", "web", "web"}},
		{"delegate to a service dependency", 0, epPeer("shop", "checkout"), epPeer("pay", "payments"), 8443, segment.TCP,
			outcome{segment.Allowed, true, "ServiceDependency shop/checkout entry payments-api", "web", "payments"}},
		{"delegate, no dependency covers it", 0, epPeer("shop", "checkout"), epPeer("pay", "vault"), 8443, segment.TCP,
			outcome{segment.Denied, false, "ZoneDefault web -> payments", "web", "payments"}},
		{"delegate, dependency on another port", 0, epPeer("shop", "checkout"), epPeer("pay", "payments"), 8444, segment.TCP,
			outcome{segment.Denied, false, "ZoneDefault web -> payments", "web", "payments"}},
		{"no rule matches, cidr dependency", 0, epPeer("shop", "checkout"), addr("203.0.113.10"), 443, segment.TCP,
			outcome{segment.Allowed, true, "ServiceDependency shop/checkout entry card-network", "web", "partners"}},
		{"outside the dependency's cidr", 0, epPeer("shop", "checkout"), addr("203.0.113.200"), 443, segment.TCP,
			outcome{segment.Denied, false, "ZoneDefault web -> partners", "web", "partners"}},
		{"monitor policy: would-deny", 0, epPeer("misc", "legacy"), epPeer("ops", "monitoring"), 9090, segment.TCP,
			outcome{segment.WouldDeny, false, "ZonePolicy staged-lockdown rule no-unzoned-to-ops", "unzoned", "ops"}},
		{"monitor zone: would-deny by its default", 0, epPeer("ops", "monitoring"), addr("198.51.100.7"), 80, segment.TCP,
			outcome{segment.WouldDeny, false, "ZoneDefault ops -> lab", "ops", "lab"}},
		{"allowed by default is unexpected", 0, epPeer("ops", "monitoring"), epPeer("misc", "legacy"), 80, segment.TCP,
			outcome{segment.Allowed, false, "ZoneDefault ops -> unzoned", "ops", "unzoned"}},
		{"unzoned to an address in no zone", 0, epPeer("misc", "legacy"), addr("192.0.2.1"), 80, segment.UDP,
			outcome{segment.Allowed, false, "ZoneDefault unzoned -> unzoned", "unzoned", "unzoned"}},
		{"unzoned default deny", segment.Deny, epPeer("misc", "legacy"), addr("192.0.2.1"), 80, segment.UDP,
			outcome{segment.Denied, false, "ZoneDefault unzoned -> unzoned", "unzoned", "unzoned"}},
		{"star matches an address in no zone", 0, epPeer("ops", "monitoring"), addr("192.0.2.1"), 22, segment.TCP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "unzoned"}},
		{"star matches a cidr zone", 0, epPeer("ops", "monitoring"), addr("203.0.113.9"), 22, segment.TCP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule ops-anywhere", "ops", "partners"}},
		{"bare address of an endpoint is that endpoint", 0, addr("10.0.2.10"), addr("10.0.3.10"), 8443, segment.TCP,
			outcome{segment.Allowed, true, "ServiceDependency shop/checkout entry payments-api", "web", "payments"}},
		{"endpoint given by labels", 0, policy.Peer{Namespace: "shop", Name: "checkout-2", Labels: map[string]string{"app": "checkout"}},
			epPeer("pay", "payments"), 8443, segment.TCP,
			outcome{segment.Allowed, true, "ServiceDependency shop/checkout entry payments-api", "web", "payments"}},
		{"workload dependency within a zone rule", 0, epPeer("web", "frontend"), epPeer("shop", "checkout"), 8080, segment.TCP,
			outcome{segment.Allowed, true, "ZonePolicy perimeter rule web-internal", "web", "web"}},
		{"no dependency from an address", 0, addr("192.0.2.1"), epPeer("pay", "payments"), 8443, segment.TCP,
			outcome{segment.Denied, false, "ZoneDefault unzoned -> payments", "unzoned", "payments"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := policytest.Shop()
			in.Config.UnzonedDefault = tc.unzoned
			c := policy.Compile(in)
			if len(c.Errors) > 0 {
				t.Fatalf("errors: %v", c.Errors)
			}
			got := summary(c.Decide(tc.src, tc.dst, tc.port, tc.proto))
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Decide(%v, %v, %d/%s) (-want +got):\n%s", tc.src, tc.dst, tc.port, tc.proto, diff)
			}
		})
	}
}

// TestDecideDelegateStops checks that a Delegate match skips later
// ZonePolicy rules, and that Monitor policies only stage.
func TestDecideDelegateStops(t *testing.T) {
	in := policytest.Shop()
	in.ZonePolicies = append(in.ZonePolicies,
		policytest.ZonePolicy("late", 90, "", policytest.Rule("web-to-payments-all", "Allow", []string{"web"}, []string{"payments"})),
		policytest.ZonePolicy("staged-allow", 5, "Monitor", policytest.Rule("staged-web-to-vault", "Deny", []string{"web"}, []string{"payments"}, policytest.Port("TCP", 8443))))
	c := policy.Compile(in)
	got := summary(c.Decide(epPeer("shop", "checkout"), epPeer("pay", "vault"), 9000, segment.TCP))
	want := outcome{segment.Denied, false, "ZoneDefault web -> payments", "web", "payments"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delegate (-want +got):\n%s", diff)
	}
	got = summary(c.Decide(epPeer("shop", "checkout"), epPeer("pay", "payments"), 8443, segment.TCP))
	want = outcome{segment.WouldDeny, false, "ZonePolicy staged-allow rule staged-web-to-vault", "web", "payments"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("monitor policy (-want +got):\n%s", diff)
	}
}

func TestZoneMembership(t *testing.T) {
	in := policytest.Shop()
	// tie: same priority as web, selects the shop namespace too.
	z := policytest.Zone("checkout-zone", 100, "Allow", "", nil)
	z.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "checkout"}}
	// lower number wins over web.
	r := policytest.Zone("cache", 90, "Allow", "", nil)
	r.Spec.PodSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"app": "redis"}}
	// overlapping networks: the lower number wins; equal numbers are an error.
	in.Zones = append(in.Zones, z, r,
		policytest.Zone("partners-dmz", 250, "Allow", "", nil, "203.0.113.128/25"),
		policytest.Zone("lab-twin", 310, "Allow", "", nil, "198.51.100.0/26"))
	c := policy.Compile(in)
	var errs []string
	for _, p := range c.Errors {
		errs = append(errs, p.String())
	}
	want := []string{
		"Endpoint shop/checkout: selected by zones checkout-zone and web with the same priority 100; checkout-zone wins by name",
		"Zone lab-twin: spec.priority: zones lab and lab-twin have the same priority 310 and overlapping networks 198.51.100.0/24 and 198.51.100.0/26; lab wins by name",
	}
	if diff := cmp.Diff(want, errs); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	for _, tc := range []struct {
		peer policy.Peer
		zone string
	}{
		{epPeer("shop", "checkout"), "checkout-zone"},
		{epPeer("shop", "redis"), "cache"},
		{addr("203.0.113.200"), "partners-dmz"},
		{addr("203.0.113.1"), "partners"},
		{addr("198.51.100.1"), "lab"},
		{addr("10.0.9.9"), policy.Unzoned},
	} {
		if got := c.Decide(tc.peer, addr("192.0.2.1"), 1, segment.TCP).SrcZone; got != tc.zone {
			t.Errorf("zone of %v = %s, want %s", tc.peer, got, tc.zone)
		}
	}
}

func TestProblems(t *testing.T) {
	in := policytest.Shop()
	in.ZonePolicies = append(in.ZonePolicies, policytest.ZonePolicy("broken", 30, "",
		policytest.Rule("to-nowhere", "Allow", []string{"web"}, []string{"nowhere"}),
		policytest.Rule("shadowed", "Allow", []string{"web"}, []string{"web"}, policytest.Port("TCP", 80)),
		policytest.Rule("bad-ports", "Allow", []string{"web"}, []string{"ops"}, policytest.Port("TCP", 90, 80)),
	))
	in.ServiceDependencies = append(in.ServiceDependencies, policytest.ServiceDependency("shop", "ghost", nil,
		policytest.DepService("missing", "", "nothing"),
		v1alpha1.Dependency{Name: "two-kinds", CIDR: "192.0.2.0/24", Workload: &v1alpha1.WorkloadRef{}}))
	c := policy.Compile(in)
	var errs, warns []string
	for _, p := range c.Errors {
		errs = append(errs, p.String())
	}
	for _, p := range c.Warnings {
		warns = append(warns, p.String())
	}
	wantErrs := []string{
		"ServiceDependency shop/ghost: spec.dependsOn[1]: exactly one of service, workload or cidr must be set",
		"ZonePolicy broken: spec.rules[0].to[0].zone: zone \"nowhere\" does not exist",
		"ZonePolicy broken: spec.rules[2].ports[0].endPort: must be >= port (90) and <= 65535, not 80",
	}
	wantWarns := []string{
		"ServiceDependency shop/ghost: spec.dependsOn[0].service: service shop/nothing not found; the dependency allows nothing until it exists",
		"ZonePolicy broken: spec.rules[1]: rule shadowed is shadowed by rule web-internal of ZonePolicy perimeter, which matches everything it matches first",
	}
	if diff := cmp.Diff(wantErrs, errs); diff != "" {
		t.Errorf("errors (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantWarns, warns); diff != "" {
		t.Errorf("warnings (-want +got):\n%s", diff)
	}
}

// TestZoneOfAddrAgreesWithDecide: the direct zone lookup of an address
// gives the zone the decision resolves it to, for endpoints' addresses and
// bare ones, in random worlds.
func TestZoneOfAddrAgreesWithDecide(t *testing.T) {
	checked, zoned := 0, 0
	for seed := range 300 {
		b := make([]byte, 96)
		for i := range b {
			b[i] = byte(seed*131 + i*17 + seed*i)
		}
		in := policytest.Gen(b)
		c := policy.Compile(in)
		var addrs []netip.Addr
		for _, s := range policytest.ProbeAddrs {
			addrs = append(addrs, netip.MustParseAddr(s))
		}
		for _, e := range in.Endpoints {
			addrs = append(addrs, e.IPs...)
		}
		for _, a := range addrs {
			want := c.Decide(policy.AddrPeer(a), policy.AddrPeer(a), 0, segment.ICMP).SrcZone
			if got := c.ZoneOfAddr(a); got != want {
				t.Fatalf("world %d: ZoneOfAddr(%s) = %q, Decide resolves %q", seed, a, got, want)
			}
			checked++
			if want != policy.Unzoned {
				zoned++
			}
		}
	}
	if zoned == 0 || zoned == checked {
		t.Fatalf("%d of %d addresses zoned: the worlds do not exercise both", zoned, checked)
	}
	t.Logf("%d addresses checked, %d in a zone", checked, zoned)
}
