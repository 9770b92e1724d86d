package e2e_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
	"github.com/netseg/netseg/e2e/lab"
)

// TestKubernetesCrossNode: two lab nodes, each with its own agent, CNI
// network and nftables table, and a routed link between them (each node's
// pod subnet routed via the other). Each agent learns the other node's
// pods from the API; traffic both ways is allowed or denied as the
// compiler's reference decision (Compiled.Decide) says.
func TestKubernetesCrossNode(t *testing.T) {
	k := newKubeCluster(t)
	l := lab.New(t)
	a := k.node(l, "node-a", "10.88.1.0/24")
	b := k.node(l, "node-b", "10.88.2.0/24")
	a.ns.Veth("to-b", b.ns, "to-a")
	a.ns.MustRun("ip", "addr", "add", "192.168.77.1/30", "dev", "to-b")
	b.ns.MustRun("ip", "addr", "add", "192.168.77.2/30", "dev", "to-a")
	a.ns.MustRun("ip", "route", "add", "10.88.2.0/24", "via", "192.168.77.2")
	b.ns.MustRun("ip", "route", "add", "10.88.1.0/24", "via", "192.168.77.1")

	type podSpec struct {
		node      *kubeNode
		ns, name  string
		labels    map[string]string
		listening []uint16
	}
	specs := []podSpec{
		{a, "shop", "checkout", checkoutLabels, []uint16{8080, 9090}},
		{a, "ops", "monitoring-a", monitoringLabels, []uint16{9090}},
		{b, "pay", "payments", paymentsLabels, []uint16{8443}},
		{b, "shop", "redis", map[string]string{"app": "redis"}, []uint16{6379}},
		{b, "web", "frontend", map[string]string{"app": "frontend"}, []uint16{8080}},
		{b, "ops", "monitoring-b", monitoringLabels, nil},
	}
	pods := map[string]*lab.Container{}
	var eps []policy.Endpoint
	for _, s := range specs {
		c := s.node.pod(s.ns, s.name, s.labels)
		for _, p := range s.listening {
			listen(c, p)
		}
		pods[s.name] = c
		eps = append(eps, policy.Endpoint{Namespace: s.ns, Name: s.name, Labels: s.labels, IPs: []netip.Addr{c.IP(4)}})
	}

	// The reference: the same policy, compiled here from examples/.
	pol, err := policyfile.Load("../examples")
	if err != nil {
		t.Fatal(err)
	}
	ref := policy.Compile(pol.Input(policy.Config{}, eps, []policy.Service{{Namespace: "pay", Name: "payments",
		Selector: paymentsLabels, Ports: []segment.PortRange{{Protocol: segment.TCP, First: 8443, Last: 8443}}}}))

	pairs := []struct {
		from, to string
		port     uint16
	}{
		// node-a -> node-b
		{"checkout", "payments", 8443},
		{"monitoring-a", "payments", 8443},
		{"checkout", "redis", 6379},
		{"monitoring-a", "redis", 6379},
		{"checkout", "frontend", 8080},
		// node-b -> node-a
		{"frontend", "checkout", 8080},
		{"payments", "checkout", 8080},
		{"monitoring-b", "checkout", 9090},
		{"redis", "checkout", 8080},
		{"monitoring-b", "monitoring-a", 9090},
	}
	nsOf := map[string]string{}
	for _, s := range specs {
		nsOf[s.name] = s.ns
	}
	// Wait until both agents know each other's pods: the first allowed
	// pair each way passes.
	for _, p := range []int{0, 5} {
		src, dst := pods[pairs[p].from], pods[pairs[p].to]
		addr := netip.AddrPortFrom(dst.IP(4), pairs[p].port)
		waitFor(t, fmt.Sprintf("%s -> %s allowed", pairs[p].from, pairs[p].to), 10*time.Second, func() (bool, string) {
			err := src.Probe("tcp", addr, 100*time.Millisecond)
			return err == nil, probeString(err)
		})
	}
	count := map[string]int{}
	for i, p := range pairs {
		dir := "a->b"
		if i >= 5 {
			dir = "b->a"
		}
		d := ref.Decide(policy.Peer{Namespace: nsOf[p.from], Name: p.from}, policy.Peer{Namespace: nsOf[p.to], Name: p.to}, p.port, segment.TCP)
		err := pods[p.from].Probe("tcp", netip.AddrPortFrom(pods[p.to].IP(4), p.port), probeTimeout)
		what := fmt.Sprintf("%s %s -> %s:%d (reference: %s by %s)", dir, p.from, p.to, p.port, d.Verdict, d.Origin)
		if d.Verdict == segment.Denied {
			expectDrop(t, what, err)
			count[dir+" denied"]++
		} else {
			expectPass(t, what, err)
			count[dir+" allowed"]++
		}
		t.Logf("%s: %s", what, probeString(err))
	}
	for _, c := range []string{"a->b allowed", "a->b denied", "b->a allowed", "b->a denied"} {
		if count[c] == 0 {
			t.Errorf("no pair is %s: the test does not cover it", c)
		}
	}
}
