package node

import (
	"net/netip"
	"testing"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
	"github.com/netseg/netseg/dataplane"
)

// TestDeciderGivesTheKernelsMark: the remark decider gives a connection
// the mark the rules give a new one (the policy's decision, both passes),
// denies everything of a quarantined address, leaves unmarked connections
// alone unless they belong to an adopted fail-open container, and decides
// ICMPv6 as the policy's ICMP.
func TestDeciderGivesTheKernelsMark(t *testing.T) {
	pol, err := policyfile.Load("../../examples")
	if err != nil {
		t.Fatal(err)
	}
	ep := func(ns, name, app, ip string) policy.Endpoint {
		return policy.Endpoint{Namespace: ns, Name: name, Labels: map[string]string{"app": app}, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	checkout, payments, monitoring := ep("shop", "checkout", "checkout", "10.88.0.2"), ep("pay", "payments", "payments", "10.88.0.3"),
		ep("ops", "monitoring", "monitoring", "10.88.0.4")
	eps := []policy.Endpoint{checkout, payments, monitoring}
	in := pol.Input(policy.Config{}, nil, nil)
	in.Endpoints = append(in.Endpoints, eps...)
	c := policy.Compile(in)
	peer := func(e policy.Endpoint) policy.Peer { return policy.Peer(e) }
	want := func(src, dst policy.Endpoint, port uint16, proto segment.Protocol) dataplane.Mark {
		d := c.Decide(peer(src), peer(dst), port, proto)
		return dataplane.MakeMark(d.Enforced.Action, d.Staged.Action, d.Enforced.Origin.ID, d.Staged.Origin.ID)
	}
	ip := func(e policy.Endpoint) netip.Addr { return e.IPs[0] }
	quarantined := map[netip.Addr]bool{}
	adopted := map[netip.Addr]bool{}
	decide := decider(remarkJob{compiled: c, endpoints: eps, quarantined: quarantined, adopted: adopted})
	allowed := want(checkout, payments, 8443, segment.TCP)
	denied := want(monitoring, payments, 8443, segment.TCP)
	if allowed.EnforcedDeny() || !denied.EnforcedDeny() {
		t.Fatalf("examples: checkout -> payments:8443 %#x, monitoring -> payments:8443 %#x: want allowed, denied", allowed, denied)
	}
	for _, tc := range []struct {
		what     string
		old      dataplane.Mark
		src, dst policy.Endpoint
		proto    uint8
		port     uint16
		want     dataplane.Mark
		ok       bool
	}{
		{"allowed stays allowed", allowed, checkout, payments, 6, 8443, allowed, true},
		{"a denied one marked allowed is revoked", allowed, monitoring, payments, 6, 8443, denied, true},
		{"an unmarked connection is not netseg's", 0, monitoring, payments, 6, 8443, 0, false},
		{"ICMPv6 is the policy's ICMP", allowed, monitoring, payments, 58, 0, want(monitoring, payments, 0, segment.ICMP), true},
	} {
		got, ok := decide(tc.old, ip(tc.src), ip(tc.dst), tc.proto, tc.port)
		if ok != tc.ok || ok && got != tc.want {
			t.Errorf("%s: %#x %v, want %#x %v", tc.what, got, ok, tc.want, tc.ok)
		}
	}
	adopted[ip(monitoring)] = true
	if got, ok := decide(0, ip(monitoring), ip(payments), 6, 8443); !ok || got != denied {
		t.Errorf("an adopted container's unmarked connection: %#x %v, want %#x", got, ok, denied)
	}
	quarantined[ip(checkout)] = true
	if got, ok := decide(allowed, ip(payments), ip(checkout), 6, 9090); !ok || !got.EnforcedDeny() {
		t.Errorf("a connection to a quarantined address: %#x %v, want an enforced deny", got, ok)
	}
}
