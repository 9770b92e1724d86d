package dataplane

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane/nfttrace"
)

var update = flag.Bool("update", false, "rewrite testdata/*.nft from RenderText")

// Test address conventions for the rendering tests: containers in
// 10.88.0.0/24 and fd00:88::/64, peer networks 203.0.113.0/24 ("web") and
// 198.51.100.0/24 ("db"), outside addresses in 192.0.2.0/24.
var (
	a1, a2  = netip.MustParseAddr("10.88.0.4"), netip.MustParseAddr("10.88.0.5")
	a1v6    = netip.MustParseAddr("fd00:88::4")
	webNet  = netip.MustParsePrefix("203.0.113.0/24")
	webNet6 = netip.MustParsePrefix("2001:db8:1::/48")
	dbNet   = netip.MustParsePrefix("198.51.100.0/24")
	dbNet6  = netip.MustParsePrefix("2001:db8:2::/48")
	podNet  = netip.MustParsePrefix("10.88.0.0/24")
	podNet6 = netip.MustParsePrefix("fd00:88::/64")
)

// Origins of the rendering tests' rules.
const (
	oWeb, oDNS, oDenyAll, oDB, oStagedDeny, oTail, oDefault = 11, 12, 13, 14, 15, 16, 17
)

var goldenSets = []Set{
	{Name: "zone/web", Prefixes: []netip.Prefix{webNet, webNet6, netip.PrefixFrom(a2, 32)}},
	{Name: "zone/db", Prefixes: []netip.Prefix{dbNet, dbNet6}},
}

// goldenWorlds are the rulesets pinned as nft text in testdata/NAME.nft.
// goldenWorldT is one golden world: a ruleset and the config it renders with.
type goldenWorldT struct {
	name string
	cfg  Config
	rs   Ruleset
}

