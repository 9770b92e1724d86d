package dataplane_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/e2e/lab"
)

// synthetic builds a ruleset of n endpoints in `workloads` workloads, each
// endpoint with rules egress rules; unique makes every endpoint's policy
// different (one chain each: the worst case).
func synthetic(n, workloads, rules int, unique bool) *dataplane.Ruleset {
	rs := &dataplane.Ruleset{}
	for w := 0; w < workloads; w++ {
		var ps []netip.Prefix
		for i := w; i < n; i += workloads {
			ps = append(ps, netip.PrefixFrom(synthIP(i), 32))
		}
		rs.Sets = append(rs.Sets, dataplane.Set{Name: fmt.Sprintf("workload/%d", w), Prefixes: ps})
	}
	for i := 0; i < n; i++ {
		var eg []dataplane.Rule
		for r := 0; r < rules; r++ {
			port := uint16(1000 + r)
			if unique {
				port = uint16(1000 + (i*rules+r)%60000)
			}
			eg = append(eg, dataplane.Rule{Peer: fmt.Sprintf("workload/%d", (i+r)%workloads),
				Ports:  []segment.PortRange{{Protocol: segment.TCP, First: port, Last: port}},
				Action: segment.Action(1 + r%2), Origin: uint16(1 + r)})
		}
		eg = append(eg, dataplane.Rule{Action: segment.Allow, Origin: 999})
		rs.Endpoints = append(rs.Endpoints, dataplane.Endpoint{
			ID: fmt.Sprintf("ep%d/eth0", i), IPs: []netip.Addr{synthIP(i)},
			Egress:  dataplane.Policy{Enforced: eg},
			Ingress: dataplane.Policy{Enforced: []dataplane.Rule{{Action: segment.Allow, Origin: 999}}},
		})
	}
	return rs
}

// synthIP: 10.100.0.0/16 and up, addresses no test container uses.
func synthIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
}

func benchDataplane(b testing.TB) *dataplane.Dataplane {
	l := lab.New(b)
	node := l.Node("node")
	ns, err := dataplane.OpenNamespace(node.Path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = ns.Close() })
	return dataplane.New(dataplane.Config{}, ns.Dial, ns.LinkExists)
}

// BenchmarkDependencyChange: 1,000 endpoints in 50 workloads with 20 rules
// each; one op adds a dependency (a new peer set with one member and a
// rule for one endpoint) and syncs, then removes it and syncs. It reports
// the time of each; leftovers are collected off the clock, as the agent
// does after a quiet second.
func BenchmarkDependencyChange(b *testing.B) {
	dp := benchDataplane(b)
	rs := synthetic(1000, 50, 20, false)
	if err := dp.Sync(rs); err != nil {
		b.Fatal(err)
	}
	with := withDependency(rs)
	var add, remove time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		if err := dp.Sync(with); err != nil {
			b.Fatal(err)
		}
		mid := time.Now()
		if err := dp.Sync(rs); err != nil {
			b.Fatal(err)
		}
		add, remove = add+mid.Sub(start), remove+time.Since(mid)
		b.StopTimer()
		if err := dp.Collect(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(add.Microseconds())/float64(b.N)/1000, "ms/add")
	b.ReportMetric(float64(remove.Microseconds())/float64(b.N)/1000, "ms/remove")
}

// withDependency gives endpoint 0 a new dependency: a peer set "dep/new"
// (one address) allowed on TCP 7000.
func withDependency(rs *dataplane.Ruleset) *dataplane.Ruleset {
	cp := *rs
	cp.Sets = append(append([]dataplane.Set{}, rs.Sets...), dataplane.Set{Name: "dep/new", Prefixes: []netip.Prefix{netip.PrefixFrom(synthIP(5000), 32)}})
	cp.Endpoints = append([]dataplane.Endpoint{}, rs.Endpoints...)
	ep := cp.Endpoints[0]
	ep.Egress.Enforced = append([]dataplane.Rule{{Peer: "dep/new", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 7000, Last: 7000}}, Action: segment.Allow, Origin: 77}}, ep.Egress.Enforced...)
	cp.Endpoints[0] = ep
	return &cp
}

// BenchmarkFullResync: 1,000 endpoints, 20 rules each, in 50 workloads
// whose endpoints share their policy (the usual shape: 50 policy chains).
func BenchmarkFullResync(b *testing.B) {
	dp := benchDataplane(b)
	rs := synthetic(1000, 50, 20, false)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := dp.Resync(rs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFullResyncDistinct: the worst case, every endpoint's policy
// distinct (1,000 policy chains, about 42,000 kernel rules).
func BenchmarkFullResyncDistinct(b *testing.B) {
	dp := benchDataplane(b)
	rs := synthetic(1000, 50, 20, true)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := dp.Resync(rs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkFirstPacket measures the cost of the ruleset on new
// connections: TCP connections per second between two containers (8
// client workers) with 10 endpoints in the ruleset, then with 10,000, side
// by side in one run, alternating three times. It reports both rates and
// their ratio (large/small); absolute rates depend on the machine.
func BenchmarkFirstPacket(b *testing.B) {
	n := newNode(b, "bridge")
	small := n.withSynthetic(8)
	large := n.withSynthetic(9998)
	srv := n.b.ListenTCP(netip.AddrPortFrom(n.b.IP(4), 8080).String())
	const rounds, per = 3, 3 * time.Second
	var rate [2]float64
	for i := 0; i < b.N; i++ {
		for r := 0; r < rounds; r++ {
			for k, rs := range []*dataplane.Ruleset{small, large} {
				if err := n.dp.Sync(rs); err != nil {
					b.Fatal(err)
				}
				ok, failed, err := n.a.ConnRate(srv.Addr, 8, per)
				if err != nil || failed > ok/100 {
					b.Fatalf("connections: %d ok, %d failed, %v", ok, failed, err)
				}
				rate[k] += float64(ok) / per.Seconds()
			}
		}
	}
	runs := float64(rounds * b.N)
	b.ReportMetric(rate[0]/runs, "conn/s@10")
	b.ReportMetric(rate[1]/runs, "conn/s@10000")
	b.ReportMetric(rate[1]/rate[0], "ratio")
}

// withSynthetic: a and b allowed to talk (a's egress: 20 rules, the match
// last), plus extra synthetic endpoints in 50 workloads.
func (bn *node) withSynthetic(extra int) *dataplane.Ruleset {
	rs := synthetic(extra, 50, 20, false)
	var eg []dataplane.Rule
	for r := 0; r < 19; r++ {
		eg = append(eg, dataplane.Rule{Peer: fmt.Sprintf("workload/%d", r%50), Ports: []segment.PortRange{{Protocol: segment.TCP, First: uint16(2000 + r), Last: uint16(2000 + r)}}, Action: segment.Deny, Origin: 5})
	}
	eg = append(eg, dataplane.Rule{Peer: "b", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 8080, Last: 8080}}, Action: segment.Allow, Origin: 6})
	rs.Sets = append(rs.Sets, dataplane.Set{Name: "b", Prefixes: []netip.Prefix{netip.PrefixFrom(bn.b.IP(4), 32)}})
	rs.Endpoints = append(rs.Endpoints,
		dataplane.Endpoint{ID: "a/eth0", IPs: []netip.Addr{bn.a.IP(4)}, Egress: dataplane.Policy{Enforced: eg}, Ingress: allowAll},
		dataplane.Endpoint{ID: "b/eth0", IPs: []netip.Addr{bn.b.IP(4)}, Egress: allowAll, Ingress: allowAll})
	return rs
}
