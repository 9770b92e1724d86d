package e2e_test

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/netseg/netseg/controller/flowlog"
	"github.com/netseg/netseg/controller/flowquery"
	"github.com/netseg/netseg/e2e/lab"
)

// BenchmarkAgentOverhead measures, side by side in one run, new TCP
// connections per second between two containers (8 client workers, one
// byte echoed, reset) on a node with only the reference bridge plugin, and
// on a node where the netseg-agent binary, with its defaults, enforces the
// examples' policy (the connection is an expected, ServiceDependency-
// allowed one) and writes every connection to its flow log. The two loads
// alternate in 5 s turns, bare-netseg-netseg-bare-bare-netseg-netseg-bare,
// so that drift in the machine's speed during the run falls on both
// alike. It reports both rates, their ratio, the losses the agent counted
// (must be 0), and the connections neither recorded under their own
// 5-tuple nor counted as lost.
func BenchmarkAgentOverhead(b *testing.B) {
	const turn = 5 * time.Second
	for i := 0; i < b.N; i++ {
		// Bare: the same bridge network without netseg.
		l := lab.New(b)
		bareNode := l.Node("bare")
		cni := bareNode.CNI()
		list := cni.ParseConfList(b, lab.Net{Name: "bare", Type: "bridge", Subnet: bridgeSubnet, DataDir: b.TempDir()}.ConfList())
		c1 := cni.MustAdd("client", list, lab.Attach{})
		s1 := cni.MustAdd("server", list, lab.Attach{})
		srv1 := s1.ListenTCP(netip.AddrPortFrom(s1.IP(4), 8443).String())

		flowLog := filepath.Join(b.TempDir(), "flows.log")
		// The agent's defaults, as deployed: interim records every 60 s
		// (each interval dumps the conntrack table once), the policy
		// directory checked every 200 ms (the harness's 50 ms is for tests
		// of policy edits).
		n := newNode(b, "bridge", "--flow-log", flowLog, "--poll-interval", "200ms")
		n.ns.ShortConntrackTimeouts()
		checkout := n.pod("checkout", "shop", "checkout", checkoutLabels)
		payments := n.pod("payments", "pay", "payments", paymentsLabels)
		srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())

		bare, with, err := lab.ConnRatesSideBySide(lab.Load{Client: c1.Netns, Addr: srv1.Addr}, lab.Load{Client: checkout.Netns, Addr: srv.Addr}, turn)
		if err != nil {
			b.Fatal(err)
		}
		// End what is left in the table (a flush sends each entry's
		// DESTROY), then wait for the records.
		n.ns.MustRun("conntrack", "-F")
		var recorded, lost int64
		deadline := time.Now().Add(90 * time.Second)
		for {
			recorded, lost = countPairRecords(b, flowLog, checkout.IP(4), payments.IP(4))
			if recorded+lost >= with || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		per := 4 * turn.Seconds()
		b.ReportMetric(float64(bare)/per, "conn/s-bare")
		b.ReportMetric(float64(with)/per, "conn/s-netseg")
		b.ReportMetric(float64(with)/float64(bare), "ratio")
		b.ReportMetric(float64(lost), "lost")
		b.ReportMetric(float64(with-recorded-lost), "unaccounted")
		// The benchmark's bar is zero loss at this rate. Connections without
		// a record under their own 5-tuple and without a counted loss are
		// reported (unaccounted): at 10,000 connections a second from one
		// client, a port comes back within seconds, and conntrack can fold
		// a reused tuple into the entry of the previous connection.
		// TestFlood (controller/flowlog) holds the strict accounting.
		if lost != 0 {
			b.Errorf("%d connections, %d records, %d counted lost", with, recorded, lost)
		}
		if unaccounted := with - recorded - lost; unaccounted != 0 {
			b.Logf("%d of %d connections have no record under their own 5-tuple", unaccounted, with)
		}
	}
}

// countPairRecords counts final flow records from src to dst, and the
// connections the agent reported lost, in the log and its rotated files.
func countPairRecords(b *testing.B, path string, src, dst netip.Addr) (recorded, lost int64) {
	_ = flowquery.Read(path, &flowquery.Filter{}, func(r *flowlog.Record) {
		switch {
		case r.Kind == flowlog.KindFlow && r.Report == flowlog.ReportFinal && r.Src.IP == src.String() && r.Dst.IP == dst.String():
			recorded++
		case r.Kind == flowlog.KindLost && r.Unit == flowlog.UnitConnections:
			lost += int64(r.Count)
		}
	}, nil)
	return recorded, lost
}
