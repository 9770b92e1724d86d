package enforce_test

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/enforce"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/nfttrace"
)

// Addresses of the traced worlds, besides policytest's: the node's own,
// and an interface registered by the CNI plugin that the policy does not
// know (quarantined).
var (
	nodeAddrs = [2]netip.Addr{netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("fd00:ffff::1")}
	ghostAddr = netip.MustParseAddr("10.0.1.250")
)

// TestRenderedRulesAgreeWithDecide compiles random worlds (policytest.Gen),
// turns them into the dataplane's ruleset, renders it as nft text and
// traces connections through the rules: between local endpoints, to and
// from outside addresses, and between the node and its endpoints, in
// random dataplane configs. The verdict and the conntrack mark must be
// Decide's; fail-closed addresses (quarantined, managed but unprogrammed)
// and spoofed sources must drop, unmarked.
func TestRenderedRulesAgreeWithDecide(t *testing.T) {
	const worlds = 300
	r := rand.New(rand.NewPCG(5, 6))
	start, conns, kinds := time.Now(), 0, map[string]int{}
	for i := range worlds {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		cfg := dataplane.Config{DenyHostAccess: r.IntN(2) == 0, LogAccepted: r.IntN(2) == 0}
		w, err := newTracedWorld(policytest.Gen(b), cfg)
		if err != nil {
			t.Fatalf("world %d (%x): %v", i, b, err)
		}
		n, bad := w.check(kinds)
		conns += n
		if len(bad) > 0 {
			t.Fatalf("world %d (%x), %+v:\n%s\n\nrendered:\n%s", i, b, cfg, strings.Join(bad, "\n\n"), w.text)
		}
	}
	t.Logf("%d worlds, %d connections traced in %v: %v", worlds, conns, time.Since(start).Round(time.Millisecond), kinds)
	// The worlds must reach every outcome, or the test proves less than
	// it says.
	for _, k := range []string{"allowed", "denied", "would-deny", "quarantined", "unprogrammed", "spoofed", "host access"} {
		if kinds[k] == 0 {
			t.Errorf("no connection ends %s", k)
		}
	}
}

// tracedWorld is one compiled world on a node: its endpoints are local,
// with host veths (some without), and its rendered table parsed.
type tracedWorld struct {
	c       *policy.Compiled
	cfg     dataplane.Config
	locals  []segment.Endpoint
	managed []netip.Prefix
	text    string
	table   *nfttrace.Table
}

func newTracedWorld(in policy.Input, cfg dataplane.Config) (*tracedWorld, error) {
	w := &tracedWorld{c: policy.Compile(in), cfg: cfg}
	for k, e := range w.c.Endpoints {
		l := segment.Endpoint{ID: fmt.Sprintf("c%d/eth0", k), Namespace: e.Namespace, Name: e.Name}
		if k%4 != 3 { // some endpoints have no device of their own
			l.HostIface = fmt.Sprintf("veth%d", k)
		}
		for _, a := range e.IPs {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			l.IPs = append(l.IPs, netip.PrefixFrom(a, bits))
		}
		w.locals = append(w.locals, l)
	}
	w.locals = append(w.locals, segment.Endpoint{ID: "ghost/eth0", Namespace: "nq", Name: "ghost", HostIface: "vethghost",
		IPs: []netip.Prefix{netip.PrefixFrom(ghostAddr, 24)}})
	rs, errs := enforce.Ruleset(w.c, w.locals)
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "ghost/eth0") {
		return nil, fmt.Errorf("ruleset: want only the ghost quarantined, got %v", errs)
	}
	w.managed = rs.Managed
	var err error
	if w.text, err = dataplane.RenderText(cfg, rs); err != nil {
		return nil, err
	}
	if w.table, err = nfttrace.Parse(w.text); err != nil {
		return nil, fmt.Errorf("parse the rendering: %w", err)
	}
	return w, nil
}

// want is what the rules must do with a connection.
type want struct {
	accept   bool
	mark     dataplane.Mark
	decision *policy.Decision // nil: not decided by policy (fail closed, host access)
	counter  string           // the named counter a fail-closed drop counts in
}

func decided(d policy.Decision) want {
	return want{accept: d.Verdict != segment.Denied, decision: &d,
		mark: dataplane.MakeMark(action(d.Enforced.Action), action(d.Staged.Action), d.Enforced.Origin.ID, d.Staged.Origin.ID)}
}

// action is a pass's final action, which the mark carries: Allow or Deny.
func action(a segment.Action) segment.Action {
	if a != segment.Allow && a != segment.Deny {
		panic("no pass ends in " + a.String())
	}
	return a
}

