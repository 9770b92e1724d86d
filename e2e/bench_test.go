package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
)

// BenchmarkPluginAdd measures the time the netseg plugin adds to a CNI
// ADD (the plugin process's wall time, from start to exit, agent on the
// same node: registration, the agent's sync, and reading the rules back),
// with 0, 100 and 1,000 endpoints already registered. It reports p50 and
// p99 per size.
func BenchmarkPluginAdd(b *testing.B) {
	for _, size := range []int{0, 100, 1000} {
		b.Run(fmt.Sprintf("registered=%d", size), func(b *testing.B) {
			n := newNode(b, "bridge")
			n.preRegister(b, size)
			var took []time.Duration
			n.cni.OnExec(func(plugin string, d time.Duration) {
				if plugin == "netseg" {
					took = append(took, d)
				}
			})
			const adds = 40
			for i := 0; i < b.N; i++ {
				for k := 0; k < adds; k++ {
					a := n.attach("shop", fmt.Sprintf("c-%d-%d", i, k), checkoutLabels)
					c := n.cni.MustAdd(fmt.Sprintf("c%d", k), n.list, a)
					if err := n.cni.Remove(c, n.list, a); err != nil {
						b.Fatal(err)
					}
				}
			}
			n.cni.OnExec(nil)
			// NETSEG_BENCH_LOG=FILE keeps the agent's debug log (each
			// sync's compile, render and commit times) for a comparison.
			if d := os.Getenv("NETSEG_BENCH_LOG"); d != "" {
				b, _ := os.ReadFile(filepath.Join(n.stateDir, "agent.log"))
				_ = os.WriteFile(d, b, 0o644)
			}
			// took holds ADD and DEL runs alternately: keep the ADDs.
			var addTimes []time.Duration
			for i := 0; i < len(took); i += 2 {
				addTimes = append(addTimes, took[i])
			}
			sort.Slice(addTimes, func(i, j int) bool { return addTimes[i] < addTimes[j] })
			pct := func(p float64) float64 {
				return float64(addTimes[int(p*float64(len(addTimes)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(pct(0.5), "p50-ms")
			b.ReportMetric(pct(0.99), "p99-ms")
		})
	}
}

// preRegister registers size synthetic endpoints (no interface; addresses
// in 10.200.0.0/16, inside no test network) with the agent.
func (n *node) preRegister(b testing.TB, size int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for i := 0; i < size; i++ {
		ip := netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)})
		ep := agent.Endpoint{Attachment: agent.Attachment{ContainerID: fmt.Sprintf("synthetic%d", i), IfName: "eth0"},
			Namespace: "shop", Name: fmt.Sprintf("synthetic-%d", i), Labels: map[string]string{"app": fmt.Sprintf("app%d", i%50)},
			IPs: []string{netip.PrefixFrom(ip, 32).String()}}
		if _, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpAdd, Endpoint: &ep}); err != nil {
			b.Fatalf("register %d: %v", i, err)
		}
	}
}
