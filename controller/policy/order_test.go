package policy_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

func shuffled(in policy.Input, r *rand.Rand) policy.Input {
	out := in
	out.Zones = shuffle(in.Zones, r)
	out.ZonePolicies = shuffle(in.ZonePolicies, r)
	out.ServiceDependencies = shuffle(in.ServiceDependencies, r)
	out.Namespaces = shuffle(in.Namespaces, r)
	out.Endpoints = shuffle(in.Endpoints, r)
	out.Services = shuffle(in.Services, r)
	return out
}

// shuffle returns xs in random order with some elements repeated.
func shuffle[T any](xs []T, r *rand.Rand) []T {
	out := append([]T(nil), xs...)
	for _, x := range xs {
		if r.IntN(3) == 0 {
			out = append(out, x)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// incremental applies in to a model as a stream of updates: stale
// versions and strays first, then deletes and the final objects.
func incremental(in policy.Input, r *rand.Rand) *policy.Compiled {
	m := policy.NewModel(in.Config)
	m.UpsertZone(policytest.Zone("stray", 1, "Allow", "", nil, "192.0.2.0/24"))
	m.UpsertZonePolicy(policytest.ZonePolicy("stray", 1, "", policytest.Rule("all", "Deny", []string{"*"}, []string{"*"})))
	m.UpsertServiceDependency(policytest.ServiceDependency("n0", "stray", nil, policytest.DepCIDR("all", "0.0.0.0/0")))
	m.UpsertEndpoint(policytest.Endpoint("n9", "stray", "x", "10.9.9.9"))
	m.UpsertNamespace(policy.Namespace{Name: "n0", Labels: map[string]string{"stray": "yes"}})
	m.UpsertService(policy.Service{Namespace: "n0", Name: "svc"})
	for _, e := range in.Endpoints {
		stale := e
		stale.IPs = []netip.Addr{netip.MustParseAddr("10.8.8.8")}
		m.UpsertEndpoint(stale)
	}
	m.DeleteZone("stray")
	m.DeleteZonePolicy("stray")
	m.DeleteServiceDependency("n0", "stray")
	m.DeleteEndpoint("n9", "stray")
	m.DeleteNamespace("n0")
	m.DeleteService("n0", "svc")
	type op func()
	var ops []op
	for _, z := range in.Zones {
		ops = append(ops, func() { m.UpsertZone(z) })
	}
	for _, p := range in.ZonePolicies {
		ops = append(ops, func() { m.UpsertZonePolicy(p) })
	}
	for _, d := range in.ServiceDependencies {
		ops = append(ops, func() { m.UpsertServiceDependency(d) })
	}
	for _, n := range in.Namespaces {
		ops = append(ops, func() { m.UpsertNamespace(n) })
	}
	for _, e := range in.Endpoints {
		ops = append(ops, func() { m.UpsertEndpoint(e) })
	}
	for _, s := range in.Services {
		ops = append(ops, func() { m.UpsertService(s) })
	}
	r.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	for i, o := range ops {
		o()
		if i%3 == 0 {
			m.Compile() // compiling midway must not disturb the model
		}
	}
	return m.Compile()
}

func TestOrderIndependence(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	inputs := []policy.Input{policytest.Shop()}
	for range 100 {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		inputs = append(inputs, policytest.Gen(b))
	}
	opt := cmp.Options{cmpopts.IgnoreUnexported(policy.Compiled{}), cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})}
	for i, in := range inputs {
		want := policy.Compile(in)
		for k := range 3 {
			name := fmt.Sprintf("input %d try %d", i, k)
			if diff := cmp.Diff(want, policy.Compile(shuffled(in, r)), opt); diff != "" {
				t.Fatalf("%s: shuffled with duplicates (-want +got):\n%s", name, diff)
			}
			got := incremental(in, r)
			if diff := cmp.Diff(want, got, opt); diff != "" {
				t.Fatalf("%s: incremental (-want +got):\n%s", name, diff)
			}
			// The hidden model must agree too: compare decisions.
			for _, e := range want.Endpoints {
				for _, a := range policytest.ProbeAddrs {
					p := policy.AddrPeer(netip.MustParseAddr(a))
					self := policy.Peer{Namespace: e.Namespace, Name: e.Name}
					if d1, d2 := want.Decide(self, p, 80, segment.TCP), got.Decide(self, p, 80, segment.TCP); d1 != d2 {
						t.Fatalf("%s: Decide(%v, %v) = %+v, incremental %+v", name, self, p, d1, d2)
					}
				}
			}
		}
	}
}

func TestOriginIDs(t *testing.T) {
	c := policy.Compile(policytest.Shop())
	if _, ok := c.Origin(0); ok {
		t.Error("id 0 must be none")
	}
	for id := 1; id < len(c.Origins); id++ {
		o, ok := c.Origin(uint16(id))
		if !ok || o.ID != uint16(id) {
			t.Fatalf("Origin(%d) = %+v, %v", id, o, ok)
		}
	}
	want := []string{"none", "ZonePolicy perimeter rule web-to-payments", "ZonePolicy perimeter rule ops-anywhere"}
	var got []string
	for _, o := range c.Origins[:3] {
		got = append(got, o.String())
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("first origins (-want +got):\n%s", diff)
	}
	// zone defaults are all pairs of 5 zones and unzoned.
	n := 0
	for _, o := range c.Origins {
		if o.Kind == segment.OriginZoneDefault {
			n++
		}
	}
	if n != 36 {
		t.Errorf("%d zone default origins, want 36", n)
	}
	_ = v1alpha1.GroupVersion
}
