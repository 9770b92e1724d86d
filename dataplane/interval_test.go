package dataplane

import (
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"slices"
	"testing"

	"github.com/netseg/netseg/api/segment"
)

// randomMembers draws a set's prefixes: mostly pod addresses (/32, /128)
// from a small pool, sometimes a network that covers some of them, in
// sorted order or not.
func randomMembers(r *rand.Rand) []netip.Prefix {
	var ps []netip.Prefix
	for i := 0; i < 40; i++ {
		if r.Intn(3) == 0 {
			continue
		}
		if r.Intn(2) == 0 {
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, byte(i / 16), byte(i)}), 32))
		} else {
			ps = append(ps, netip.PrefixFrom(netip.AddrFrom16([16]byte{0: 0xfd, 15: byte(i)}), 128))
		}
	}
	switch r.Intn(6) {
	case 0: // a network around some members: they merge
		ps = append(ps, netip.MustParsePrefix("10.1.0.0/28"))
	case 1: // a network beside them
		ps = append(ps, netip.MustParsePrefix("10.9.0.0/16"))
	case 2: // a duplicate
		if len(ps) > 0 {
			ps = append(ps, ps[0])
		}
	case 3: // a v4-mapped address
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom16([16]byte{10: 0xff, 11: 0xff, 12: 10, 13: 1, 14: 0, 15: 77}), 128))
	}
	if r.Intn(4) != 0 {
		slices.SortFunc(ps, func(a, b netip.Prefix) int {
			if c := a.Addr().Compare(b.Addr()); c != 0 {
				return c
			}
			return a.Bits() - b.Bits()
		})
	}
	return ps
}

// TestDerivedSetsMatchFreshRender renders 500 random changes of a node's
// endpoints, peer sets and managed prefixes, each from the previous
// rendering (derived sets, maps reused from earlier renderings): every set
// and map holds exactly what a render from nothing gives, every chain is
// the same, and each derived set's delta is exactly the difference a full
// comparison finds.
func TestDerivedSetsMatchFreshRender(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	cfg := Config{}.Defaults()
	var prev *state
	derived, derivedGuard := 0, 0
	for step := 0; step < 500; step++ {
		rs := &Ruleset{Managed: randomMembers(r)}
		for i := 0; i < 30; i++ { // endpoints come and go, and change address
			if r.Intn(3) != 0 {
				ip := netip.AddrFrom4([4]byte{10, 2, 0, byte(i + r.Intn(2)*100)})
				rs.Endpoints = append(rs.Endpoints, Endpoint{ID: fmt.Sprintf("ep%d/eth0", i), IPs: []netip.Addr{ip},
					Egress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: 1}}}, Ingress: Policy{Enforced: []Rule{{Action: segment.Action(1 + r.Intn(2)), Origin: 2}}}})
			}
		}
		for _, name := range []string{"zone/a", "zone/b", "dep/x"} {
			if r.Intn(5) != 0 || prev == nil {
				rs.Sets = append(rs.Sets, Set{Name: name, Prefixes: randomMembers(r)})
			} else {
				rs.Sets = append(rs.Sets, Set{Name: name, Prefixes: prev.inputs[name]})
			}
		}
		before := map[string]map[elemKey]elemSpec{} // render takes over derived sets' maps
		var beforeGuard []map[elemKey]elemSpec
		if prev != nil {
			for name, s := range prev.sets {
				before[name] = maps.Clone(s.elems)
			}
			for _, s := range prev.guard {
				beforeGuard = append(beforeGuard, maps.Clone(s.elems))
			}
		}
		got, err := render(cfg, rs, prev)
		if err != nil {
			t.Fatal(err)
		}
		fresh, err := render(cfg, rs, nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, want := range fresh.sets {
			s := got.sets[name]
			if s == nil || !maps.Equal(s.elems, want.elems) {
				t.Fatalf("step %d: set %s differs from a fresh render:\n got %v\nwant %v", step, name, s, want.elems)
			}
			if s.delta == nil {
				continue
			}
			derived++
			if s.delta.from != prev.sets[name] {
				t.Fatalf("step %d: set %s derived from another rendering", step, name)
			}
			add, del := changed(before[name], s.elems)
			if !slices.Equal(add, s.delta.add) || !slices.Equal(del, s.delta.del) {
				t.Fatalf("step %d: set %s delta +%v -%v, want +%v -%v", step, name, s.delta.add, s.delta.del, add, del)
			}
		}
		// The bridge guard's sets likewise.
		for i, want := range fresh.guard {
			s := got.guard[i]
			if !maps.Equal(s.elems, want.elems) {
				t.Fatalf("step %d: guard set %s differs from a fresh render:\n got %v\nwant %v", step, want.name, s.elems, want.elems)
			}
			if s.delta == nil {
				continue
			}
			derivedGuard++
			add, del := changed(beforeGuard[i], s.elems)
			if s.delta.from != prev.guard[i] || !slices.Equal(add, s.delta.add) || !slices.Equal(del, s.delta.del) {
				t.Fatalf("step %d: guard set %s delta +%v -%v, want +%v -%v", step, s.name, s.delta.add, s.delta.del, add, del)
			}
		}
		if len(got.chains) != len(fresh.chains) {
			t.Fatalf("step %d: %d chains, a fresh render has %d", step, len(got.chains), len(fresh.chains))
		}
		for name, c := range fresh.chains {
			if got.chains[name] == nil || got.chains[name].hash != c.hash {
				t.Fatalf("step %d: chain %s differs from a fresh render", step, name)
			}
		}
		if !maps.EqualFunc(got.endpointChains, fresh.endpointChains, slices.Equal) || !maps.Equal(got.epNames, fresh.epNames) {
			t.Fatalf("step %d: endpoint chains differ from a fresh render", step)
		}
		for _, s := range got.sets {
			s.delta = nil // as Sync does once applied
		}
		for _, s := range got.guard {
			s.delta = nil
		}
		prev = got
	}
	if derived < 100 || derivedGuard < 50 {
		t.Fatalf("only %d sets and %d guard sets were derived: the shortcut is not exercised", derived, derivedGuard)
	}
	t.Logf("%d sets derived", derived)
}

// TestBaseChainsFollowConfig: base chains are reused from the previous
// rendering only under the same config.
func TestBaseChainsFollowConfig(t *testing.T) {
	rs := &Ruleset{}
	cfg := Config{}.Defaults()
	prev, err := render(cfg, rs, nil)
	if err != nil {
		t.Fatal(err)
	}
	other := cfg
	other.DenyHostAccess = true
	got, err := render(other, rs, prev)
	if err != nil {
		t.Fatal(err)
	}
	fresh, _ := render(other, rs, nil)
	for _, bc := range baseChains {
		if got.chains[bc.name].hash != fresh.chains[bc.name].hash {
			t.Errorf("chain %s rendered for the previous config", bc.name)
		}
	}
	if got.chains[chainOutput].hash == prev.chains[chainOutput].hash {
		t.Error("the output chain does not depend on DenyHostAccess")
	}
}

// changed is what a set gained and lost from before to after, sorted.
func changed(before, after map[elemKey]elemSpec) (add, del []elemKey) {
	for k := range before {
		if _, ok := after[k]; !ok {
			del = append(del, k)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			add = append(add, k)
		}
	}
	slices.SortFunc(add, elemKey.compare)
	slices.SortFunc(del, elemKey.compare)
	return add, del
}
