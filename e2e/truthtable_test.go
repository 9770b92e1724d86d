package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/controller/flowquery"
	"github.com/netseg/netseg/e2e/lab"
)

// truthPeer is a workload or the partner host.
type truthPeer struct {
	ref    string // what netsegctl explain takes: ns/name or an IP
	netns  *lab.Netns
	ip     netip.Addr
	labels map[string]string
}

// truthCase is one (src, dst, port) of a truth table: what explain said,
// what the traffic did, and the flow log that must record it.
type truthCase struct {
	src, dst *truthPeer
	port     string // "8443/TCP"
	where    string // the deciding node, for messages ("" with one node)
	log      string // the flow log that records it
	explain  explainJSON
	traffic  error
}

func (c *truthCase) String() string {
	s := fmt.Sprintf("%s -> %s %s", c.src.ref, c.dst.ref, c.port)
	if c.where != "" {
		s += " on " + c.where
	}
	return s
}

// probeAll makes every case's connection, eight at a time.
func probeAll(cases []*truthCase, timeout time.Duration) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, c := range cases {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			num, proto, _ := strings.Cut(c.port, "/")
			c.traffic = c.src.netns.Probe(strings.ToLower(proto), netip.MustParseAddrPort(c.dst.ip.String()+":"+num), timeout)
		}()
	}
	wg.Wait()
}

// checkTraffic fails every case whose traffic disagrees with explain, and
// returns the cases per verdict.
func checkTraffic(t *testing.T, cases []*truthCase) map[string]int {
	t.Helper()
	counts := map[string]int{}
	for _, c := range cases {
		name := fmt.Sprintf("%s (explain: %s by %s %s %s)", c, c.explain.Verdict, c.explain.Origin.Kind, c.explain.Origin.Name, c.explain.Origin.Rule)
		counts[c.explain.Verdict]++
		denied := c.explain.Verdict == "denied"
		switch {
		case denied && c.traffic == nil:
			t.Errorf("%s: traffic passed", name)
		case denied && !errors.Is(c.traffic, lab.ErrNoReply):
			t.Errorf("%s: want a silent drop, got %v", name, c.traffic)
		case !denied && c.traffic != nil:
			t.Errorf("%s: traffic failed: %v", name, c.traffic)
		}
	}
	return counts
}

