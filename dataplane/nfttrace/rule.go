package nfttrace

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// stmt is one match or statement of a rule. match reports whether the
// rule goes on; a verdict ends it.
type stmt interface{}

type (
	familyStmt   int // meta nfproto ipv4|ipv6, meta protocol ip|ip6
	l4Stmt       uint8
	dportStmt    struct{ first, last uint16 }
	icmpTypeStmt struct{ first, last uint8 }
	ctStateStmt  []string
	// addrNotStmt: ip saddr != 10.0.0.1 (or a prefix); in: ip6 saddr
	// fe80::/10 (or an address).
	addrNotStmt struct {
		src, in bool
		p       netip.Prefix
	}
	// lookupStmt: ip daddr [!=] @set, or ip saddr vmap @map.
	lookupStmt struct {
		src, not, vmap bool
		fam            int
		set            string
	}
	// ctMarkStmt: ct mark set (ct mark and AND) or OR.
	ctMarkStmt struct {
		keep    bool
		and, or uint32
	}
	// ctMarkMatchStmt: ct mark and MASK != VALUE (or ==).
	ctMarkMatchStmt struct {
		mask, value uint32
		neq         bool
	}
	metaMarkFromCtStmt struct{}
	// metaMarkOrStmt: meta mark set meta mark or OR.
	metaMarkOrStmt uint32
	counterStmt    string
	limitOverStmt  struct{}
	logStmt        string
	verdictStmt    Verdict
)

