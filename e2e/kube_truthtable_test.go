package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
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

	type result struct {
		src, dst *kpeer
		port     string
		decider  *kubeNode
		log      string
		explain  explainJSON
		traffic  error
	}
	var results []*result
	for _, src := range peers {
		for _, dst := range peers {
			if src == dst {
				continue
			}
			for _, port := range ports {
				r := &result{src: src, dst: dst, port: port, decider: src.node, log: src.flowLog}
				from, to := src.ref, dst.ip.String()
				if src.node == nil { // the partner: the destination's node decides (ingress)
					r.decider, r.log, from, to = dst.node, dst.flowLog, src.ip.String(), dst.ref
				}
				out, err := ctlOut("explain", "--socket", r.decider.socket, "--from", from, "--to", to, "--port", port, "-o", "json")
				if err != nil {
					t.Fatalf("explain %s -> %s %s on %s: %v: %s", from, to, port, r.decider.name, err, out)
				}
				if err := json.Unmarshal([]byte(out), &r.explain); err != nil {
					t.Fatalf("explain output: %v: %s", err, out)
				}
				results = append(results, r)
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, r := range results {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			num, _, _ := strings.Cut(r.port, "/")
			r.traffic = r.src.netns.Probe("tcp", netip.MustParseAddrPort(r.dst.ip.String()+":"+num), 400*time.Millisecond)
		}()
	}
	wg.Wait()
	counts := map[string]int{}
	for _, r := range results {
		name := fmt.Sprintf("%s -> %s %s (on %s: %s by %s %s %s)", r.src.ref, r.dst.ref, r.port, r.decider.name, r.explain.Verdict,
			r.explain.Origin.Kind, r.explain.Origin.Name, r.explain.Origin.Rule)
		counts[r.explain.Verdict]++
		denied := r.explain.Verdict == "denied"
		switch {
		case denied && r.traffic == nil:
			t.Errorf("%s: traffic passed", name)
		case denied && !errors.Is(r.traffic, lab.ErrNoReply):
			t.Errorf("%s: want a silent drop, got %v", name, r.traffic)
		case !denied && r.traffic != nil:
			t.Errorf("%s: traffic failed: %v", name, r.traffic)
		}
	}
	t.Logf("%d probes across two nodes: %d allowed, %d would-deny, %d denied; explain and traffic agree",
		len(results), counts["allowed"], counts["would-deny"], counts["denied"])
	if counts["allowed"] == 0 || counts["denied"] == 0 {
		t.Fatalf("the truth table lacks a verdict: %v", counts)
	}
	deadline := time.Now().Add(20 * time.Second)
	var missing []string
	for {
		logs := map[string]map[struct{ src, dst, port string }]flowRec{}
		missing = missing[:0]
		for _, r := range results {
			if logs[r.log] == nil {
				logs[r.log] = readFlows(t, r.log)
			}
			num, proto, _ := strings.Cut(r.port, "/")
			got, ok := logs[r.log][struct{ src, dst, port string }{r.src.ip.String(), r.dst.ip.String(), num + "/" + proto}]
			switch {
			case !ok:
				missing = append(missing, fmt.Sprintf("%s -> %s %s: no record on %s", r.src.ref, r.dst.ref, r.port, r.decider.name))
			case got.Verdict != r.explain.Verdict || got.Origin.ID != r.explain.Origin.ID || got.Expected != r.explain.Expected:
				missing = append(missing, fmt.Sprintf("%s -> %s %s on %s: record says %s by origin %d, expected=%v; explain says %s by %d, expected=%v",
					r.src.ref, r.dst.ref, r.port, r.decider.name, got.Verdict, got.Origin.ID, got.Expected, r.explain.Verdict, r.explain.Origin.ID, r.explain.Expected))
			}
		}
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, m := range missing {
		t.Error("flow log: " + m)
	}
}

type explainJSON struct {
	Verdict  string `json:"verdict"`
	Expected bool   `json:"expected"`
	Origin   struct {
		ID   uint16 `json:"id"`
		Kind string `json:"kind"`
		Name string `json:"name"`
		Rule string `json:"rule"`
	} `json:"origin"`
}