var goldenWorlds = []goldenWorldT{
	{"empty", Config{}, Ruleset{}},
	{"allow-deny-ports", Config{}, Ruleset{Sets: goldenSets, Endpoints: []Endpoint{{
		ID: "c1/eth0", IPs: []netip.Addr{a1, a1v6},
		Egress: Policy{Enforced: []Rule{
			{Peer: "zone/web", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 443, Last: 443}, {Protocol: segment.TCP, First: 8000, Last: 8100}}, Action: segment.Allow, Origin: oWeb},
			{Ports: []segment.PortRange{{Protocol: segment.UDP, First: 53, Last: 53}}, Action: segment.Allow, Origin: oDNS},
			{Peer: "zone/db", Ports: []segment.PortRange{{Protocol: segment.ICMP}, {Protocol: segment.ICMPv6}}, Action: segment.Allow, Origin: oDB},
			{Action: segment.Deny, Origin: oDenyAll},
		}},
		Ingress: Policy{Enforced: []Rule{
			{Peer: "zone/web", PeerNot: true, Action: segment.Deny, Origin: oDenyAll},
			{Ports: []segment.PortRange{{Protocol: segment.SCTP}}, Action: segment.Allow, Origin: oWeb},
		}},
	}}}},
	{"staged", Config{}, Ruleset{Sets: goldenSets, Endpoints: []Endpoint{{
		ID: "c1/eth0", IPs: []netip.Addr{a1},
		Egress: Policy{
			Enforced:     []Rule{{Peer: "zone/db", Action: segment.Allow, Origin: oDB}},
			EnforcedTail: []Rule{{Action: segment.Allow, Origin: oDefault}},
			Staged:       []Rule{{Peer: "zone/db", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 22, Last: 22}}, Action: segment.Deny, Origin: oStagedDeny}, {Peer: "zone/db", Action: segment.Allow, Origin: oDB}},
			StagedTail:   []Rule{{Action: segment.Deny, Origin: oDefault}},
		},
		// A Monitor-mode zone default: the staged pass has a tail only.
		Ingress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}, Staged: []Rule{}, StagedTail: []Rule{{Action: segment.Deny, Origin: oStagedDeny}}},
	}}}},
	{"delegate-tail", Config{}, Ruleset{Sets: goldenSets, Endpoints: []Endpoint{{
		ID: "c1/eth0", IPs: []netip.Addr{a1},
		Egress: Policy{
			Enforced:     []Rule{{Peer: "zone/db", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 5432, Last: 5432}}, Action: segment.Delegate, Origin: oDB}, {Peer: "zone/db", Action: segment.Deny, Origin: oDenyAll}},
			EnforcedTail: []Rule{{Peer: "zone/db", Ports: []segment.PortRange{{Protocol: segment.TCP, First: 5432, Last: 5432}}, Action: segment.Allow, Origin: oTail}, {Action: segment.Deny, Origin: oDefault}},
		},
	}}}},
	{"dual-stack-veth", Config{}, Ruleset{Sets: goldenSets, Managed: []netip.Prefix{podNet, podNet6}, Endpoints: []Endpoint{
		{
			ID: "c1/eth0", HostIface: "vethb9d3a290", IPs: []netip.Addr{a1, a1v6},
			Egress:  Policy{Enforced: []Rule{{Peer: "zone/web", Action: segment.Allow, Origin: oWeb}, {Action: segment.Deny, Origin: oDenyAll}}},
			Ingress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}},
		},
		{
			ID: "c2/eth0", HostIface: "veth5e61c0aa", IPs: []netip.Addr{a2},
			Egress:  Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}},
			Ingress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}},
		},
	}}},
	{"quarantine-managed", Config{}, Ruleset{
		Managed:    []netip.Prefix{podNet, podNet6, netip.MustParsePrefix("10.89.0.0/16")},
		Quarantine: []netip.Addr{netip.MustParseAddr("10.88.0.9"), netip.MustParseAddr("fd00:88::9")},
		Node:       []netip.Addr{netip.MustParseAddr("10.88.0.1"), netip.MustParseAddr("fd00:88::1")},
		Endpoints: []Endpoint{{ID: "c1/eth0", IPs: []netip.Addr{a1},
			Egress:  Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}},
			Ingress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}}}},
	}},
	{"log-accepted-deny-host", Config{LogAccepted: true, DenyHostAccess: true, NFLOGGroup: 7, LogRate: 50, LogBurst: 5}, Ruleset{
		Sets: goldenSets,
		Endpoints: []Endpoint{{ID: "c1/eth0", IPs: []netip.Addr{a1},
			Egress:  Policy{Enforced: []Rule{{Action: segment.Allow, Origin: oDefault}}},
			Ingress: Policy{Enforced: []Rule{{Peer: "zone/web", Action: segment.Allow, Origin: oWeb}, {Action: segment.Deny, Origin: oDenyAll}}}}},
	}},
}

// TestRenderTextGolden pins the rendered table of each golden world as
// nft text (go test -run RenderTextGolden -update rewrites them), checks
// the rendering is deterministic, and that the tracer reads all of it.
func TestRenderTextGolden(t *testing.T) {
	for _, w := range goldenWorlds {
		t.Run(w.name, func(t *testing.T) {
			got, err := RenderText(w.cfg, &w.rs)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 { // map order must not show
				again, err := RenderText(w.cfg, &w.rs)
				if err != nil || again != got {
					t.Fatalf("second rendering differs (%v):\n%s", err, cmp.Diff(got, again))
				}
			}
			checkGolden(t, filepath.Join("testdata", w.name+".nft"), got)
			if _, err := nfttrace.Parse(got); err != nil {
				t.Errorf("the tracer cannot read the rendering: %v", err)
			}
		})
	}
}

// checkGolden compares got with the golden file at path (written first
// with -update).
func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}

