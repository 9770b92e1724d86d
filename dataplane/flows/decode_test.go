package flows

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/ti-mo/netfilter"
)

func ipv4(proto byte, src, dst string, l4 []byte) []byte {
	b := make([]byte, 20)
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:4], uint16(20+len(l4)))
	b[9] = proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:16], s[:])
	copy(b[16:20], d[:])
	return append(b, l4...)
}

func ipv6(next byte, src, dst string, rest []byte) []byte {
	b := make([]byte, 40)
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:6], uint16(len(rest)))
	b[6] = next
	s, d := netip.MustParseAddr(src).As16(), netip.MustParseAddr(dst).As16()
	copy(b[8:24], s[:])
	copy(b[24:40], d[:])
	return append(b, rest...)
}

func ports(src, dst uint16) []byte {
	return binary.BigEndian.AppendUint16(binary.BigEndian.AppendUint16(nil, src), dst)
}

func TestDecodeIP(t *testing.T) {
	hopByHop := append([]byte{6, 0, 0, 0, 0, 0, 0, 0}, ports(40000, 443)...)
	tests := []struct {
		name string
		pkt  []byte
		want Packet
	}{
		{"tcp4", ipv4(6, "10.88.0.2", "10.88.0.3", append(ports(40000, 8080), make([]byte, 16)...)),
			Packet{Proto: segment.TCP, Src: netip.MustParseAddrPort("10.88.0.2:40000"), Dst: netip.MustParseAddrPort("10.88.0.3:8080"), Length: 40}},
		{"udp4", ipv4(17, "10.88.0.2", "10.88.0.3", append(ports(5000, 53), 0, 8, 0, 0)),
			Packet{Proto: segment.UDP, Src: netip.MustParseAddrPort("10.88.0.2:5000"), Dst: netip.MustParseAddrPort("10.88.0.3:53"), Length: 28}},
		{"icmp4 echo", ipv4(1, "10.88.0.2", "10.88.0.3", []byte{8, 0, 0, 0}),
			Packet{Proto: segment.ICMP, Src: netip.MustParseAddrPort("10.88.0.2:0"), Dst: netip.MustParseAddrPort("10.88.0.3:0"), ICMPType: 8, Length: 24}},
		{"tcp6 after hop-by-hop", ipv6(0, "fd00:88::2", "fd00:88::3", hopByHop),
			Packet{Proto: segment.TCP, Src: netip.MustParseAddrPort("[fd00:88::2]:40000"), Dst: netip.MustParseAddrPort("[fd00:88::3]:443"), Length: 52}},
		{"icmp6", ipv6(58, "fd00:88::2", "fd00:88::3", []byte{128, 0, 0, 0}),
			Packet{Proto: segment.ICMPv6, Src: netip.MustParseAddrPort("[fd00:88::2]:0"), Dst: netip.MustParseAddrPort("[fd00:88::3]:0"), ICMPType: 128, Length: 44}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Packet
			if err := decodeIP(tt.pkt, &got); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	for _, bad := range [][]byte{nil, {0x45}, {0x10, 0, 0}, ipv4(6, "1.2.3.4", "5.6.7.8", []byte{1})} {
		var p Packet
		if err := decodeIP(bad, &p); err == nil {
			t.Errorf("decodeIP(%x) succeeded", bad)
		}
	}
}

func TestDecodeNFLOG(t *testing.T) {
	mark := dataplane.MakeMark(segment.Deny, segment.Deny, 14, 14)
	pkt := ipv4(6, "10.88.0.2", "10.88.0.4", append(ports(40000, 7070), make([]byte, 16)...))
	ts := append(binary.BigEndian.AppendUint64(nil, 1700000000), binary.BigEndian.AppendUint64(nil, 250000)...)
	attrs := []netfilter.Attribute{
		{Type: nfulaPrefix, Data: append([]byte(PrefixDeny), 0)},
		{Type: nfulaMark, Data: binary.BigEndian.AppendUint32(nil, uint32(mark))},
		{Type: nfulaTimestamp, Data: ts},
		{Type: nfulaPayload, Data: pkt},
	}
	body, err := netfilter.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeNFLOG(append([]byte{2, 0, 0, 100}, body...), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := Packet{Time: time.Unix(1700000000, 250000000), Prefix: PrefixDeny, Mark: mark, Proto: segment.TCP,
		Src: netip.MustParseAddrPort("10.88.0.2:40000"), Dst: netip.MustParseAddrPort("10.88.0.4:7070"), Length: 40}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