var l4Names = map[string]uint8{"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58}

// parseRule reads one rule of the netseg subset. Besides the syntax it
// checks what the kernel would otherwise do silently wrong: an address
// match needs the family matched before it in the rule (in an inet chain
// "ip saddr" on an IPv6 packet reads other bytes), a port match needs a
// protocol with ports, an ICMPv6 type match needs ICMPv6.
func parseRule(text string) (*Rule, error) {
	r := &Rule{Text: text}
	tok := tokens(text)
	fam, l4 := 0, -1
	bad := func(format string, a ...any) (*Rule, error) {
		return nil, fmt.Errorf("rule %q: %s", text, fmt.Sprintf(format, a...))
	}
	take := func(n int) ([]string, bool) {
		if len(tok) < n {
			return nil, false
		}
		t := tok[:n]
		tok = tok[n:]
		return t, true
	}
	for len(tok) > 0 {
		if n := len(r.Stmts); n > 0 {
			switch r.Stmts[n-1].(type) {
			case verdictStmt:
				return bad("%q after the verdict", tok[0])
			case lookupStmt:
				if r.Stmts[n-1].(lookupStmt).vmap {
					return bad("%q after a verdict map", tok[0])
				}
			}
		}
		switch {
		case len(tok) >= 3 && tok[0] == "meta" && tok[1] == "nfproto":
			switch tok[2] {
			case "ipv4":
				fam = 4
			case "ipv6":
				fam = 6
			default:
				return bad("unknown nfproto %q", tok[2])
			}
			r.Stmts = append(r.Stmts, familyStmt(fam))
			take(3)
		case len(tok) >= 3 && tok[0] == "meta" && tok[1] == "protocol":
			switch tok[2] {
			case "ip":
				fam = 4
			case "ip6":
				fam = 6
			default:
				return bad("unknown protocol %q", tok[2])
			}
			r.Stmts = append(r.Stmts, familyStmt(fam))
			take(3)
		case len(tok) >= 3 && tok[0] == "meta" && tok[1] == "l4proto":
			p, ok := l4Names[tok[2]]
			if !ok {
				v, err := strconv.ParseUint(tok[2], 10, 8)
				if err != nil {
					return bad("unknown l4proto %q", tok[2])
				}
				p = uint8(v)
			}
			l4 = int(p)
			r.Stmts = append(r.Stmts, l4Stmt(p))
			take(3)
		case len(tok) >= 5 && tok[0] == "meta" && tok[1] == "mark" && tok[2] == "set" && tok[3] == "ct" && tok[4] == "mark":
			r.Stmts = append(r.Stmts, metaMarkFromCtStmt{})
			take(5)
		case len(tok) >= 7 && tok[0] == "meta" && tok[1] == "mark" && tok[2] == "set" && tok[3] == "meta" && tok[4] == "mark" && tok[5] == "or":
			v, err := parseHex32(tok[6])
			if err != nil {
				return bad("meta mark or %q: %v", tok[6], err)
			}
			r.Stmts = append(r.Stmts, metaMarkOrStmt(v))
			take(7)
		case tok[0] == "ip" || tok[0] == "ip6":
			want := 4
			if tok[0] == "ip6" {
				want = 6
			}
			if fam != want {
				return bad("%s address match without meta nfproto/protocol %s before it", tok[0], tok[0])
			}
			t, ok := take(3)
			if !ok || (t[1] != "saddr" && t[1] != "daddr") {
				return bad("bad address match")
			}
			src := t[1] == "saddr"
			switch {
			case t[2] == "vmap" && len(tok) > 0 && strings.HasPrefix(tok[0], "@"):
				r.Stmts = append(r.Stmts, lookupStmt{src: src, vmap: true, fam: fam, set: tok[0][1:]})
				take(1)
			case strings.HasPrefix(t[2], "@"):
				r.Stmts = append(r.Stmts, lookupStmt{src: src, fam: fam, set: t[2][1:]})
			case t[2] == "!=" && len(tok) > 0 && strings.HasPrefix(tok[0], "@"):
				r.Stmts = append(r.Stmts, lookupStmt{src: src, not: true, fam: fam, set: tok[0][1:]})
				take(1)
			case t[2] == "!=" && len(tok) > 0:
				p, err := parsePrefix(tok[0])
				if err != nil || addrFam(p.Addr()) != want {
					return bad("bad address %q", tok[0])
				}
				r.Stmts = append(r.Stmts, addrNotStmt{src: src, p: p})
				take(1)
			case t[2] != "!=" && t[2] != "vmap" && !strings.HasPrefix(t[2], "@"):
				p, err := parsePrefix(t[2])
				if err != nil || addrFam(p.Addr()) != want {
					return bad("bad address %q", t[2])
				}
				r.Stmts = append(r.Stmts, addrNotStmt{src: src, in: true, p: p})
			default:
				return bad("unknown address match %q", strings.Join(t, " "))
			}
		case len(tok) >= 3 && tok[0] == "th" && tok[1] == "dport":
			if l4 != 6 && l4 != 17 && l4 != 132 {
				return bad("th dport without tcp, udp or sctp before it")
			}
			first, last, err := parseRange(tok[2], 16)
			if err != nil {
				return bad("dport: %v", err)
			}
			r.Stmts = append(r.Stmts, dportStmt{uint16(first), uint16(last)})
			take(3)
		case len(tok) >= 3 && tok[0] == "icmpv6" && tok[1] == "type":
			if l4 != 58 {
				return bad("icmpv6 type without meta l4proto ipv6-icmp before it")
			}
			first, last, err := parseRange(tok[2], 8)
			if err != nil {
				return bad("icmpv6 type: %v", err)
			}
			r.Stmts = append(r.Stmts, icmpTypeStmt{uint8(first), uint8(last)})
			take(3)
		case len(tok) >= 3 && tok[0] == "ct" && tok[1] == "state":
			states := strings.Split(tok[2], ",")
			for _, s := range states {
				if s != "new" && s != "established" && s != "related" && s != "invalid" {
					return bad("unknown ct state %q", s)
				}
			}
			r.Stmts = append(r.Stmts, ctStateStmt(states))
			take(3)
		case len(tok) >= 6 && tok[0] == "ct" && tok[1] == "mark" && tok[2] == "and" && (tok[4] == "!=" || tok[4] == "=="):
			mask, err1 := parseHex32(tok[3])
			value, err2 := parseHex32(tok[5])
			if err1 != nil || err2 != nil {
				return bad("bad ct mark match")
			}
			r.Stmts = append(r.Stmts, ctMarkMatchStmt{mask: mask, value: value, neq: tok[4] == "!="})
			take(6)
		case len(tok) >= 4 && tok[0] == "ct" && tok[1] == "mark" && tok[2] == "set":
			// ct mark set 0x... | ct mark set ct mark and 0x... or 0x...
			if len(tok) >= 9 && tok[3] == "ct" && tok[4] == "mark" && tok[5] == "and" && tok[7] == "or" {
				and, err1 := parseHex32(tok[6])
				or, err2 := parseHex32(tok[8])
				if err1 != nil || err2 != nil {
					return bad("bad ct mark expression")
				}
				r.Stmts = append(r.Stmts, ctMarkStmt{keep: true, and: and, or: or})
				take(9)
				break
			}
			v, err := parseHex32(tok[3])
			if err != nil {
				return bad("ct mark set %q: %v", tok[3], err)
			}
			r.Stmts = append(r.Stmts, ctMarkStmt{or: v})
			take(4)
		case len(tok) >= 3 && tok[0] == "counter" && tok[1] == "name":
			name, err := strconv.Unquote(tok[2])
			if err != nil {
				return bad("counter name %s: %v", tok[2], err)
			}
			r.Stmts = append(r.Stmts, counterStmt(name))
			take(3)
		case len(tok) >= 7 && tok[0] == "limit" && tok[1] == "rate" && tok[2] == "over" && tok[4] == "burst" && tok[6] == "packets":
			rate, ok := strings.CutSuffix(tok[3], "/second")
			if _, err := strconv.ParseUint(rate, 10, 64); !ok || err != nil {
				return bad("bad limit rate %q", tok[3])
			}
			if _, err := strconv.ParseUint(tok[5], 10, 32); err != nil {
				return bad("bad limit burst %q", tok[5])
			}
			r.Stmts = append(r.Stmts, limitOverStmt{})
			take(7)
		case len(tok) >= 5 && tok[0] == "log" && tok[1] == "prefix" && tok[3] == "group":
			prefix, err := strconv.Unquote(tok[2])
			if err != nil {
				return bad("log prefix %s: %v", tok[2], err)
			}
			if _, err := strconv.ParseUint(tok[4], 10, 16); err != nil {
				return bad("log group %q", tok[4])
			}
			r.Stmts = append(r.Stmts, logStmt(prefix))
			take(5)
		case tok[0] == "accept" || tok[0] == "drop" || tok[0] == "return":
			r.Stmts = append(r.Stmts, verdictStmt{Kind: tok[0]})
			take(1)
		case len(tok) >= 2 && (tok[0] == "jump" || tok[0] == "goto"):
			if tok[1] == "" {
				return bad("%s without a chain", tok[0])
			}
			r.Stmts = append(r.Stmts, verdictStmt{Kind: tok[0], Chain: tok[1]})
			take(2)
		default:
			return bad("unknown statement at %q", strings.Join(tok, " "))
		}
	}
	if len(r.Stmts) == 0 {
		return bad("empty rule")
	}
	return r, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err == nil && p.Masked() != p {
			return p, fmt.Errorf("prefix %s is not masked", s)
		}
		return p, err
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// parseRange reads N or N-M of bits-wide numbers.
func parseRange(s string, bits int) (uint64, uint64, error) {
	a, b, isRange := strings.Cut(s, "-")
	first, err := strconv.ParseUint(a, 10, bits)
	if err != nil {
		return 0, 0, err
	}
	if !isRange {
		return first, first, nil
	}
	last, err := strconv.ParseUint(b, 10, bits)
	if err != nil {
		return 0, 0, err
	}
	if last < first {
		return 0, 0, fmt.Errorf("range %s is reversed", s)
	}
	return first, last, nil
}

func parseHex32(s string) (uint32, error) {
	h, ok := strings.CutPrefix(s, "0x")
	if !ok {
		return 0, fmt.Errorf("%q is not hex", s)
	}
	v, err := strconv.ParseUint(h, 16, 32)
	return uint32(v), err
}