// checkFlowLogs waits up to 20 s for each case's record in its flow log,
// with explain's verdict, origin and expected flag.
func checkFlowLogs(t *testing.T, cases []*truthCase) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var missing []string
	for {
		logs := map[string]map[struct{ src, dst, port string }]*flow.Record{}
		missing = missing[:0]
		for _, c := range cases {
			if logs[c.log] == nil {
				logs[c.log] = readFlows(c.log)
			}
			num, proto, _ := strings.Cut(c.port, "/")
			got, ok := logs[c.log][struct{ src, dst, port string }{c.src.ip.String(), c.dst.ip.String(), num + "/" + proto}]
			switch {
			case !ok:
				missing = append(missing, fmt.Sprintf("%s: no record", c))
			case got.Verdict != c.explain.Verdict || got.Origin.ID != c.explain.Origin.ID || got.IsExpected() != c.explain.Expected:
				missing = append(missing, fmt.Sprintf("%s: record says %s by origin %d (%s %s), expected=%v; explain says %s by %d, expected=%v",
					c, got.Verdict, got.Origin.ID, got.Origin.Kind, got.Origin.Name, got.IsExpected(), c.explain.Verdict, c.explain.Origin.ID, c.explain.Expected))
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

// TestTruthTableStandalone: 7 workloads in 4 zones (web, data, payments,
// ops) plus the unzoned zone and the CIDR zone partners; for every
// (src, dst, port) the live netsegctl explain, the real traffic and the
// flow log must agree: same verdict, and the flow record names the same
// origin.
func TestTruthTableStandalone(t *testing.T) {
	flowDir := t.TempDir()
	flowLog := filepath.Join(flowDir, "flows.log")
	n := newNode(t, "bridge", "--flow-log", flowLog, "--flow-interval", "1s", "--node-name", "lab-node")
	// Connections end fast in the lab, so their final records come fast.
	n.ns.ShortConntrackTimeouts()
	peers := []*truthPeer{}
	for _, w := range []struct{ ns, name, app string }{
		{"web", "frontend", "frontend"}, {"shop", "checkout", "checkout"}, {"shop", "redis", "redis"},
		{"pay", "payments", "payments"}, {"ops", "monitoring", "monitoring"}, {"default", "legacy", "legacy"},
		{"default", "batch", "batch"},
	} {
		labels := map[string]string{"app": w.app}
		c := n.pod(w.name, w.ns, w.name, labels)
		peers = append(peers, &truthPeer{ref: w.ns + "/" + w.name, netns: c.Netns, ip: c.IP(4), labels: labels})
	}
	partner := n.lab.Netns("partner")
	n.ns.Veth("v-partner", partner, "eth0")
	n.ns.MustRun("ip", "addr", "add", "203.0.113.1/24", "dev", "v-partner")
	partner.MustRun("ip", "addr", "add", "203.0.113.10/24", "dev", "eth0")
	partner.MustRun("ip", "route", "add", "default", "via", "203.0.113.1")
	peers = append(peers, &truthPeer{ref: "203.0.113.10", netns: partner, ip: netip.MustParseAddr("203.0.113.10")})

	ports := []string{"8443/TCP", "6379/TCP", "22/TCP", "443/TCP", "53/UDP"}
	for _, p := range peers {
		for _, port := range ports {
			num, proto, _ := strings.Cut(port, "/")
			addr := p.ip.String() + ":" + num
			if proto == "UDP" {
				p.netns.ListenUDP(addr)
			} else {
				p.netns.ListenTCP(addr)
			}
		}
	}
	var results []*truthCase
	for _, src := range peers {
		for _, dst := range peers {
			if src == dst {
				continue
			}
			for _, port := range ports {
				r := &truthCase{src: src, dst: dst, port: port, log: flowLog}
				out, err := n.ctl("explain", "--socket", n.socket, "--from", src.ref, "--to", dst.ref, "--port", port, "-o", "json")
				if err != nil {
					t.Fatalf("explain %s -> %s %s: %v: %s", src.ref, dst.ref, port, err, out)
				}
				if err := json.Unmarshal([]byte(out), &r.explain); err != nil {
					t.Fatalf("explain output: %v: %s", err, out)
				}
				results = append(results, r)
			}
		}
	}
	probeAll(results, 300*time.Millisecond)
	counts := checkTraffic(t, results)
	t.Logf("%d probes: %d allowed, %d would-deny, %d denied; explain and traffic agree", len(results), counts["allowed"], counts["would-deny"], counts["denied"])
	if counts["allowed"] == 0 || counts["would-deny"] == 0 || counts["denied"] == 0 {
		t.Fatalf("the truth table lacks a verdict: %v", counts)
	}
	// The flow log: one record per probe with the same verdict and origin.
	checkFlowLogs(t, results)
	out, err := n.ctl("flows", "-f", flowLog, "--unexpected", "--verdict", "denied", "-o", "json")
	if err != nil {
		t.Fatalf("netsegctl flows: %v: %s", err, out)
	}
	if got := strings.Count(strings.TrimSpace(out), "\n") + 1; strings.TrimSpace(out) == "" || got < counts["denied"] {
		t.Errorf("netsegctl flows --unexpected --verdict denied printed %d records, want at least %d", got, counts["denied"])
	}
	alerts := filepath.Join(flowDir, "alerts.log")
	if b, err := os.ReadFile(alerts); err != nil || !strings.Contains(string(b), `"kind":"alert"`) {
		t.Errorf("alert log %s: %v, %.200s", alerts, err, b)
	}
}

// readFlows indexes the flow records by (src ip, dst ip, "port/PROTO").
func readFlows(path string) map[struct{ src, dst, port string }]*flow.Record {
	out := map[struct{ src, dst, port string }]*flow.Record{}
	_ = flowquery.Read(path, &flowquery.Filter{}, func(r *flow.Record) {
		if r.Kind == flow.KindFlow && r.Src != nil && r.Dst != nil && r.Origin != nil {
			out[struct{ src, dst, port string }{r.Src.IP, r.Dst.IP, fmt.Sprintf("%d/%s", r.Dst.Port, r.Protocol)}] = r
		}
	}, nil)
	return out
}