// check traces every connection of the world and returns how many, and
// the mismatches (a few at most). kinds counts the outcomes.
func (w *tracedWorld) check(kinds map[string]int) (int, []string) {
	var addrs []netip.Addr
	for _, a := range policytest.ProbeAddrs {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	local := map[netip.Addr]bool{}
	for _, l := range w.locals[:len(w.locals)-1] {
		for _, a := range l.Addrs() {
			local[a] = true
			addrs = append(addrs, a)
		}
	}
	addrs = append(addrs, ghostAddr)
	// failClosed is what the base chains do with an address that is no
	// programmed endpoint before any policy is consulted.
	failClosed := func(a netip.Addr) (want, bool) {
		if a == ghostAddr {
			return want{counter: "quarantined"}, true
		}
		if !local[a] && slices.ContainsFunc(w.managed, func(p netip.Prefix) bool { return p.Contains(a) }) {
			return want{counter: "unprogrammed"}, true
		}
		return want{}, false
	}
	n := 0
	var bad []string
	// via is the map a decided connection must pass: a connection from
	// a local endpoint is decided by its egress chain, one to it from
	// elsewhere by its ingress chain (README: "decided once, by the
	// source's egress chain").
	try := func(what string, p nfttrace.Packet, exp want) {
		n++
		switch {
		case exp.decision != nil:
			kinds[exp.decision.Verdict.String()]++
		case exp.counter != "":
			kinds[exp.counter]++
		default:
			kinds["host access"]++
		}
		got, err := w.table.Trace(p)
		msg := judge(got, err, exp)
		if via := map[string]string{"egress": "saddr vmap @egress", "to the node": "saddr vmap @egress",
			"ingress": "daddr vmap @ingress", "from the node": "daddr vmap @ingress"}[what]; msg == "" && exp.decision != nil && !passes(got, via) {
			msg = "not decided via " + via + "\n" + got.String()
		}
		if msg != "" && len(bad) < 3 {
			bad = append(bad, fmt.Sprintf("%s %s -> %s %s: %s", what, p.Src, p.Dst, probeText(p), msg))
		}
	}
	for k, l := range w.locals[:len(w.locals)-1] {
		e := w.c.Endpoints[k]
		self := policy.Peer{Namespace: e.Namespace, Name: e.Name}
		src := l.Addrs()[0]
		node := nodeAddrs[0]
		if src.Is6() {
			node = nodeAddrs[1]
		}
		for _, pr := range policytest.Probes {
			for _, a := range addrs {
				if a.Is4() != src.Is4() {
					continue
				}
				// Egress: the endpoint opens it, to anyone.
				exp, closed := failClosed(a)
				if !closed {
					exp = decided(w.c.Decide(self, policy.AddrPeer(a), pr.Port, pr.Proto))
				}
				try("egress", packet(src, a, pr, l.HostIface), exp)
				// Ingress from an address that is not a local endpoint.
				if local[a] {
					continue
				}
				if !closed {
					exp = decided(w.c.Decide(policy.AddrPeer(a), self, pr.Port, pr.Proto))
				}
				try("ingress", packet(a, src, pr, "eth0"), exp)
			}
			// The endpoint to the node (input), the node to it (output).
			try("to the node", withHook(packet(src, node, pr, l.HostIface), "input"),
				decided(w.c.Decide(self, policy.AddrPeer(node), pr.Port, pr.Proto)))
			exp := want{accept: true}
			if w.cfg.DenyHostAccess {
				exp = decided(w.c.Decide(policy.AddrPeer(node), self, pr.Port, pr.Proto))
			}
			try("from the node", withHook(packet(node, src, pr, ""), "output"), exp)
		}
		// Another local address as the source, from this endpoint's veth.
		if l.HostIface != "" {
			for a := range local {
				if a != src && a.Is4() == src.Is4() {
					try("spoofed", packet(a, node, policytest.Probes[0], l.HostIface), want{counter: "spoofed"})
					break
				}
			}
		}
	}
	return n, bad
}

// judge compares a trace with what was expected, and says how they
// differ ("" when they do not).
func judge(got nfttrace.Result, err error, exp want) string {
	if err != nil {
		return err.Error()
	}
	var msgs []string
	if accepted := got.Verdict == "accept"; accepted != exp.accept {
		msgs = append(msgs, fmt.Sprintf("verdict %s, want accept %v", got.Verdict, exp.accept))
	}
	if dataplane.Mark(got.CtMark) != exp.mark {
		msgs = append(msgs, fmt.Sprintf("ct mark 0x%08x, want 0x%08x", got.CtMark, uint32(exp.mark)))
	}
	if d := exp.decision; d != nil {
		v, origin := dataplane.Mark(got.CtMark).Decision()
		if v != d.Verdict || origin != d.Origin.ID {
			msgs = append(msgs, fmt.Sprintf("mark decodes to %s origin %d, Decide says %s origin %d (%s)", v, origin, d.Verdict, d.Origin.ID, d.Origin))
		}
	}
	if exp.counter != "" && !slices.Contains(got.Counters, exp.counter) {
		msgs = append(msgs, fmt.Sprintf("counters %v, want %s", got.Counters, exp.counter))
	}
	if len(msgs) == 0 {
		return ""
	}
	return strings.Join(msgs, "; ") + "\n" + got.String()
}

// passes reports whether a trace went through the base chain rule that
// contains text.
func passes(r nfttrace.Result, text string) bool {
	return slices.ContainsFunc(r.Path, func(step string) bool { return strings.Contains(step, text) })
}

func packet(src, dst netip.Addr, pr policytest.Probe, iif string) nfttrace.Packet {
	p := nfttrace.Packet{Src: src, Dst: dst, DPort: pr.Port, Iif: iif}
	switch pr.Proto {
	case segment.TCP:
		p.Proto = 6
	case segment.UDP:
		p.Proto = 17
	case segment.SCTP:
		p.Proto = 132
	case segment.ICMP: // an echo request
		p.Proto, p.ICMPType, p.DPort = 1, 8, 0
		if src.Is6() {
			p.Proto, p.ICMPType = 58, 128
		}
	}
	return p
}

func withHook(p nfttrace.Packet, hook string) nfttrace.Packet {
	p.Hook = hook
	if hook == "output" {
		p.Iif = ""
	}
	return p
}

func probeText(p nfttrace.Packet) string {
	s := fmt.Sprintf("proto %d port %d", p.Proto, p.DPort)
	if p.Hook != "" {
		s += " hook " + p.Hook
	}
	if p.Iif != "" {
		s += " iif " + p.Iif
	}
	return s
}
