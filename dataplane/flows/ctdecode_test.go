package flows

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/mdlayher/netlink"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
)

// ctMessage builds a ctnetlink event message as the kernel sends it.
func ctMessage(t *testing.T, msgType uint8, flags netlink.HeaderFlags, family netfilter.ProtoFamily, src, dst netip.Addr, proto []netfilter.Attribute, extra ...netfilter.Attribute) []byte {
	t.Helper()
	ipSrc, ipDst := uint16(ctaIPv4Src), uint16(ctaIPv4Dst)
	if src.Is6() {
		ipSrc, ipDst = ctaIPv6Src, ctaIPv6Dst
	}
	tuple := netfilter.Attribute{Type: ctaTupleOrig, Nested: true, Children: []netfilter.Attribute{
		{Type: ctaTupleIP, Nested: true, Children: []netfilter.Attribute{{Type: ipSrc, Data: src.AsSlice()}, {Type: ipDst, Data: dst.AsSlice()}}},
		{Type: ctaTupleProto, Nested: true, Children: proto},
	}}
	reply := tuple
	reply.Type = 2 // CTA_TUPLE_REPLY: the decoder must not take it for the original
	reply.Children = []netfilter.Attribute{
		{Type: ctaTupleIP, Nested: true, Children: []netfilter.Attribute{{Type: ipSrc, Data: dst.AsSlice()}, {Type: ipDst, Data: src.AsSlice()}}},
		{Type: ctaTupleProto, Nested: true, Children: proto},
	}
	m, err := netfilter.MarshalNetlink(netfilter.Header{SubsystemID: netfilter.NFSubsysCTNetlink, MessageType: netfilter.MessageType(msgType), Family: family, Flags: flags},
		append([]netfilter.Attribute{tuple, reply}, extra...))
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Length = uint32(nlmsgHdrLen + len(m.Data))
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func u8(typ uint16, v uint8) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: []byte{v}}
}
func be16(typ uint16, v uint16) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: binary.BigEndian.AppendUint16(nil, v)}
}
func be32(typ uint16, v uint32) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: binary.BigEndian.AppendUint32(nil, v)}
}
func be64(typ uint16, v uint64) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Data: binary.BigEndian.AppendUint64(nil, v)}
}
func nested(typ uint16, children ...netfilter.Attribute) netfilter.Attribute {
	return netfilter.Attribute{Type: typ, Nested: true, Children: children}
}

// TestDecodeCtMessage decodes event messages with the netseg decoder and
// with github.com/ti-mo/conntrack's, and wants the same event.
func TestDecodeCtMessage(t *testing.T) {
	mark := uint32(dataplane.MakeMark(segment.Allow, segment.Allow, 11, 11))
	start, stop := uint64(1_700_000_000_123_456_789), uint64(1_700_000_002_000_000_000)
	tcp := []netfilter.Attribute{u8(ctaProtoNum, 6), be16(ctaProtoSrc, 40000), be16(ctaProtoDst, 8080)}
	accounting := []netfilter.Attribute{
		be32(ctaMark, mark), be32(ctaID, 0xdeadbeef),
		nested(ctaCountOrig, be64(ctaCountPackets, 12), be64(ctaCountBytes, 10_500)),
		nested(ctaCountReply, be64(ctaCountPackets, 9), be64(ctaCountBytes, 20_100)),
		nested(ctaTimestamp, be64(ctaTimestampStart, start), be64(ctaTimestampStop, stop)),
	}
	v4a, v4b := netip.MustParseAddr("10.88.0.2"), netip.MustParseAddr("10.88.0.3")
	v6a, v6b := netip.MustParseAddr("fd00:88::2"), netip.MustParseAddr("fd00:88::3")
	tests := []struct {
		name string
		msg  []byte
		want ConnType
	}{
		{"destroy tcp4 with accounting", ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, v4a, v4b, tcp, accounting...), ConnDestroy},
		{"new tcp6", ctMessage(t, ctMsgNew, netlink.Create|netlink.Excl, netfilter.ProtoIPv6, v6a, v6b, tcp, be32(ctaMark, mark), be32(ctaID, 7)), ConnNew},
		{"destroy icmp4", ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, v4a, v4b,
			[]netfilter.Attribute{u8(ctaProtoNum, 1), be16(4, 99), u8(ctaICMPType, 8), u8(ctaICMPCode, 0)}, be32(ctaMark, mark)), ConnDestroy},
		{"destroy icmp6", ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv6, v6a, v6b,
			[]netfilter.Attribute{u8(ctaProtoNum, 58), be16(7, 99), u8(ctaICMP6Type, 128), u8(ctaICMP6Code, 0)}, be32(ctaMark, mark)), ConnDestroy},
		{"destroy udp4, counters of one direction", ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, v4a, v4b,
			[]netfilter.Attribute{u8(ctaProtoNum, 17), be16(ctaProtoSrc, 5000), be16(ctaProtoDst, 53)},
			be32(ctaMark, mark), nested(ctaCountOrig, be64(ctaCountPackets, 3), be64(ctaCountBytes, 300))), ConnDestroy},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := time.Unix(1_700_000_005, 0)
			var got ConnEvent
			ok, err := decodeCtMessage(tt.msg, now, &got, false)
			if err != nil || !ok {
				t.Fatalf("decode: ok %v, %v", ok, err)
			}
			var m netlink.Message
			if err := m.UnmarshalBinary(tt.msg); err != nil {
				t.Fatal(err)
			}
			var ev conntrack.Event
			if err := ev.Unmarshal(m); err != nil {
				t.Fatal(err)
			}
			want := fromFlow(tt.want, now, ev.Flow)
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
				cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) })); diff != "" {
				t.Errorf("(-ti-mo/conntrack +netseg):\n%s", diff)
			}
		})
	}

	t.Run("update and other messages are skipped", func(t *testing.T) {
		var ev ConnEvent
		for _, msg := range [][]byte{
			ctMessage(t, ctMsgNew, 0, netfilter.ProtoIPv4, v4a, v4b, tcp, be32(ctaMark, mark)), // an update
			ctMessage(t, 1, 0, netfilter.ProtoIPv4, v4a, v4b, tcp),                             // IPCTNL_MSG_CT_GET
		} {
			if ok, err := decodeCtMessage(msg, time.Time{}, &ev, false); ok || err != nil {
				t.Errorf("decode: ok %v, err %v; want skipped", ok, err)
			}
		}
	})
	t.Run("malformed", func(t *testing.T) {
		good := ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, v4a, v4b, tcp, be32(ctaMark, mark))
		noTuple := ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, v4a, v4b, tcp)[:nlmsgHdrLen+nfgenHdrLen]
		badLen := append([]byte(nil), good...)
		binary.NativeEndian.PutUint16(badLen[nlmsgHdrLen+nfgenHdrLen:], 2000) // first attribute past the end
		var ev ConnEvent
		for name, msg := range map[string][]byte{"short": good[:10], "no tuple": noTuple, "attribute length": badLen} {
			if ok, err := decodeCtMessage(msg, time.Time{}, &ev, false); ok || err == nil {
				t.Errorf("%s: ok %v, err %v; want an error", name, ok, err)
			}
		}
	})
}

