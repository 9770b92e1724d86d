package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/controller/flowquery"
	"github.com/netseg/netseg/e2e/lab"
)

// brNetfilter reads or writes both br_netfilter sysctls in the node.
func brNetfilter(t *testing.T, ns *lab.Netns, value string) {
	t.Helper()
	ns.MustSysctl("net.bridge.bridge-nf-call-iptables", value)
	ns.MustSysctl("net.bridge.bridge-nf-call-ip6tables", value)
}

func brNetfilterOn(t *testing.T, ns *lab.Netns) bool {
	t.Helper()
	on := true
	err := ns.Do(func() error {
		for _, name := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
			b, err := os.ReadFile("/proc/sys/net/bridge/" + name)
			if err != nil {
				return err
			}
			on = on && strings.TrimSpace(string(b)) == "1"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return on
}

// status asks the agent for its status.
func (n *node) status(t testing.TB) *agent.Response { return n.call(t, agent.OpStatus) }

// call sends the agent a request without endpoint, failing t if it does
// not answer within 5 s.
func (n *node) call(t testing.TB, op agent.Op) *agent.Response {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, n.socket, agent.Request{Op: op})
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	return resp
}

// TestBrNetfilterSwitchedOff: br_netfilter's sysctls switched off in the
// node while the agent runs. No denied connection passes at any moment
// (the bridge guard drops what the forward chain did not see); the agent
// sets them on again within its check interval and traffic obeys policy
// again. With --fix-br-netfilter=false the agent stays not ready and
// refuses ADDs until they are on, and still no denied connection passes.
func TestBrNetfilterSwitchedOff(t *testing.T) {
	n := newNode(t, "bridge")
	t.Cleanup(func() { brNetfilter(t, n.ns, "1") })
	s := n.addShop(t)
	checkout, monitoring, srv := s.checkout, s.monitoring, s.srv

	brNetfilter(t, n.ns, "0")
	expectDrop(t, "monitoring -> payments right after br_netfilter off", monitoring.Probe("tcp", srv, probeTimeout))
	waitFor(t, "the agent sets br_netfilter on again", 3*time.Second, func() (bool, string) { return brNetfilterOn(t, n.ns), "off" })
	expectPass(t, "checkout -> payments after the agent fixed it", checkout.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments after the agent fixed it", monitoring.Probe("tcp", srv, probeTimeout))
	if b, _ := os.ReadFile(n.agentLog.Name()); !strings.Contains(string(b), "net.bridge.bridge-nf-call-iptables") {
		t.Errorf("the agent log does not name the sysctl it set:\n%s", tail(string(b), 10))
	}

	// Told not to fix it, the agent reports and refuses.
	n.stopAgent(syscall.SIGTERM)
	n.agentArgs = append(n.agentArgs, "--fix-br-netfilter=false")
	n.startAgent()
	brNetfilter(t, n.ns, "0")
	waitFor(t, "the agent reports not ready", 3*time.Second, func() (bool, string) { return !n.status(t).Ready, "ready" })
	if st := n.status(t); !strings.Contains(strings.Join(st.Status.Warnings, "; "), "bridge-nf-call") {
		t.Errorf("status warnings do not name br_netfilter: %q", st.Status.Warnings)
	}
	expectDrop(t, "monitoring -> payments with br_netfilter off", monitoring.Probe("tcp", srv, probeTimeout))
	if _, err := n.cni.Add("late", n.list, n.attach("shop", "late", checkoutLabels)); err == nil || !strings.Contains(err.Error(), "bridge") {
		t.Errorf("ADD with br_netfilter off and not fixed: %v, want a refusal naming the bridge", err)
	}
	brNetfilter(t, n.ns, "1")
	waitFor(t, "the agent is ready again", 3*time.Second, func() (bool, string) { st := n.status(t); return st.Ready, strings.Join(st.Status.Warnings, "; ") })
	expectPass(t, "checkout -> payments with br_netfilter on again", checkout.Probe("tcp", srv, probeTimeout))
	n.pod("late", "shop", "late", checkoutLabels)
}

// cutWithin sends on conn every 20 ms from start and returns how long
// after start the first echo failed (the connection is cut), failing t if
// it still works after limit.
func cutWithin(t *testing.T, conn net.Conn, start time.Time, limit time.Duration) time.Duration {
	t.Helper()
	for i := 0; time.Since(start) < limit+time.Second; i++ {
		msg := fmt.Sprintf("%08d", i)
		_ = conn.SetDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := conn.Write([]byte(msg)); err == nil {
			buf := make([]byte, len(msg))
			if _, err := io.ReadFull(conn, buf); err == nil && string(buf) == msg {
				time.Sleep(20 * time.Millisecond)
				continue
			}
		}
		took := time.Since(start)
		if took > limit {
			t.Errorf("the connection was cut %v after the change, want within %v", took.Round(time.Millisecond), limit)
		}
		return took
	}
	t.Fatalf("the established connection still works %v after the change", limit+time.Second)
	return 0
}

// TestRevocationCutsLiveConnections: an established connection that a new
// policy denies ends within a second of the change (the agent rewrites its
// conntrack mark; the forward chain drops established packets whose mark
// says Deny), and its dropped packets are logged with the rule that now
// denies it. A staged (Monitor) deny does not cut. A quarantine cuts the
// quarantined endpoint's live connections the same way.
func TestRevocationCutsLiveConnections(t *testing.T) {
	flowLog := filepath.Join(t.TempDir(), "flows.log")
	n := newNode(t, "bridge", "--flow-log", flowLog, "--flow-interval", "1s")
	checkout, monitoring, srv := shopTraffic(t, n)
	dep := filepath.Join(n.policyDir, "dependencies.yaml")
	orig, err := os.ReadFile(dep)
	if err != nil {
		t.Fatal(err)
	}
	writePolicy := func(path string, b []byte) time.Time {
		t.Helper()
		if err := os.WriteFile(path+".tmp", b, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(path+".tmp", path); err != nil {
			t.Fatal(err)
		}
		return time.Now()
	}

	// A staged deny of checkout -> payments: the connection goes on.
	conn, err := checkout.Dial("tcp", srv, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	staged := filepath.Join(n.policyDir, "zz-staged.yaml")
	gen := n.status(t).Status.PolicyGeneration
	writePolicy(staged, []byte(`apiVersion: netseg.io/v1alpha1
kind: ZonePolicy
metadata: {name: staged-web-payments}
spec:
  priority: 1
  mode: Monitor
  rules:
  - {name: no-web-to-payments, action: Deny, from: [{zone: web}], to: [{zone: payments}]}
`))
	waitFor(t, "the staged policy applied", 5*time.Second, func() (bool, string) {
		st := n.status(t).Status
		return st.PolicyGeneration > gen && st.LastError == "", st.LastError
	})
	for i := range 10 { // a second of echoes: would-deny does not cut
		if err := echo(conn, fmt.Sprintf("staged%02d", i)); err != nil {
			t.Fatalf("a staged deny cut the connection: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := os.Remove(staged); err != nil {
		t.Fatal(err)
	}

	// An enforced deny: checkout loses its payments dependencies.
	var kept []string
	for _, block := range strings.SplitAfter(string(orig), "\n  - name: ") {
		if !strings.HasPrefix(block, "payments-") {
			kept = append(kept, block)
		}
	}
	denied := []byte(strings.Join(kept, ""))
	if strings.Contains(string(denied), "payments-pods") {
		t.Fatal("could not drop checkout's payments entries")
	}
	changed := writePolicy(dep, denied)
	took := cutWithin(t, conn, changed, time.Second)
	t.Logf("enforced deny: the established connection was cut %v after the policy file changed", took.Round(time.Millisecond))
	expectDrop(t, "checkout -> payments 8443, new connection after the change", checkout.Probe("tcp", srv, probeTimeout))
	waitFor(t, "the cut connection's packets logged as denied with the deciding rule", 10*time.Second, func() (bool, string) {
		var found *flow.Record
		_ = flowquery.Read(flowLog, &flowquery.Filter{}, func(r *flow.Record) {
			if r.Kind == flow.KindFlow && r.Verdict == "denied" && r.Src != nil && r.Dst != nil &&
				r.Src.IP == checkout.IP(4).String() && r.Dst.IP == srv.Addr().String() && r.Dst.Port == srv.Port() && r.Origin != nil {
				found = r
			}
		}, nil)
		if found == nil {
			return false, "no denied record for checkout -> payments:8443"
		}
		t.Logf("logged: %s by %s %s/%s %s", found.Verdict, found.Origin.Kind, found.Origin.Namespace, found.Origin.Name, found.Origin.Rule)
		return true, ""
	})

	// Quarantine: monitoring -> checkout:9090 is allowed; quarantining
	// monitoring cuts it.
	writePolicy(dep, orig)
	metrics := listen(checkout, 9090)
	waitFor(t, "monitoring -> checkout 9090 allowed", 5*time.Second, func() (bool, string) {
		err := monitoring.Probe("tcp", metrics, probeTimeout)
		return err == nil, probeString(err)
	})
	mconn, err := monitoring.Dial("tcp", metrics, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer mconn.Close()
	var mon agent.Endpoint
	for _, ep := range n.call(t, agent.OpList).Endpoints {
		if ep.Namespace == "ops" && ep.Name == "monitoring" {
			mon = ep
		}
	}
	quarantined := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpQuarantine, Endpoint: &mon}); err != nil {
		t.Fatalf("quarantine monitoring: %v", err)
	}
	took = cutWithin(t, mconn, quarantined, time.Second)
	t.Logf("quarantine: the established connection was cut %v after the request", took.Round(time.Millisecond))
	if l := statusLoop(t, n.status(t).Status, "revoke"); l.State != "ok" {
		t.Errorf("revoke loop: %+v", l)
	}
}

// TestFailOpenWorksThenAdopts: under failurePolicy open, a container added
// while the agent is down starts with a working network, unsegmented (the
// plugin opens its addresses before the fail-closed catch-all and records
// it); once the agent is back it adopts the container within its check
// interval and the policy decides its traffic, including a connection it
// opened while unsegmented (cut if the policy denies it).
func TestFailOpenWorksThenAdopts(t *testing.T) {
	n := newNode(t, "bridge")
	_, _, srv := shopTraffic(t, n)
	var raw map[string]any
	if err := json.Unmarshal(n.list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	plugins := raw["plugins"].([]any)
	plugins[len(plugins)-1].(map[string]any)["failurePolicy"] = "open"
	b, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	open := n.cni.ParseConfList(t, string(b))

	n.stopAgent(syscall.SIGKILL)
	at := n.attach("ops", "monitoring-fo", monitoringLabels)
	fo, err := n.cni.Add("fo", open, at)
	if err != nil {
		t.Fatalf("ADD under failurePolicy open with the agent down: %v", err)
	}
	// Unsegmented: monitoring may not reach payments:8443, yet it does.
	expectPass(t, "fail-open monitoring -> payments 8443 (unsegmented)", fo.Probe("tcp", srv, probeTimeout))
	records, _ := filepath.Glob(filepath.Join(n.pluginDir, agent.FailOpenDir, "*.json"))
	if len(records) != 1 {
		t.Fatalf("fail-open records %v, want one", records)
	}
	// A connection opened while unsegmented: the adoption decides it too.
	conn, err := fo.Dial("tcp", srv, time.Second)
	if err != nil {
		t.Fatalf("fail-open monitoring -> payments 8443, a connection kept open: %v", err)
	}
	defer conn.Close()

	n.startAgent()
	started := time.Now()
	took := waitFor(t, "the agent adopts the container and the policy decides its traffic", 10*time.Second, func() (bool, string) {
		if err := fo.Probe("tcp", srv, probeTimeout); err == nil {
			return false, "monitoring -> payments still passes"
		}
		for _, ep := range n.call(t, agent.OpList).Endpoints {
			if ep.Namespace == "ops" && ep.Name == "monitoring-fo" {
				return true, ""
			}
		}
		return false, "not registered"
	})
	t.Logf("adopted and segmented %v after the agent started (%v after its start returned)", took.Round(time.Millisecond), time.Since(started).Round(time.Millisecond))
	cut := cutWithin(t, conn, started, 3*time.Second)
	t.Logf("the connection opened while unsegmented was cut %v after the agent started", cut.Round(time.Millisecond))
	if records, _ := filepath.Glob(filepath.Join(n.pluginDir, agent.FailOpenDir, "*.json")); len(records) != 0 {
		t.Errorf("fail-open records left after adoption: %v", records)
	}
	if l := statusLoop(t, n.status(t).Status, "fail-open-adopt"); l.State != "ok" {
		t.Errorf("fail-open-adopt loop: %+v", l)
	}
	if set := n.ns.MustRun("nft", "list", "set", "inet", "netseg", agent.CNIFailOpenSet4); strings.Contains(set, fo.IP(4).String()) {
		t.Errorf("address %s still open after adoption:\n%s", fo.IP(4), set)
	}
	if err := n.cni.Remove(fo, open, at); err != nil {
		t.Fatal(err)
	}
}
