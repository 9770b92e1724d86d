package dataplane

import (
	"net/netip"
	"strings"
	"testing"
)

// TestRenderRefusesNameCollision: two peers whose names clean to one kernel
// name ("a/b" becomes p_a_b_<hash>, and a peer can be named exactly that)
// fail the render instead of sharing a set.
func TestRenderRefusesNameCollision(t *testing.T) {
	crafted := strings.TrimPrefix(peerSetNames("a/b")[4], prefixPeer)
	crafted = strings.TrimSuffix(crafted, "_4")
	if peerSetNames(crafted) != peerSetNames("a/b") {
		t.Fatalf("the crafted peer %q does not collide with a/b: %v, %v", crafted, peerSetNames(crafted), peerSetNames("a/b"))
	}
	rs := &Ruleset{Sets: []Set{
		{Name: "a/b", Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}},
		{Name: crafted, Prefixes: []netip.Prefix{netip.MustParsePrefix("10.0.0.2/32")}},
	}}
	_, err := render(Config{}.Defaults(), rs, nil)
	if err == nil || !strings.Contains(err.Error(), "kernel name collision") {
		t.Fatalf("render = %v, want a kernel name collision", err)
	}
	// A fixed set's name is taken too.
	rs = &Ruleset{Sets: []Set{{Name: "x"}}}
	st, err := render(Config{}.Defaults(), rs, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, fs := range append(fixedSets, setManaged) {
		for _, fam := range []int{4, 6} {
			if st.sets[fs.name(fam)] == nil {
				t.Errorf("fixed set %s not rendered", fs.name(fam))
			}
		}
	}
}

// TestSpoofChainCollision: two devices whose names clean to one chain name
// fail the render.
func TestSpoofChainCollision(t *testing.T) {
	crafted := strings.TrimPrefix(spoofChainName("veth-a.1"), prefixSpoof)
	ep := func(id, dev, ip string) Endpoint {
		return Endpoint{ID: id, HostIface: dev, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	rs := &Ruleset{Endpoints: []Endpoint{ep("c1/eth0", "veth-a.1", "10.0.0.1"), ep("c2/eth0", crafted, "10.0.0.2")}}
	if _, err := render(Config{}.Defaults(), rs, nil); err == nil || !strings.Contains(err.Error(), "kernel name collision") {
		t.Fatalf("render = %v, want a kernel name collision", err)
	}
}