// BenchmarkDecodeCtMessage compares the netseg decoder with
// github.com/ti-mo/conntrack's on a DESTROY event with accounting.
func BenchmarkDecodeCtMessage(b *testing.B) {
	t := &testing.T{}
	mark := uint32(dataplane.MakeMark(segment.Allow, segment.Allow, 11, 11))
	msg := ctMessage(t, ctMsgDelete, 0, netfilter.ProtoIPv4, netip.MustParseAddr("10.88.0.2"), netip.MustParseAddr("10.88.0.3"),
		[]netfilter.Attribute{u8(ctaProtoNum, 6), be16(ctaProtoSrc, 40000), be16(ctaProtoDst, 8080)},
		be32(ctaMark, mark), be32(ctaID, 1),
		nested(ctaCountOrig, be64(ctaCountPackets, 12), be64(ctaCountBytes, 10_500)),
		nested(ctaCountReply, be64(ctaCountPackets, 9), be64(ctaCountBytes, 20_100)),
		nested(ctaTimestamp, be64(ctaTimestampStart, 1), be64(ctaTimestampStop, 2)))
	b.Run("netseg", func(b *testing.B) {
		b.ReportAllocs()
		var ev ConnEvent
		for b.Loop() {
			if ok, err := decodeCtMessage(msg, time.Time{}, &ev, false); !ok || err != nil {
				b.Fatal(ok, err)
			}
		}
	})
	b.Run("ti-mo-conntrack", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m netlink.Message
			if err := m.UnmarshalBinary(msg); err != nil {
				b.Fatal(err)
			}
			var ev conntrack.Event
			if err := ev.Unmarshal(m); err != nil {
				b.Fatal(err)
			}
			_ = fromFlow(ConnDestroy, time.Time{}, ev.Flow)
		}
	})
}

// fromFlow is what github.com/ti-mo/conntrack's decoding of an entry means
// as a ConnEvent.
func fromFlow(t ConnType, now time.Time, f *conntrack.Flow) ConnEvent {
	o := f.TupleOrig
	ev := ConnEvent{
		Type: t, ID: f.ID, Time: now,
		Proto: segment.Protocol(o.Proto.Protocol),
		Src:   netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
		Dst:   netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort),
		Mark:  dataplane.Mark(f.Mark),
		Start: f.Timestamp.Start, Stop: f.Timestamp.Stop,
		Orig:  Counters{f.CountersOrig.Packets, f.CountersOrig.Bytes},
		Reply: Counters{f.CountersReply.Packets, f.CountersReply.Bytes},
	}
	if o.Proto.ICMPv4 || o.Proto.ICMPv6 {
		ev.ICMPType, ev.ICMPCode = o.Proto.ICMPType, o.Proto.ICMPCode
	}
	if f.Timestamp.Start.UnixNano() == 0 {
		ev.Start = time.Time{}
	}
	if f.Timestamp.Stop.UnixNano() == 0 {
		ev.Stop = time.Time{}
	}
	return ev
}
