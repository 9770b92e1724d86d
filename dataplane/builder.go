package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/netseg/netseg/api/segment"
)

// rb builds one nftables rule so that the code reads like its nft text:
//
//	rule().family(4).daddrIn("p_zone_web_4").dport(TCP, 443, 443).
//		ctMarkSet(m).jump(verdictGoto, "allow")
//
// emits the expressions of
//
//	meta nfproto ipv4 ip daddr @p_zone_web_4 meta l4proto tcp th dport 443 ct mark set 0x... goto allow
//
// and keeps that text (String) for tests, logs and the rule's comment.
type rb struct {
	exprs []expr.Any
	text  []string
	fam   int // 4 or 6 once family() was called
}

func rule() *rb { return &rb{} }

func (r *rb) add(text string, e ...expr.Any) *rb {
	r.exprs = append(r.exprs, e...)
	r.text = append(r.text, text)
	return r
}

func (r *rb) String() string { return strings.Join(r.text, " ") }

// family: meta nfproto ipv4|ipv6. Needed before address matches in the inet
// family, whose chains see both.
func (r *rb) family(fam int) *rb {
	r.fam = fam
	proto, name := byte(unix.NFPROTO_IPV4), "ipv4"
	if fam == 6 {
		proto, name = unix.NFPROTO_IPV6, "ipv6"
	}
	return r.add("meta nfproto "+name,
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}})
}

// addrField loads the source or destination address of the current family
// into register 1 and returns its nft name.
func (r *rb) addrField(src bool) (string, expr.Any) {
	off, n, name := uint32(16), uint32(4), "ip daddr"
	if src {
		off, name = 12, "ip saddr"
	}
	if r.fam == 6 {
		off, n, name = 24, 16, "ip6 daddr"
		if src {
			off, name = 8, "ip6 saddr"
		}
	}
	return name, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// addrIn: ip saddr|daddr [!=] @set.
func (r *rb) addrIn(src bool, set string, invert bool) *rb {
	name, load := r.addrField(src)
	op := " @"
	if invert {
		op = " != @"
	}
	return r.add(name+op+set, load, &expr.Lookup{SourceRegister: 1, SetName: set, Invert: invert})
}

// addrVmap: ip saddr|daddr vmap @map (the map's verdict ends evaluation
// here, or jumps and comes back).
func (r *rb) addrVmap(src bool, vmap string) *rb {
	name, load := r.addrField(src)
	return r.add(name+" vmap @"+vmap, load,
		&expr.Lookup{SourceRegister: 1, SetName: vmap, DestRegister: 0, IsDestRegSet: true})
}

// addrNotPrefix: ip saddr != 10.0.0.5 (or != fe80::/10 for a shorter prefix).
func (r *rb) addrNotPrefix(src bool, p netip.Prefix) *rb { return r.addrPrefix(src, p, true) }

// addrInPrefix: ip6 saddr fe80::/10 (or an address).
func (r *rb) addrInPrefix(src bool, p netip.Prefix) *rb { return r.addrPrefix(src, p, false) }

func (r *rb) addrPrefix(src bool, p netip.Prefix, not bool) *rb {
	name, load := r.addrField(src)
	addr := p.Addr().AsSlice()
	exprs := []expr.Any{load}
	if p.Bits() < len(addr)*8 {
		mask := make([]byte, len(addr))
		for i := 0; i < p.Bits(); i++ {
			mask[i/8] |= 0x80 >> (i % 8)
		}
		exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(addr)), Mask: mask, Xor: make([]byte, len(addr))})
		addr = p.Masked().Addr().AsSlice()
	}
	op, opText := expr.CmpOpNeq, " != "
	if !not {
		op, opText = expr.CmpOpEq, " "
	}
	exprs = append(exprs, &expr.Cmp{Op: op, Register: 1, Data: addr})
	text := p.Addr().String()
	if p.Bits() < len(addr)*8 {
		text = p.Masked().String()
	}
	return r.add(name+opText+text, exprs...)
}

// l4: meta l4proto tcp.
func (r *rb) l4(p segment.Protocol) *rb {
	return r.add("meta l4proto "+protoName(p),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(p)}})
}

// dport: th dport 443 or th dport 8000-8100 (after l4).
func (r *rb) dport(first, last uint16) *rb {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
	if first == last {
		return r.add(fmt.Sprintf("th dport %d", first), load,
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(first)})
	}
	return r.add(fmt.Sprintf("th dport %d-%d", first, last), load,
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: be16(first), ToData: be16(last)})
}

// icmpType: icmpv6 type 130-136 (the first byte of the ICMP header, after l4).
func (r *rb) icmpType(first, last uint8) *rb {
	load := &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1}
	if first == last {
		return r.add(fmt.Sprintf("icmpv6 type %d", first), load, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{first}})
	}
	return r.add(fmt.Sprintf("icmpv6 type %d-%d", first, last), load,
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{first}, ToData: []byte{last}})
}

