package enforce_test

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/enforce"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/e2e/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

// Test address conventions: pods on 10.88.0.0/24 (a bridge in the node),
// the partners CIDR zone 203.0.113.0/24 behind a routed veth of the node;
// both exist only inside this test's namespaces.
const (
	podSubnet   = "10.88.0.0/24"
	partnerNode = "203.0.113.1/24"
	partnerAddr = "203.0.113.10"
	timeout     = 250 * time.Millisecond
)

type workload struct {
	ns, name, app string
}

var workloads = []workload{
	{"web", "frontend", "frontend"},
	{"shop", "checkout", "checkout"},
	{"shop", "redis", "redis"},
	{"pay", "payments", "payments"},
	{"ops", "monitoring", "monitoring"},
	{"default", "legacy", "legacy"}, // unzoned
}

type port struct {
	num   uint16
	proto segment.Protocol
}

var ports = []port{{8443, segment.TCP}, {8080, segment.TCP}, {6379, segment.TCP}, {443, segment.TCP},
	{22, segment.TCP}, {9090, segment.TCP}, {53, segment.UDP}, {7777, segment.UDP}}

type peer struct {
	netns *lab.Netns
	ip    netip.Addr
	p     policy.Peer
	label string
}

// TestExamplesTruthTable: the examples' policy enforced by the dataplane in
// a lab node; for every (src, dst, port) real traffic must do what the
// compiler's Decide says, and the conntrack mark of each connection that
// passed must name Decide's origin.
func TestExamplesTruthTable(t *testing.T) {
	pol, err := policyfile.Load("../../examples")
	if err != nil {
		t.Fatalf("load examples: %v", err)
	}
	l := lab.New(t)
	node := l.Node("node")
	cni := node.CNI()
	list := cni.ParseConfList(t, lab.Net{Name: "pods", Type: "bridge", Subnet: podSubnet, DataDir: t.TempDir()}.ConfList())

	var peers []peer
	var locals []segment.Endpoint
	var endpoints []policy.Endpoint
	ns, err := dataplane.OpenNamespace(node.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	for _, w := range workloads {
		c := cni.MustAdd(w.name, list, lab.Attach{PodNamespace: w.ns, PodName: w.name})
		ip := c.IP(4)
		labels := map[string]string{"app": w.app}
		endpoints = append(endpoints, policy.Endpoint{Namespace: w.ns, Name: w.name, Labels: labels, IPs: []netip.Addr{ip}})
		locals = append(locals, segment.Endpoint{ID: c.ID + "/eth0", Namespace: w.ns, Name: w.name,
			HostIface: c.HostVeth(node), IPs: []netip.Prefix{netip.PrefixFrom(ip, 24)}})
		peers = append(peers, peer{c.Netns, ip, policy.Peer{Namespace: w.ns, Name: w.name, Labels: labels, IPs: []netip.Addr{ip}}, w.ns + "/" + w.name})
	}
	partner := l.Netns("partner")
	node.Veth("v-partner", partner, "eth0")
	node.MustRun("ip", "addr", "add", partnerNode, "dev", "v-partner")
	partner.MustRun("ip", "addr", "add", partnerAddr+"/24", "dev", "eth0")
	partner.MustRun("ip", "route", "add", "default", "via", strings.Split(partnerNode, "/")[0])
	pip := netip.MustParseAddr(partnerAddr)
	peers = append(peers, peer{partner, pip, policy.AddrPeer(pip), "partner " + partnerAddr})

	compiled := policy.Compile(pol.Input(policy.Config{}, endpoints, nil))
	if len(compiled.Errors) > 0 {
		t.Fatalf("compile errors: %v", compiled.Errors)
	}
	rs, errs := enforce.Ruleset(compiled, locals)
	if len(errs) > 0 {
		t.Fatalf("ruleset: %v", errs)
	}
	dp := dataplane.New(dataplane.Config{}, ns.Dial, ns.LinkExists)
	if err := dp.Sync(rs); err != nil {
		t.Fatal(err)
	}

	// A server on every port of every peer.
	for _, p := range peers {
		for _, pt := range ports {
			addr := netip.AddrPortFrom(p.ip, pt.num).String()
			if pt.proto == segment.UDP {
				p.netns.ListenUDP(addr)
			} else {
				p.netns.ListenTCP(addr)
			}
		}
	}

	type result struct {
		src, dst peer
		pt       port
		want     policy.Decision
		err      error
	}
	var results []result
	for _, src := range peers {
		for _, dst := range peers {
			if src.ip == dst.ip {
				continue
			}
			for _, pt := range ports {
				results = append(results, result{src: src, dst: dst, pt: pt, want: compiled.Decide(src.p, dst.p, pt.num, pt.proto)})
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range results {
		wg.Add(1)
		sem <- struct{}{}
		go func(r *result) {
			defer wg.Done()
			defer func() { <-sem }()
			r.err = r.src.netns.Probe(strings.ToLower(r.pt.proto.String()), netip.AddrPortFrom(r.dst.ip, r.pt.num), timeout)
		}(&results[i])
	}
	wg.Wait()

	marks := conntrackMarks(t, node)
	counts := map[segment.Verdict]int{}
	for _, r := range results {
		name := fmt.Sprintf("%s -> %s %d/%s (%s by %s)", r.src.label, r.dst.label, r.pt.num, r.pt.proto, r.want.Verdict, r.want.Origin)
		counts[r.want.Verdict]++
		passes := r.want.Verdict != segment.Denied
		switch {
		case passes && r.err != nil:
			t.Errorf("%s: traffic failed: %v", name, r.err)
			continue
		case !passes && r.err == nil:
			t.Errorf("%s: traffic passed", name)
			continue
		case !passes && !errors.Is(r.err, lab.ErrNoReply):
			t.Errorf("%s: want a silent drop, got %v", name, r.err)
			continue
		case !passes:
			continue
		}
		key := fmt.Sprintf("%s %s %s %d", strings.ToLower(r.pt.proto.String()), r.src.ip, r.dst.ip, r.pt.num)
		mark, ok := marks[key]
		verdict, origin := dataplane.Mark(mark).Decision()
		if !ok || verdict != r.want.Verdict || origin != r.want.Origin.ID {
			// Before failing, read this entry alone: the whole-table dump
			// walks a table that changes as the probes' entries end, and
			// can skip an entry. Once (one CI run) it also gave a mark no
			// rule of this policy writes, 0x1a397 (deny by origin 9111,
			// in a policy of a few dozen origins), for an allowed
			// connection; reruns did not repeat it and the cause is not
			// known. The verdict is held to the entry's own mark, and a
			// mark that differs from the dump's is logged.
			one := conntrackMarks(t, node, "-p", strings.ToLower(r.pt.proto.String()), "-s", r.src.ip.String(), "-d", r.dst.ip.String(), "--dport", strconv.Itoa(int(r.pt.num)))
			switch again, found := one[key]; {
			case !found && !ok:
				t.Errorf("%s: no conntrack entry %q", name, key)
				continue
			case found:
				if ok && again != mark {
					t.Logf("%s: the table dump said mark %#x, the entry says %#x", name, mark, again)
				}
				mark = again
				verdict, origin = dataplane.Mark(mark).Decision()
			}
		}
		if verdict != r.want.Verdict || origin != r.want.Origin.ID {
			o, _ := compiled.Origin(origin)
			t.Errorf("%s: conntrack mark %#x says %s by %s", name, mark, verdict, o)
		}
	}
	t.Logf("%d probes: %d allowed, %d would-deny, %d denied", len(results), counts[segment.Allowed], counts[segment.WouldDeny], counts[segment.Denied])
	for _, v := range []segment.Verdict{segment.Allowed, segment.WouldDeny, segment.Denied} {
		if counts[v] == 0 {
			t.Errorf("the truth table has no %s case", v)
		}
	}
}

// conntrackMarks reads the node's conntrack table: "proto src dst dport" ->
// mark, from the original direction of each entry.
func conntrackMarks(t *testing.T, node *lab.Netns, filter ...string) map[string]uint32 {
	out, err := node.Run("conntrack", append([]string{"-L"}, filter...)...)
	if err != nil && !strings.Contains(out, "flow entries") {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^(tcp|udp)\s.*?src=(\S+) dst=(\S+) sport=\d+ dport=(\d+).*\bmark=(\d+)`)
	marks := map[string]uint32{}
	for _, line := range strings.Split(out, "\n") {
		m := re.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		v, _ := strconv.ParseUint(m[5], 10, 32)
		marks[fmt.Sprintf("%s %s %s %s", m[1], m[2], m[3], m[4])] = uint32(v)
	}
	return marks
}
