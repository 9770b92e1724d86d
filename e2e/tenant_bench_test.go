package e2e_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// BenchmarkTenantWorstCase loads the largest rule explosion one tenant
// fits in the default budgets: eight entries of "cidr: 0.0.0.0/0" with 64
// TCP ports each (an entry weighs one per port range: the namespace's 512),
// for a workload with one running pod. Every pod of the node then holds
// those entries in its ingress. (Before the weighing, two objects of 256
// such entries fitted: 1,065 MiB peak RSS, and a new pod's ADD timed out
// after 5 s.) It reports the kernel's rules, the time
// from the files' write to the kernel, a new pod's ADD afterwards, and
// the agent's peak RSS (VmHWM), against the DaemonSet's limit of 512 MiB.
func BenchmarkTenantWorstCase(b *testing.B) {
	for i := 0; i < b.N; i++ {
		n := newNode(b, "bridge")
		n.pod("checkout", "shop", "checkout", checkoutLabels)
		n.pod("payments", "pay", "payments", paymentsLabels)
		n.pod("tenant", "tenant", "app", map[string]string{"app": "tenant"})
		gen := n.status(b).Status.PolicyGeneration
		start := time.Now()
		if err := os.WriteFile(filepath.Join(n.policyDir, "tenant.yaml"), []byte(explosionYAML(1, 8, 64)), 0o644); err != nil {
			b.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Minute)
		for !n.syncedAfter(b, gen, start) {
			if time.Now().After(deadline) {
				b.Fatal("the agent did not apply the tenant's files in 10 minutes")
			}
			time.Sleep(100 * time.Millisecond)
		}
		applied := time.Since(start)
		rules := strings.Count(n.ns.MustRun("nft", "list", "table", "inet", "netseg"), "comment \"netseg ")
		addStart := time.Now()
		_, err := n.cni.Add("monitoring", n.list, n.attach("ops", "monitoring", monitoringLabels))
		add := time.Since(addStart)
		if err != nil {
			b.Logf("a new pod's ADD failed after %v: %v", add.Round(time.Millisecond), err)
		}
		logb, _ := os.ReadFile(filepath.Join(n.stateDir, "agent.log"))
		for _, l := range strings.Split(string(logb), "\n") {
			if strings.Contains(l, `"synced"`) && strings.Contains(l, `"endpoints":3`) {
				b.Logf("%s", l)
			}
		}
		if err != nil {
			b.Fatalf("a new pod could not start beside the tenant's objects")
		}
		b.ReportMetric(float64(rules), "kernel-rules")
		b.ReportMetric(float64(applied.Milliseconds()), "apply-ms")
		b.ReportMetric(float64(add.Milliseconds()), "add-ms")
		b.ReportMetric(float64(peakRSS(b, n.agent.Process.Pid))/(1<<20), "agent-peak-RSS-MiB")
	}
}

// explosionYAML is objects ServiceDependencies in namespace tenant, each of
// entries entries "cidr: 0.0.0.0/0" with ports TCP ports.
func explosionYAML(objects, entries, ports int) string {
	var p []string
	for k := range ports {
		p = append(p, fmt.Sprintf("{protocol: TCP, port: %d}", 10000+k))
	}
	list := "[" + strings.Join(p, ", ") + "]"
	var sb strings.Builder
	for i := range objects {
		fmt.Fprintf(&sb, "---\napiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata: {name: x%02d, namespace: tenant}\nspec:\n  workload: {matchLabels: {app: tenant}}\n  dependsOn:\n", i)
		for j := range entries {
			fmt.Fprintf(&sb, "  - {name: e%d, cidr: 0.0.0.0/0, ports: %s}\n", j, list)
		}
	}
	return sb.String()
}

// syncedAfter reports whether the agent has a policy newer than
// generation and synced it without error after since.
func (n *node) syncedAfter(t testing.TB, generation int64, since time.Time) bool {
	st := n.status(t).Status
	return st.PolicyGeneration > generation && st.LastSync.After(since) && st.LastSyncError == ""
}

// peakRSS is the process's peak resident set (VmHWM), in bytes.
func peakRSS(t testing.TB, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 3 && f[0] == "VmHWM:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}