// ctState: ct state established,related (any of the bits).
func (r *rb) ctState(text string, bits uint32) *rb {
	return r.add("ct state "+text,
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)})
}

// metaProtocol: meta protocol ip|ip6 (the L2 ethertype, for ingress hooks).
func (r *rb) metaProtocol(fam int) *rb {
	et, name := uint16(unix.ETH_P_IP), "ip"
	if fam == 6 {
		et, name = unix.ETH_P_IPV6, "ip6"
	}
	r.fam = fam
	return r.add("meta protocol "+name,
		&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: be16(et)})
}

// ctMarkSet: ct mark set 0x... (the whole mark).
func (r *rb) ctMarkSet(m uint32) *rb {
	return r.add(fmt.Sprintf("ct mark set 0x%08x", m),
		&expr.Immediate{Register: 1, Data: native32(m)},
		&expr.Ct{Register: 1, SourceRegister: true, Key: expr.CtKeyMARK})
}

// ctMarkSetLow: ct mark set ct mark and 0xffff0000 or 0x0000.... (the
// enforced half, keeping the staged half a staged chain wrote).
func (r *rb) ctMarkSetLow(low uint32) *rb {
	return r.add(fmt.Sprintf("ct mark set ct mark and 0xffff0000 or 0x%08x", low),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(0xffff0000), Xor: native32(low)},
		&expr.Ct{Register: 1, SourceRegister: true, Key: expr.CtKeyMARK})
}

// ctMarkNot: ct mark and 0x... != 0x... (the masked bits are not value).
func (r *rb) ctMarkNot(mask, value uint32) *rb {
	return r.add(fmt.Sprintf("ct mark and 0x%08x != 0x%08x", mask, value),
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(mask), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(value)})
}

// metaMarkFromCt: meta mark set ct mark. The kernel here is built without
// CONFIG_NETFILTER_NETLINK_GLUE_CT, so NFLOG messages cannot carry the
// conntrack entry; the packet mark (NFULA_MARK) carries the decision instead.
func (r *rb) metaMarkFromCt() *rb {
	return r.add("meta mark set ct mark",
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

// metaMarkOr: meta mark set meta mark or 0x... (sets the bits of m, keeps
// the others).
func (r *rb) metaMarkOr(m uint32) *rb {
	return r.add(fmt.Sprintf("meta mark set meta mark or 0x%08x", m),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^m), Xor: native32(m)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

// metaMarkClear: meta mark set meta mark and ^m.
func (r *rb) metaMarkClear(m uint32) *rb {
	return r.add(fmt.Sprintf("meta mark set meta mark and 0x%08x", ^m),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^m), Xor: native32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
}

// metaMarkHas: meta mark and 0x... == 0x... (every bit of m set).
func (r *rb) metaMarkHas(m uint32) *rb {
	return r.add(fmt.Sprintf("meta mark and 0x%08x == 0x%08x", m, m),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(m), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: native32(m)})
}

// counter: counter name "x" (a named counter object of the table).
func (r *rb) counter(name string) *rb {
	return r.add(fmt.Sprintf("counter name %q", name), &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name})
}

// limitOver: limit rate over N/second burst B packets.
func (r *rb) limitOver(rate uint64, burst uint32) *rb {
	return r.add(fmt.Sprintf("limit rate over %d/second burst %d packets", rate, burst),
		&expr.Limit{Type: expr.LimitTypePkts, Rate: rate, Over: true, Unit: expr.LimitTimeSecond, Burst: burst})
}

// log: log prefix "p" group G.
func (r *rb) log(prefix string, group uint16) *rb {
	return r.add(fmt.Sprintf("log prefix %q group %d", prefix, group),
		&expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: group, Data: []byte(prefix)})
}

// verdict: accept, drop, return, or jump/goto CHAIN.
func (r *rb) verdict(kind expr.VerdictKind, chain string) *rb {
	text := map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop",
		expr.VerdictReturn: "return", expr.VerdictJump: "jump " + chain, expr.VerdictGoto: "goto " + chain}[kind]
	return r.add(text, &expr.Verdict{Kind: kind, Chain: chain})
}

func protoName(p segment.Protocol) string {
	switch p {
	case segment.TCP:
		return "tcp"
	case segment.UDP:
		return "udp"
	case segment.SCTP:
		return "sctp"
	case segment.ICMP:
		return "icmp"
	case segment.ICMPv6:
		return "ipv6-icmp"
	}
	return fmt.Sprintf("%d", p)
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// native32: ct mark and ct state are host-endian 32-bit registers.
func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }
