package e2e_test

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
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
func (n *node) status(t *testing.T) *agent.Response { return n.call(t, agent.OpStatus) }

// call sends the agent a request without endpoint, failing t if it does
// not answer within 5 s.
func (n *node) call(t *testing.T, op agent.Op) *agent.Response {
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
