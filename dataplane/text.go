package dataplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
)

// RenderText renders rs as the nft text of the whole desired table, close
// to what `nft list table inet netseg` prints: the counters, the sets and
// maps with their type, flags and elements (in address order), and the
// chains by name with their rules. It is pure and deterministic; tests pin
// it as golden text and trace packets through it without a kernel.
//
// It differs from the kernel's listing where the listing would hide what
// the rules do: rules read as the builder wrote them (rb.String: "meta
// nfproto ipv4 ip daddr @s", not "ip daddr @s"), with no rule tags, and
// the foreign sets (the CNI plugin's quarantine) show no elements.
func RenderText(cfg Config, rs *Ruleset) (string, error) {
	cfg = cfg.Defaults()
	st, err := render(cfg, rs, nil)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", cfg.Table)
	for _, name := range Counters {
		fmt.Fprintf(&b, "\tcounter %s {\n\t\tpackets 0 bytes 0\n\t}\n\n", name)
	}
	for _, name := range sortedKeys(st.sets) {
		writeSet(&b, st.sets[name])
	}
	names := sortedKeys(st.chains)
	for i, name := range names {
		writeChain(&b, st.chains[name])
		if i < len(names)-1 {
			b.WriteString("\n")
		}
	}
	b.WriteString("}\n")
	return b.String(), nil
}

// RenderGuardText renders the bridge guard's table for rs as nft text, as
// RenderText does the inet table.
func RenderGuardText(cfg Config, rs *Ruleset) (string, error) {
	cfg = cfg.Defaults()
	st, err := render(cfg, rs, nil)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table bridge %s {\n", cfg.Table)
	for _, c := range []string{CounterBridgeMulticast, CounterBridgeUnchecked} {
		fmt.Fprintf(&b, "\tcounter %s {\n\t\tpackets 0 bytes 0\n\t}\n\n", c)
	}
	for _, s := range st.guard {
		writeSet(&b, s)
	}
	writeChain(&b, &chainSpec{name: guardChain, hook: nftables.ChainHookForward, prio: guardPriority, rules: guardRules(cfg)})
	b.WriteString("}\n")
	return b.String(), nil
}

// writeSet writes a set or verdict map:
//
//	map egress4 {
//		type ipv4_addr : verdict
//		elements = { 10.88.0.4 comment "c1/eth0" : goto epo_1c9a0e4f7b2d,
//			     10.88.0.5 comment "c2/eth0" : goto epo_77a3c1e0d2b4 }
//	}
func writeSet(b *strings.Builder, s *setSpec) {
	typ := "ipv4_addr"
	if s.fam == 6 {
		typ = "ipv6_addr"
	}
	kw := "set"
	if s.kind == kindVmap {
		kw, typ = "map", typ+" : verdict"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\ttype %s\n", kw, s.name, typ)
	if s.kind == kindInterval {
		b.WriteString("\t\tflags interval\n")
	}
	var elems []string
	for _, k := range sortedElems(s.elems) {
		e := s.elems[k]
		switch s.kind {
		case kindInterval:
			elems = append(elems, intervalText(k))
		case kindVmap:
			elems = append(elems, fmt.Sprintf("%s comment %q : goto %s", e.key, e.comment, e.chain))
		default:
			elems = append(elems, e.key.String())
		}
	}
	if len(elems) > 0 {
		fmt.Fprintf(b, "\t\telements = { %s }\n", strings.Join(elems, ",\n\t\t\t     "))
	}
	b.WriteString("\t}\n\n")
}

// intervalText writes the interval [first, end) as nft lists it: an
// address, a prefix, or a range first-last.
func intervalText(k elemKey) string {
	last := lastAddr(netip.PrefixFrom(k.first, 0))
	if k.end.IsValid() {
		last = k.end.Prev()
	}
	if last == k.first {
		return k.first.String()
	}
	for bits := k.first.BitLen() - 1; bits >= 0; bits-- {
		p := netip.PrefixFrom(k.first, bits)
		if p.Masked().Addr() != k.first {
			break
		}
		if lastAddr(p) == last {
			return p.String()
		}
	}
	return k.first.String() + "-" + last.String()
}

// writeChain writes a chain; a base chain with its hook line:
//
//	chain spoof_vethb9d3a290 {
//		type filter hook ingress device "vethb9d3a290" priority -500; policy accept;
//		meta protocol ip ip saddr != 10.88.0.4 counter name "spoofed" drop
//	}
func writeChain(b *strings.Builder, c *chainSpec) {
	fmt.Fprintf(b, "\tchain %s {\n", c.name)
	if c.hook != nil {
		dev := ""
		if c.device != "" {
			dev = fmt.Sprintf(" device %q", c.device)
		}
		prio := fmt.Sprint(c.prio)
		if c.prio == 0 {
			prio = "filter"
		}
		fmt.Fprintf(b, "\t\ttype filter hook %s%s priority %s; policy accept;\n", hookName(*c.hook), dev, prio)
	}
	for _, r := range c.rules {
		fmt.Fprintf(b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n")
}

func hookName(h nftables.ChainHook) string {
	switch h {
	case *nftables.ChainHookForward:
		return "forward"
	case *nftables.ChainHookInput:
		return "input"
	case *nftables.ChainHookOutput:
		return "output"
	case *hookInetIngress:
		return "ingress"
	}
	return fmt.Sprintf("hook(%d)", h)
}
