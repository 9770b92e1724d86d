package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/segment"
)

// Every name the dataplane gives a kernel object is declared or derived in
// this file, and the base chains with their fixed rules are declared here
// as data: render loops over them.

// The fixed chains: the three on netfilter hooks, and the shared verdict
// tails every policy rule goes to.
const (
	chainForward = "forward"
	chainInput   = "input"
	chainOutput  = "output"
	chainAllow   = "allow"
	chainDeny    = "deny"
)

// The table's named counters.
const (
	counterLogLimitAllow = "log_limited_allow" // accepted new connections not logged (rate limit)
	counterLogLimitDeny  = "log_limited_deny"  // denied first packets not logged (rate limit)
	counterSpoof         = "spoofed"           // packets dropped by anti-spoofing
	counterQuarantine    = "quarantined"       // packets dropped for quarantined addresses
	counterUnmanaged     = "unprogrammed"      // packets to/from managed addresses with no rules
	counterNoMatch       = "no_rule_matched"   // fell off an endpoint chain (fail closed)
	counterIfaceGuard    = "iface_guard"       // what a container's interface must never carry (IPv6 link-local other than ND/MLD, router advertisements)
)

// The bridge guard: a table of the bridge family, of the same name as the
// inet table, whose forward chain sees every frame a bridge forwards from
// one port to another whatever br_netfilter's state. The inet forward
// chain marks every packet it sees (Config.ForwardMark); a pod-network
// packet bridged without that mark was never decided (br_netfilter is
// unloaded, or its sysctls are off) and the guard drops it and counts it.
const (
	guardChain = "forward"
	// guardPriority: after br_netfilter's own forward hook (priority 0,
	// NF_BR_PRI_BRNF), which runs the inet forward hook and reinjects the
	// accepted packet into the bridge hooks after itself.
	guardPriority = 100
	// CounterBridgeUnchecked counts pod-network packets the bridge
	// forwarded without the inet forward chain seeing them.
	CounterBridgeUnchecked = "bridge_unchecked"
	// CounterBridgeMulticast counts broadcast and multicast packets the
	// bridge would have carried from one port to another (neighbour
	// discovery and MLD excepted).
	CounterBridgeMulticast = "bridge_multicast"
)

// Named counters of the NFLOG rate limits: first packets decided but not
// logged (the flow log reports their deltas as losses).
const (
	CounterLogLimitedAllow = counterLogLimitAllow
	CounterLogLimitedDeny  = counterLogLimitDeny
)

// Counters lists the named counters of the table.
var Counters = []string{counterLogLimitAllow, counterLogLimitDeny, counterSpoof, counterQuarantine, counterUnmanaged, counterNoMatch, counterIfaceGuard}

// famSet is a set the table holds once per address family.
type famSet struct {
	names [7]string // by family: names[4], names[6]
	kind  setKind
	// foreign sets are created by the dataplane but filled by someone else
	// (the CNI plugin's quarantine).
	foreign bool
}

func (s famSet) name(fam int) string { return s.names[fam] }

// key is interval key k as an element key of s: an address set's key is
// the address alone.
func (s famSet) key(k elemKey) elemKey {
	if s.kind == kindAddr {
		return elemKey{first: k.first}
	}
	return k
}

var (
	// setQuarantine: addresses of interfaces known but not programmed.
	setQuarantine = famSet{names: [7]string{4: "quarantine4", 6: "quarantine6"}, kind: kindAddr}
	// setCNIQuarantine: the plugin's quarantine (api/agent names it).
	setCNIQuarantine = famSet{names: [7]string{4: agent.CNIQuarantineSet4, 6: agent.CNIQuarantineSet6}, kind: kindAddr, foreign: true}
	// setCNIFailOpen: the plugin's fail-open addresses (unsegmented until
	// the agent adopts them).
	setCNIFailOpen = famSet{names: [7]string{4: agent.CNIFailOpenSet4, 6: agent.CNIFailOpenSet6}, kind: kindAddr, foreign: true}
	// setEgress and setIngress: endpoint address -> goto its dispatch chain.
	setEgress  = famSet{names: [7]string{4: "egress4", 6: "egress6"}, kind: kindVmap}
	setIngress = famSet{names: [7]string{4: "ingress4", 6: "ingress6"}, kind: kindVmap}
	// setLocal: every programmed endpoint address.
	setLocal = famSet{names: [7]string{4: "local4", 6: "local6"}, kind: kindAddr}
	// setNode: the node's own addresses, which the catch-all leaves alone.
	setNode = famSet{names: [7]string{4: "node4", 6: "node6"}, kind: kindAddr}
	// setManaged: the pod networks (interval set): fail closed inside them.
	setManaged = famSet{names: [7]string{4: "managed4", 6: "managed6"}, kind: kindInterval}
	// The bridge guard's copy of the pod networks, in its own table: the
	// networks wider than one address (interval set, few and rarely
	// changing), and the single addresses of IPAMs that register /32 and
	// /128 (hash set). An interval set's commit walks its whole tree, so
	// a copy of a thousand /32s would cost every ADD that walk once more.
	setGuardNets  = famSet{names: [7]string{4: "managed4", 6: "managed6"}, kind: kindInterval}
	setGuardHosts = famSet{names: [7]string{4: "managed_hosts4", 6: "managed_hosts6"}, kind: kindAddr}
)