// TestRenderGuardTextGolden pins the bridge guard's table for a world
// with two pod networks of IPv4 and one of IPv6.
func TestRenderGuardTextGolden(t *testing.T) {
	w := goldenWorld(t, "quarantine-managed")
	if len(w.rs.Managed) == 0 {
		t.Fatalf("golden world %s has no pod networks", w.name)
	}
	got, err := RenderGuardText(w.cfg, &w.rs)
	if err != nil {
		t.Fatal(err)
	}
	checkGolden(t, filepath.Join("testdata", "bridge-guard.nft"), got)
}

// TestTraceGoldenWorlds traces packets through the golden worlds: what
// each rule shape does to a connection, and the mark it leaves.
func TestTraceGoldenWorlds(t *testing.T) {
	tables := map[string]*nfttrace.Table{}
	for _, w := range goldenWorlds {
		text, err := RenderText(w.cfg, &w.rs)
		if err != nil {
			t.Fatal(err)
		}
		if tables[w.name], err = nfttrace.Parse(text); err != nil {
			t.Fatalf("%s: %v", w.name, err)
		}
	}
	a := netip.MustParseAddr
	out, web, db := a("192.0.2.1"), a("203.0.113.7"), a("198.51.100.7")
	const tcp, udp, sctp, icmp, icmp6 = 6, 17, 132, 1, 58
	mark := func(e, s segment.Action, eo, so uint16) uint32 { return uint32(MakeMark(e, s, eo, so)) }
	for _, tc := range []struct {
		world, name string
		p           nfttrace.Packet
		verdict     string
		mark        uint32
		counters    []string
	}{
		{"empty", "nothing to decide", nfttrace.Packet{Src: a1, Dst: out, Proto: tcp, DPort: 80}, "accept", 0, nil},
		{"allow-deny-ports", "egress port range", nfttrace.Packet{Src: a1, Dst: web, Proto: tcp, DPort: 8050}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
		{"allow-deny-ports", "egress to a member address", nfttrace.Packet{Src: a1, Dst: a2, Proto: tcp, DPort: 443}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
		{"allow-deny-ports", "egress port outside the ranges", nfttrace.Packet{Src: a1, Dst: web, Proto: tcp, DPort: 8101}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"allow-deny-ports", "egress any peer", nfttrace.Packet{Src: a1, Dst: out, Proto: udp, DPort: 53}, "accept", mark(segment.Allow, segment.Allow, oDNS, oDNS), nil},
		{"allow-deny-ports", "egress icmp", nfttrace.Packet{Src: a1, Dst: db, Proto: icmp, ICMPType: 8}, "accept", mark(segment.Allow, segment.Allow, oDB, oDB), nil},
		{"allow-deny-ports", "egress icmpv6", nfttrace.Packet{Src: a1v6, Dst: a("2001:db8:2::7"), Proto: icmp6, ICMPType: 128}, "accept", mark(segment.Allow, segment.Allow, oDB, oDB), nil},
		{"allow-deny-ports", "icmp to an ipv6 peer of the other set", nfttrace.Packet{Src: a1v6, Dst: a("2001:db8:1::7"), Proto: icmp6, ICMPType: 128}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"allow-deny-ports", "ingress negated peer", nfttrace.Packet{Src: out, Dst: a1, Proto: sctp, DPort: 9}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"allow-deny-ports", "ingress from the peer set", nfttrace.Packet{Src: web, Dst: a1, Proto: sctp, DPort: 9}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
		{"allow-deny-ports", "ingress falls off the list", nfttrace.Packet{Src: web, Dst: a1, Proto: tcp, DPort: 9}, "drop", mark(segment.Deny, segment.Deny, 0, 0), []string{counterNoMatch}},
		{"allow-deny-ports", "established passes", nfttrace.Packet{Src: out, Dst: a1, Proto: tcp, DPort: 9, CtState: "established", CtMark: 7}, "accept", 7, nil},
		{"allow-deny-ports", "invalid drops", nfttrace.Packet{Src: a1, Dst: web, Proto: tcp, DPort: 443, CtState: "invalid"}, "drop", 0, nil},
		{"staged", "staged deny, enforced allow", nfttrace.Packet{Src: a1, Dst: db, Proto: tcp, DPort: 22}, "accept", mark(segment.Allow, segment.Deny, oDB, oStagedDeny), nil},
		{"staged", "both allow", nfttrace.Packet{Src: a1, Dst: db, Proto: tcp, DPort: 80}, "accept", mark(segment.Allow, segment.Allow, oDB, oDB), nil},
		{"staged", "both tails", nfttrace.Packet{Src: a1, Dst: out, Proto: tcp, DPort: 80}, "accept", mark(segment.Allow, segment.Deny, oDefault, oDefault), nil},
		{"staged", "staged list is a tail only", nfttrace.Packet{Src: out, Dst: a1, Proto: udp, DPort: 80}, "accept", mark(segment.Allow, segment.Deny, oDefault, oStagedDeny), nil},
		{"delegate-tail", "delegated to the tail", nfttrace.Packet{Src: a1, Dst: db, Proto: tcp, DPort: 5432}, "accept", mark(segment.Allow, segment.Allow, oTail, oTail), nil},
		{"delegate-tail", "after the delegate", nfttrace.Packet{Src: a1, Dst: db, Proto: tcp, DPort: 5433}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"delegate-tail", "no match: the tail", nfttrace.Packet{Src: a1, Dst: out, Proto: tcp, DPort: 5432}, "drop", mark(segment.Deny, segment.Deny, oDefault, oDefault), nil},
		{"dual-stack-veth", "ipv6 egress", nfttrace.Packet{Src: a1v6, Dst: a("2001:db8:1::9"), Proto: tcp, DPort: 1, Iif: "vethb9d3a290"}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
		{"dual-stack-veth", "endpoint to endpoint: the source decides", nfttrace.Packet{Src: a1, Dst: a2, Proto: tcp, DPort: 1, Iif: "vethb9d3a290"}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
		{"dual-stack-veth", "spoofed ipv4", nfttrace.Packet{Src: a2, Dst: web, Proto: tcp, DPort: 1, Iif: "vethb9d3a290"}, "drop", 0, []string{counterSpoof}},
		{"dual-stack-veth", "spoofed ipv6", nfttrace.Packet{Src: a("fd00:88::5"), Dst: a("2001:db8:1::9"), Proto: tcp, DPort: 1, Iif: "vethb9d3a290"}, "drop", 0, []string{counterSpoof}},
		{"dual-stack-veth", "link-local passes anti-spoofing", nfttrace.Packet{Src: a("fe80::1"), Dst: a("ff02::1"), Proto: icmp6, ICMPType: 135, CtState: "invalid", Iif: "veth5e61c0aa"}, "accept", 0, nil},
		{"dual-stack-veth", "link-local tcp to a neighbour", nfttrace.Packet{Src: a("fe80::1"), Dst: a("fe80::2"), Proto: tcp, DPort: 22, Iif: "veth5e61c0aa"}, "drop", 0, []string{counterIfaceGuard}},
		{"dual-stack-veth", "global tcp to a link-local address", nfttrace.Packet{Src: a1v6, Dst: a("fe80::2"), Proto: tcp, DPort: 22, Iif: "vethb9d3a290"}, "drop", 0, []string{counterIfaceGuard}},
		{"dual-stack-veth", "link-local ping", nfttrace.Packet{Src: a("fe80::1"), Dst: a("fe80::2"), Proto: icmp6, ICMPType: 128, Iif: "veth5e61c0aa"}, "drop", 0, []string{counterIfaceGuard}},
		{"dual-stack-veth", "router advertisement from a container", nfttrace.Packet{Src: a("fe80::1"), Dst: a("ff02::1"), Proto: icmp6, ICMPType: 134, CtState: "invalid", Iif: "veth5e61c0aa"}, "drop", 0, []string{counterIfaceGuard}},
		{"dual-stack-veth", "unprogrammed managed address", nfttrace.Packet{Src: out, Dst: a("10.88.0.77"), Proto: tcp, DPort: 1}, "drop", 0, []string{counterUnmanaged}},
		{"dual-stack-veth", "container to the node", nfttrace.Packet{Src: a1, Dst: a("10.88.0.1"), Proto: tcp, DPort: 10250, Hook: "input", Iif: "vethb9d3a290"}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"quarantine-managed", "quarantined destination", nfttrace.Packet{Src: a1, Dst: a("10.88.0.9"), Proto: tcp, DPort: 1}, "drop", 0, []string{counterQuarantine}},
		{"quarantine-managed", "quarantined ipv6 source", nfttrace.Packet{Src: a("fd00:88::9"), Dst: a("2001:db8:9::1"), Proto: tcp, DPort: 1}, "drop", 0, []string{counterQuarantine}},
		{"quarantine-managed", "second managed prefix", nfttrace.Packet{Src: a("10.89.3.3"), Dst: a1, Proto: tcp, DPort: 1}, "drop", 0, []string{counterUnmanaged}},
		{"quarantine-managed", "node reaches its own address in a pod network", nfttrace.Packet{Src: a("10.88.0.1"), Dst: a("10.88.0.1"), Proto: tcp, DPort: 53, Hook: "output"}, "accept", 0, nil},
		{"quarantine-managed", "node's own address comes in", nfttrace.Packet{Src: a("fd00:88::1"), Dst: a("fd00:88::1"), Proto: tcp, DPort: 53, Hook: "input"}, "accept", 0, nil},
		{"quarantine-managed", "node to an unprogrammed pod address", nfttrace.Packet{Src: a("10.88.0.1"), Dst: a("10.88.0.2"), Proto: tcp, DPort: 53, Hook: "output"}, "drop", 0, []string{counterUnmanaged}},
		{"quarantine-managed", "node reaches its container", nfttrace.Packet{Src: a("10.88.0.1"), Dst: a1, Proto: tcp, DPort: 8080, Hook: "output"}, "accept", 0, nil},
		{"log-accepted-deny-host", "host access denied", nfttrace.Packet{Src: a("10.88.0.1"), Dst: a1, Proto: tcp, DPort: 8080, Hook: "output"}, "drop", mark(segment.Deny, segment.Deny, oDenyAll, oDenyAll), nil},
		{"log-accepted-deny-host", "host in the peer set", nfttrace.Packet{Src: web, Dst: a1, Proto: tcp, DPort: 8080, Hook: "output"}, "accept", mark(segment.Allow, segment.Allow, oWeb, oWeb), nil},
	} {
		t.Run(tc.world+"/"+tc.name, func(t *testing.T) {
			got, err := tables[tc.world].Trace(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if got.Verdict != tc.verdict || got.CtMark != tc.mark || !cmp.Equal(got.Counters, tc.counters) {
				t.Errorf("got %s\ncounters %v; want %s, ct mark 0x%08x, counters %v", got, got.Counters, tc.verdict, tc.mark, tc.counters)
			}
			// A decided connection is logged: denied ones always, with the
			// decision in the packet mark; accepted ones with LogAccepted.
			var logs []string
			switch {
			case tc.mark == 0:
			case got.Verdict == "drop":
				logs = []string{"netseg deny"}
				if got.Mark != got.CtMark {
					t.Errorf("packet mark 0x%08x, want the ct mark 0x%08x", got.Mark, got.CtMark)
				}
			case tc.world == "log-accepted-deny-host":
				logs = []string{"netseg allow"}
			}
			if tc.p.CtState == "" && !cmp.Equal(got.Logs, logs) {
				t.Errorf("logs %q, want %q", got.Logs, logs)
			}
		})
	}
}

func goldenWorld(t *testing.T, name string) goldenWorldT {
	t.Helper()
	for _, w := range goldenWorlds {
		if w.name == name {
			return w
		}
	}
	t.Fatalf("no golden world %s", name)
	return goldenWorldT{}
}
