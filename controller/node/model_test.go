package node

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

// TestCompileModelMatchesCompile: the agent's kept model, fed one random
// change of the node's endpoints at a time (add, relabel, readdress,
// remove; some sharing a name with an endpoint of another node), compiles
// what policy.Compile compiles from scratch, and a new generation starts
// over.
func TestCompileModelMatchesCompile(t *testing.T) {
	pol, err := policyfile.Load("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	in := pol.Input(policy.Config{}, nil, nil)
	remote := policy.Endpoint{Namespace: "shop", Name: "shared-name", Labels: map[string]string{"app": "frontend"},
		IPs: []netip.Addr{netip.MustParseAddr("10.99.0.1")}}
	in.Endpoints = append(in.Endpoints, remote)
	snap := Snapshot{Input: in, Valid: true, Generation: 1}
	cfg := policy.Config{UnzonedDefault: segment.Allow}
	apps := []string{"checkout", "payments", "frontend", "cache", "other"}
	namespaces := []string{"shop", "pay", "web"}
	r := rand.New(rand.NewPCG(1, 2))
	local := map[string]policy.Endpoint{}
	var c compileModel
	opt := cmp.Options{cmpopts.IgnoreUnexported(policy.Compiled{}), cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})}
	for step := 0; step < 300; step++ {
		name := fmt.Sprintf("pod-%d", r.IntN(12))
		if r.IntN(10) == 0 {
			name = "shared-name"
		}
		switch ns := namespaces[r.IntN(len(namespaces))]; r.IntN(4) {
		case 0:
			delete(local, ns+"/"+name)
		default:
			local[ns+"/"+name] = policy.Endpoint{Namespace: ns, Name: name, Labels: map[string]string{"app": apps[r.IntN(len(apps))]},
				IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 88, byte(r.IntN(4)), byte(1 + r.IntN(200))})}}
		}
		if step == 150 {
			snap.Input.Endpoints = snap.Input.Endpoints[:len(snap.Input.Endpoints)-1] // the other node's pod went
			snap.Generation++
		}
		var eps []policy.Endpoint
		for _, e := range local {
			eps = append(eps, e)
		}
		want := snap.Input
		want.Config = cfg
		want.Endpoints = append(append([]policy.Endpoint(nil), want.Endpoints...), eps...)
		if diff := cmp.Diff(policy.Compile(want), c.compile(snap, cfg, eps), opt); diff != "" {
			t.Fatalf("step %d: kept model differs from a fresh compile (-fresh +kept):\n%s", step, diff)
		}
	}
}