// fixedSets are the sets every render creates with the elements the
// ruleset gives them directly (managed is rendered from its prefixes).
var fixedSets = []famSet{setQuarantine, setCNIQuarantine, setCNIFailOpen, setEgress, setIngress, setLocal, setNode}

// CNIQuarantineSet names the set (one per family: 4, 6) where the CNI
// plugin quarantines the addresses of an interface whose ADD failed while
// the agent could not record it. The plugin owns its elements.
func CNIQuarantineSet(fam int) string { return setCNIQuarantine.name(fam) }

// Prefixes of the names derived from the ruleset. Derived names are
// unique by construction up to their hash; render fails on a collision
// rather than let two objects share a kernel name.
const (
	prefixPeer        = "p_"     // p_<peer>_4, p_<peer>_6: a peer set per family
	prefixDispatchOut = "epo_"   // epo_<hash of endpoint id>: an endpoint's egress dispatch
	prefixDispatchIn  = "epi_"   // epi_<hash of endpoint id>: its ingress dispatch
	prefixSpoof       = "spoof_" // spoof_<host veth>: anti-spoofing on the veth's ingress hook
	dirOut            = "out"    // out_<policy key>: egress policy chains
	dirIn             = "in"     // in_<policy key>: ingress policy chains
	suffixStaged      = "_s"     // <policy chain>_s: its staged pass
	suffixTail        = "_t"     // <chain>_t: the tail a Delegate or the end of a list goes to
)

var nonName = regexp.MustCompile(`[^a-zA-Z0-9_]+`)

