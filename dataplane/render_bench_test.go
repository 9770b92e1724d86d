package dataplane

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/netseg/netseg/api/segment"
)

// renderWorld: n endpoints in 50 workloads sharing 20-rule egress lists
// (the shape of a node's pods), each workload a peer set.
func renderWorld(n int) *Ruleset {
	rs := &Ruleset{}
	const workloads = 50
	var lists [workloads]Policy
	for w := 0; w < workloads; w++ {
		var eg []Rule
		for r := 0; r < 20; r++ {
			eg = append(eg, Rule{Peer: fmt.Sprintf("workload/%d", (w+r)%workloads),
				Ports: []segment.PortRange{{Protocol: segment.TCP, First: uint16(1000 + r), Last: uint16(1000 + r)}}, Action: segment.Action(1 + r%2), Origin: uint16(1 + r)})
		}
		lists[w] = Policy{Enforced: eg}
	}
	ingress := Policy{Enforced: []Rule{{Action: segment.Allow, Origin: 999}}}
	members := make([][]netip.Prefix, workloads)
	for i := 0; i < n; i++ {
		ip := netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)})
		members[i%workloads] = append(members[i%workloads], netip.PrefixFrom(ip, 32))
		rs.Endpoints = append(rs.Endpoints, Endpoint{ID: fmt.Sprintf("ep%d/eth0", i), IPs: []netip.Addr{ip}, Egress: lists[i%workloads], Ingress: ingress})
		rs.Managed = append(rs.Managed, netip.PrefixFrom(ip, 32))
	}
	for w := 0; w < workloads; w++ {
		rs.Sets = append(rs.Sets, Set{Name: fmt.Sprintf("workload/%d", w), Prefixes: members[w]})
	}
	return rs
}

// BenchmarkRenderAdd renders a node of 1,000 endpoints after one more
// joined (the agent's work for a CNI ADD, before the kernel).
func BenchmarkRenderAdd(b *testing.B) {
	before, after := renderWorld(1000), renderWorld(1001)
	cfg := Config{}.Defaults()
	b.ReportAllocs()
	for range b.N {
		// A rendering is the memo of one render only: each round starts
		// from a fresh one, untimed.
		b.StopTimer()
		prev, err := render(cfg, before, nil)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if _, err := render(cfg, after, prev); err != nil {
			b.Fatal(err)
		}
	}
}
