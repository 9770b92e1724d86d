package nfttrace

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// semantics exercises jump, goto, return, verdict maps, interval sets and
// the two forms of ct mark set.
const semantics = `table inet t {
	counter c {
		packets 0 bytes 0
	}

	set s4 {
		type ipv4_addr
		flags interval
		elements = { 10.0.0.0/24,
			     10.1.0.1-10.1.0.5 }
	}

	map m4 {
		type ipv4_addr : verdict
		elements = { 10.0.0.1 comment "a, b" : goto g }
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		jump j
		meta nfproto ipv4 ip saddr vmap @m4
		meta nfproto ipv4 ip daddr @s4 ct mark set ct mark and 0xffff0000 or 0x00000002 drop
	}

	chain j {
		ct mark set 0x00010000
		meta nfproto ipv4 ip saddr != 10.0.0.1 return
		ct mark set 0x00020000 return
	}

	chain g {
		jump h
		counter name "c" accept
	}

	chain h {
		goto k
	}

	chain k {
		return
		drop
	}

	chain spoof {
		type filter hook ingress device "veth0" priority -500; policy accept;
		meta protocol ip ip saddr != 10.0.0.0/24 drop
	}
}
`

func TestTraceSemantics(t *testing.T) {
	tab, err := Parse(semantics)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name     string
		p        Packet
		verdict  string
		mark     uint32
		counters []string
	}{
		// j returns to forward; the map goes to g, which jumps to h; h goes
		// to k, whose return comes back to g (goto pushed nothing).
		{"vmap, jump, goto, return", Packet{Src: a("10.0.0.1"), Dst: a("192.0.2.1"), Proto: 6}, "accept", 0x20000, []string{"c"}},
		{"interval range, and-or mark", Packet{Src: a("10.0.0.9"), Dst: a("10.1.0.3"), Proto: 6}, "drop", 0x10002, nil},
		{"range end is inclusive", Packet{Src: a("10.0.0.9"), Dst: a("10.1.0.5"), Proto: 6}, "drop", 0x10002, nil},
		{"past the range", Packet{Src: a("10.0.0.9"), Dst: a("10.1.0.6"), Proto: 6}, "accept", 0x10000, nil},
		{"ipv6 skips family rules", Packet{Src: a("fd00::1"), Dst: a("fd00::2"), Proto: 17}, "accept", 0x20000, nil},
		{"ingress device chain", Packet{Src: a("10.9.0.1"), Dst: a("192.0.2.1"), Proto: 6, Iif: "veth0"}, "drop", 0, nil},
		{"other device", Packet{Src: a("10.9.0.1"), Dst: a("192.0.2.1"), Proto: 6, Iif: "veth1"}, "accept", 0x10000, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tab.Trace(tc.p)
			if err != nil {
				t.Fatal(err)
			}
			if got.Verdict != tc.verdict || got.CtMark != tc.mark || !cmp.Equal(got.Counters, tc.counters) {
				t.Errorf("got %s, counters %v; want %s ct mark 0x%08x, counters %v", got, got.Counters, tc.verdict, tc.mark, tc.counters)
			}
		})
	}
}

// TestParseRefuses: whatever the tracer does not understand fails the
// parse; nothing is skipped.
func TestParseRefuses(t *testing.T) {
	table := func(objects string) string {
		return "table inet t {\n\tset s4 {\n\t\ttype ipv4_addr\n\t}\n\n" + objects + "}\n"
	}
	chain := func(rules ...string) string {
		return table("\tchain c {\n\t\t" + strings.Join(rules, "\n\t\t") + "\n\t}\n")
	}
	for name, text := range map[string]string{
		"unknown statement":         chain("meta nfproto ipv4 ip ttl 1 accept"),
		"nft shorthand":             chain("tcp dport 22 accept"),
		"address without family":    chain("ip saddr @s4 drop"),
		"wrong family":              chain("meta nfproto ipv6 ip saddr @s4 drop"),
		"set of other family":       chain("meta nfproto ipv6 ip6 saddr @s4 drop"),
		"port without protocol":     chain("th dport 22 accept"),
		"missing set":               chain("meta nfproto ipv4 ip saddr @nope drop"),
		"missing chain":             chain("goto nowhere"),
		"missing counter":           chain("counter name \"nope\" drop"),
		"statement after verdict":   chain("accept counter name \"x\""),
		"goto without chain":        chain("goto"),
		"unknown set line":          table("\tset s6 {\n\t\ttype ipv6_addr\n\t\tflags interval,timeout\n\t}\n"),
		"prefix in plain set":       table("\tset s5 {\n\t\ttype ipv4_addr\n\t\telements = { 10.0.0.0/8 }\n\t}\n"),
		"unknown object":            table("\tflowtable f {\n\t\thook ingress\n\t}\n"),
		"hook with drop policy":     table("\tchain f {\n\t\ttype filter hook forward priority filter; policy drop;\n\t}\n"),
		"ingress without a device":  table("\tchain f {\n\t\ttype filter hook ingress priority -500; policy accept;\n\t}\n"),
		"unknown ct state":          chain("ct state untracked accept"),
		"ct mark set by expression": chain("ct mark set meta mark accept"),
	} {
		if _, err := Parse(text); err == nil {
			t.Errorf("%s: parsed without error:\n%s", name, text)
		}
	}
}