// readable turns a peer set or device name into an nft identifier: the
// readable part, cut to stay short, plus a hash when anything was lost.
func readable(prefix, name string) string {
	clean := strings.Trim(nonName.ReplaceAllString(name, "_"), "_")
	if clean == name && len(clean) <= 40 {
		return prefix + clean
	}
	if len(clean) > 32 {
		clean = clean[:32]
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + clean + "_" + hex.EncodeToString(sum[:4])
}

// peerSetNames names a peer's two sets, [4] and [6].
func peerSetNames(peer string) [7]string {
	base := readable(prefixPeer, peer)
	return [7]string{4: base + "_4", 6: base + "_6"}
}

// dispatchChainNames names an endpoint's dispatch chains after a short
// hash of its id: [0] egress, [1] ingress.
func dispatchChainNames(id string) [2]string {
	sum := sha256.Sum256([]byte(id))
	h := hex.EncodeToString(sum[:6])
	return [2]string{prefixDispatchOut + h, prefixDispatchIn + h}
}

// policyChainName names a policy's entry chain after its content.
func policyChainName(dir string, key policyKey) string { return dir + "_" + key.String() }

// spoofChainName names the anti-spoofing chain of a host veth.
func spoofChainName(iface string) string { return readable(prefixSpoof, iface) }

// hookInetIngress is the ingress hook as the inet family numbers it
// (NF_INET_INGRESS, 5; since Linux 5.10). nftables.ChainHookIngress is the
// netdev family's number (0), which in an inet table means prerouting.
var hookInetIngress = nftables.ChainHookRef(5)

// baseChains are the chains every render creates: the three on netfilter
// hooks (at Config.Priority) and the verdict tails (regular chains).
var baseChains = []struct {
	name string
	hook *nftables.ChainHook // nil: a regular chain
}{
	{chainForward, nftables.ChainHookForward},
	{chainInput, nftables.ChainHookInput},
	{chainOutput, nftables.ChainHookOutput},
	{chainAllow, nil},
	{chainDeny, nil},
}

// baseRule is one fixed rule of the base chains: the chains that carry it,
// in this order, whether it stands once per address family (4, then 6),
// and when the config wants it.
type baseRule struct {
	on   []string
	fams bool
	when func(Config) bool // nil: always
	rule func(cfg Config, fam int) *rb
}

var (
	onHooks    = []string{chainForward, chainInput, chainOutput}
	onFromPods = []string{chainForward, chainInput}  // the source may be a local endpoint
	onToPods   = []string{chainForward, chainOutput} // the destination may be a local endpoint
	onForward  = []string{chainForward}
)

// baseRules declares the base chains' rules. The hook chains read:
//
//	chain forward { type filter hook forward priority 0; policy accept;
//	  meta mark set meta mark or 0x00400000   (Config.ForwardMark: seen here; the bridge guard checks it)
//	  ct state established,related ct mark and 0x0000c000 != 0x00008000 accept
//	  ct state established,related goto deny   (a live connection the policy denies now: Remark)
//	  meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type 130-136 accept   (ND, MLD; and 143)
//	  ct state invalid drop
//	  ip saddr @quarantine4 counter name "quarantined" drop    (and daddr, and ip6, and cniquarantine)
//	  ip saddr @cnifailopen4 accept    (and daddr, and ip6: failurePolicy open, until adopted)
//	  ip saddr @managed4 ip saddr != @local4 ip saddr != @node4 counter name "unprogrammed" drop   (and daddr: fail closed)
//	  ip saddr vmap @egress4          # a local endpoint opens it: its egress chain decides
//	  ip daddr vmap @ingress4         # else a local endpoint receives it: its ingress chain decides
//	  ip saddr @local4 counter name "unprogrammed" drop   (and daddr: a local address no map element decided)
//	}
//	chain input  { the rules on the source }
//	chain output { the rules on the destination; with DenyHostAccess: ip daddr vmap @ingress4 }
//	chain allow  { accept }   (with LogAccepted: limit rate over R/second burst B packets
//	               counter name "log_limited_allow" accept; log prefix "netseg allow" group G accept)
//	chain deny   { limit rate over R/second burst B packets counter name "log_limited_deny" drop
//	               meta mark set ct mark log prefix "netseg deny" group G drop }
//
// The deny chain copies the decision into the packet mark so that the NFLOG
// message carries it (NFULA_MARK) on kernels whose NFLOG cannot attach the
// conntrack entry; the packet is dropped right after, so the mark never
// reaches anything else. Accepted packets keep their mark: their decision
// is read from conntrack events.
var baseRules = []baseRule{
	{on: onForward, rule: markForwarded},
	// Established packets pass unless the connection's mark says the
	// enforced policy denies it now (Namespace.Remark rewrites the marks of
	// live connections when the policy changes): those go to deny, logged
	// with the rule that denies them.
	{on: onForward, rule: establishedAllowed},
	{on: onForward, rule: establishedDenied},
	{on: []string{chainInput, chainOutput}, rule: established},
	// Neighbour discovery and MLD are not tracked by conntrack (their ct
	// state reads invalid) and must pass for IPv6 to work at all.
	{on: onHooks, rule: neighbourDiscovery},
	{on: onHooks, rule: multicastListeners},
	{on: onForward, rule: func(Config, int) *rb { return rule().ctState("invalid", 1).verdict(expr.VerdictDrop, "") }},
	{on: onFromPods, fams: true, rule: quarantined(setQuarantine, true)},
	{on: onToPods, fams: true, rule: quarantined(setQuarantine, false)},
	{on: onFromPods, fams: true, rule: quarantined(setCNIQuarantine, true)},
	{on: onToPods, fams: true, rule: quarantined(setCNIQuarantine, false)},
	{on: onFromPods, fams: true, rule: failOpen(true)},
	{on: onToPods, fams: true, rule: failOpen(false)},
	{on: onFromPods, fams: true, rule: unprogrammed(true)},
	{on: onToPods, fams: true, rule: unprogrammed(false)},
	{on: onFromPods, fams: true, rule: func(_ Config, fam int) *rb {
		return rule().family(fam).addrVmap(true, setEgress.name(fam))
	}},
	{on: onForward, fams: true, rule: toIngress},
	{on: []string{chainOutput}, fams: true, when: func(c Config) bool { return c.DenyHostAccess }, rule: toIngress},
	// A packet of a local endpoint that got past its verdict map's lookup
	// undecided is dropped, not left to the chain's policy (accept).
	// Never in steady state: every local address has its elements. But a
	// full rebuild deletes the old maps in the transaction that creates
	// the new ones, and a packet that entered the old chain before the
	// commit and looks the map up after it finds the element inactive.
	// Plain sets keep their elements when deleted, so this lookup holds
	// (TestRebuildAdmitsNothing).
	{on: onFromPods, fams: true, rule: undispatched(true)},
	{on: onForward, fams: true, rule: undispatched(false)},
	{on: []string{chainOutput}, fams: true, when: func(c Config) bool { return c.DenyHostAccess }, rule: undispatched(false)},

	{on: []string{chainAllow}, when: func(c Config) bool { return !c.LogAccepted }, rule: func(Config, int) *rb {
		return rule().verdict(expr.VerdictAccept, "")
	}},
	{on: []string{chainAllow}, when: func(c Config) bool { return c.LogAccepted }, rule: func(c Config, _ int) *rb {
		return rule().limitOver(c.LogRate, c.LogBurst).counter(counterLogLimitAllow).verdict(expr.VerdictAccept, "")
	}},
	{on: []string{chainAllow}, when: func(c Config) bool { return c.LogAccepted }, rule: func(c Config, _ int) *rb {
		return rule().log("netseg allow", c.NFLOGGroup).verdict(expr.VerdictAccept, "")
	}},
	{on: []string{chainDeny}, rule: func(c Config, _ int) *rb {
		return rule().limitOver(c.LogRate, c.LogBurst).counter(counterLogLimitDeny).verdict(expr.VerdictDrop, "")
	}},
	{on: []string{chainDeny}, rule: func(c Config, _ int) *rb {
		return rule().metaMarkFromCt().log("netseg deny", c.NFLOGGroup).verdict(expr.VerdictDrop, "")
	}},
}

// The base chains' rules that read no set (a hold keeps them, hold.go).

// markForwarded: meta mark set meta mark or 0x00400000 (Config.ForwardMark).
func markForwarded(c Config, _ int) *rb { return rule().metaMarkOr(c.ForwardMark) }

// establishedAllowed: ct state established,related ct mark and 0x0000c000
// != 0x00008000 accept.
func establishedAllowed(Config, int) *rb {
	return rule().ctState("established,related", 2|4).ctMarkNot(enforcedVerdictMask, enforcedDenyBits).verdict(expr.VerdictAccept, "")
}

// establishedDenied: ct state established,related goto deny.
func establishedDenied(Config, int) *rb {
	return rule().ctState("established,related", 2|4).verdict(expr.VerdictGoto, chainDeny)
}

// established: ct state established,related accept.
func established(Config, int) *rb {
	return rule().ctState("established,related", 2|4).verdict(expr.VerdictAccept, "")
}

// neighbourDiscovery: meta nfproto ipv6 meta l4proto ipv6-icmp icmpv6 type
// 130-136 accept.
func neighbourDiscovery(Config, int) *rb {
	return rule().family(6).l4(segment.ICMPv6).icmpType(130, 136).verdict(expr.VerdictAccept, "")
}

// multicastListeners: ... icmpv6 type 143 accept (MLDv2 reports).
func multicastListeners(Config, int) *rb {
	return rule().family(6).l4(segment.ICMPv6).icmpType(143, 143).verdict(expr.VerdictAccept, "")
}

// failOpen: ip saddr|daddr @cnifailopen4 accept (a container the plugin
// started unsegmented under failurePolicy open, until the agent adopts it).
func failOpen(src bool) func(Config, int) *rb {
	return func(_ Config, fam int) *rb {
		return rule().family(fam).addrIn(src, setCNIFailOpen.name(fam), false).verdict(expr.VerdictAccept, "")
	}
}

// quarantined: ip saddr|daddr @<set> counter name "quarantined" drop.
func quarantined(s famSet, src bool) func(Config, int) *rb {
	return func(_ Config, fam int) *rb {
		return rule().family(fam).addrIn(src, s.name(fam), false).counter(counterQuarantine).verdict(expr.VerdictDrop, "")
	}
}

// unprogrammed: ip saddr|daddr @managed4 ip saddr|daddr != @local4
// ip saddr|daddr != @node4 counter name "unprogrammed" drop: inside the
// pod networks, an address without rules carries nothing (fail closed),
// unless it is the node's own.
func unprogrammed(src bool) func(Config, int) *rb {
	return func(_ Config, fam int) *rb {
		return rule().family(fam).addrIn(src, setManaged.name(fam), false).addrIn(src, setLocal.name(fam), true).
			addrIn(src, setNode.name(fam), true).counter(counterUnmanaged).verdict(expr.VerdictDrop, "")
	}
}

// undispatched: ip saddr|daddr @local4 counter name "unprogrammed" drop,
// after the verdict maps.
func undispatched(src bool) func(Config, int) *rb {
	return func(_ Config, fam int) *rb {
		return rule().family(fam).addrIn(src, setLocal.name(fam), false).counter(counterUnmanaged).verdict(expr.VerdictDrop, "")
	}
}

// toIngress: ip daddr vmap @ingress4.
func toIngress(_ Config, fam int) *rb {
	return rule().family(fam).addrVmap(false, setIngress.name(fam))
}

// guardMulticast are the destinations no container may send to another
// through the bridge.
var guardMulticast = []netip.Prefix{
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("255.255.255.255/32"),
	netip.MustParsePrefix("ff00::/8"),
}

// guardRules are the bridge guard's forward chain:
//
//	chain forward { type filter hook forward priority 100; policy accept;
//	  meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type 130-136 accept   (ND, MLD; and 143)
//	  meta protocol ip ip daddr 224.0.0.0/4 counter name "bridge_multicast" drop
//	  meta protocol ip ip daddr 255.255.255.255 counter name "bridge_multicast" drop
//	  meta protocol ip6 ip6 daddr ff00::/8 counter name "bridge_multicast" drop
//	  meta mark and 0x00400000 == 0x00400000 meta mark set meta mark and 0xffbfffff accept
//	  meta protocol ip ip saddr @managed4 counter name "bridge_unchecked" drop   (and daddr, and ip6)
//	}
//
// Broadcast and multicast are decided by destination address, which names
// no endpoint: the forward chain would let the sender's egress decide
// alone, and the bridge floods the packet to every port. No container
// receives another's broadcast or multicast (the IP daddr is matched, not
// the frame's, so a group address sent to a unicast MAC is dropped too).
// The mark is cleared on the way out: it means something only between the
// two hooks.
func guardRules(cfg Config) []*rb {
	out := guardHead(cfg)
	for _, fam := range []int{4, 6} {
		for _, src := range []bool{true, false} {
			for _, set := range []famSet{setGuardNets, setGuardHosts} {
				out = append(out, rule().metaProtocol(fam).addrIn(src, set.name(fam), false).
					counter(CounterBridgeUnchecked).verdict(expr.VerdictDrop, ""))
			}
		}
	}
	return out
}

// guardHead are the guard's rules before its pod network matches.
func guardHead(cfg Config) []*rb {
	out := []*rb{
		rule().metaProtocol(6).l4(segment.ICMPv6).icmpType(130, 136).verdict(expr.VerdictAccept, ""),
		rule().metaProtocol(6).l4(segment.ICMPv6).icmpType(143, 143).verdict(expr.VerdictAccept, ""),
	}
	for _, p := range guardMulticast {
		fam := 4
		if p.Addr().Is6() {
			fam = 6
		}
		out = append(out, rule().metaProtocol(fam).addrInPrefix(false, p).counter(CounterBridgeMulticast).verdict(expr.VerdictDrop, ""))
	}
	return append(out, rule().metaMarkHas(cfg.ForwardMark).metaMarkClear(cfg.ForwardMark).verdict(expr.VerdictAccept, ""))
}

// renderBaseChains renders baseChains with their rules for cfg.
func renderBaseChains(cfg Config) []*chainSpec {
	out := make([]*chainSpec, 0, len(baseChains))
	for _, bc := range baseChains {
		c := &chainSpec{name: bc.name, hook: bc.hook}
		if bc.hook != nil {
			c.prio = cfg.Priority
		}
		for _, br := range baseRules {
			if (br.when != nil && !br.when(cfg)) || !slices.Contains(br.on, bc.name) {
				continue
			}
			if !br.fams {
				c.rules = append(c.rules, br.rule(cfg, 0))
				continue
			}
			for _, fam := range []int{4, 6} {
				c.rules = append(c.rules, br.rule(cfg, fam))
			}
		}
		out = append(out, c)
	}
	return out
}

// errNameCollision reports two objects that would share one kernel name.
func errNameCollision(kind, name, a, b string) error {
	return fmt.Errorf("kernel name collision: %s %s stands for both %s and %s", kind, name, a, b)
}
