package e2e_test

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/e2e/lab"
)

// TestTruthTableKubernetes: Kubernetes mode on two lab nodes with a real
// kube-apiserver: 6 workloads in 5 zones (web, data, payments, ops and
// unzoned) plus the CIDR zone partners, spread over both nodes. For every
// (src, dst, port), the live netsegctl explain asked of the deciding node
// (the source's node, or the destination's for the partner), the real
// traffic and that node's flow log must agree: same verdict, and the flow
// record names the same origin.
func TestTruthTableKubernetes(t *testing.T) {
	k := newKubeCluster(t)
	l := lab.New(t)
	flowArgs := func(dir string) []string {
		return []string{"--flow-log", filepath.Join(dir, "flows.log"), "--flow-interval", "1s"}
	}
	dirA, dirB := t.TempDir(), t.TempDir()
	a := k.node(l, "node-a", "10.88.1.0/24", flowArgs(dirA)...)
	b := k.node(l, "node-b", "10.88.2.0/24", flowArgs(dirB)...)
	a.ns.Veth("to-b", b.ns, "to-a")
	a.ns.MustRun("ip", "addr", "add", "192.168.77.1/30", "dev", "to-b")
	b.ns.MustRun("ip", "addr", "add", "192.168.77.2/30", "dev", "to-a")
	a.ns.MustRun("ip", "route", "add", "10.88.2.0/24", "via", "192.168.77.2")
	b.ns.MustRun("ip", "route", "add", "10.88.1.0/24", "via", "192.168.77.1")
	b.ns.MustRun("ip", "route", "add", "203.0.113.0/24", "via", "192.168.77.1")
	for _, n := range []*kubeNode{a, b} {
		n.ns.ShortConntrackTimeouts()
	}

	type kpeer struct {
		truthPeer
		node    *kubeNode
		flowLog string
	}
	var peers []*kpeer
	for _, s := range []struct {
		node     *kubeNode
		ns, name string
		labels   map[string]string
	}{
		{a, "shop", "checkout", checkoutLabels},
		{a, "ops", "monitoring", monitoringLabels},
		{a, "default", "legacy", map[string]string{"app": "legacy"}},
		{b, "pay", "payments", paymentsLabels},
		{b, "shop", "redis", map[string]string{"app": "redis"}},
		{b, "web", "frontend", map[string]string{"app": "frontend"}},
	} {
		c := s.node.pod(s.ns, s.name, s.labels)
		log := filepath.Join(dirA, "flows.log")
		if s.node == b {
			log = filepath.Join(dirB, "flows.log")
		}
		peers = append(peers, &kpeer{truthPeer{ref: s.ns + "/" + s.name, netns: c.Netns, ip: c.IP(4), labels: s.labels}, s.node, log})
	}
	partner := l.Netns("partner")
	a.ns.Veth("v-partner", partner, "eth0")
	a.ns.MustRun("ip", "addr", "add", "203.0.113.1/24", "dev", "v-partner")
	partner.MustRun("ip", "addr", "add", "203.0.113.10/24", "dev", "eth0")
	partner.MustRun("ip", "route", "add", "default", "via", "203.0.113.1")
	peers = append(peers, &kpeer{truthPeer: truthPeer{ref: "203.0.113.10", netns: partner, ip: netip.MustParseAddr("203.0.113.10")}})

	ports := []string{"8443/TCP", "6379/TCP", "8080/TCP", "22/TCP", "443/TCP"}
	for _, p := range peers {
		for _, port := range ports {
			num, _, _ := strings.Cut(port, "/")
			p.netns.ListenTCP(p.ip.String() + ":" + num)
		}
	}
	// Wait until both agents know every pod (the other node's from the API).
	waitFor(t, "both agents know all pods", 20*time.Second, func() (bool, string) {
		for _, n := range []*kubeNode{a, b} {
			out, err := ctlOut("explain", "--socket", n.socket, "--from", "10.88.1.2", "--to", peers[5].ip.String(), "--port", "8080/TCP", "-o", "json")
			if err != nil || !strings.Contains(out, `"dstZone": "web"`) {
				return false, out
			}
		}
		return true, ""
	})

	var results []*truthCase
	for _, src := range peers {
		for _, dst := range peers {
			if src == dst {
				continue
			}
			for _, port := range ports {
				decider, r := src.node, &truthCase{src: &src.truthPeer, dst: &dst.truthPeer, port: port, log: src.flowLog}
				from, to := src.ref, dst.ip.String()
				if src.node == nil { // the partner: the destination's node decides (ingress)
					decider, r.log, from, to = dst.node, dst.flowLog, src.ip.String(), dst.ref
				}
				r.where = decider.name
				out, err := ctlOut("explain", "--socket", decider.socket, "--from", from, "--to", to, "--port", port, "-o", "json")
				if err != nil {
					t.Fatalf("explain %s -> %s %s on %s: %v: %s", from, to, port, decider.name, err, out)
				}
				if err := json.Unmarshal([]byte(out), &r.explain); err != nil {
					t.Fatalf("explain output: %v: %s", err, out)
				}
				results = append(results, r)
			}
		}
	}
	probeAll(results, 400*time.Millisecond)
	counts := checkTraffic(t, results)
	t.Logf("%d probes across two nodes: %d allowed, %d would-deny, %d denied; explain and traffic agree",
		len(results), counts["allowed"], counts["would-deny"], counts["denied"])
	if counts["allowed"] == 0 || counts["denied"] == 0 {
		t.Fatalf("the truth table lacks a verdict: %v", counts)
	}
	checkFlowLogs(t, results)
}
