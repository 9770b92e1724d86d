package flows

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
)

// A minimal decoder of ctnetlink event messages (linux/netfilter/
// nfnetlink_conntrack.h). It reads only what a ConnEvent carries, in place,
// without allocating: at ten thousand connections a second the general
// decoder's per-message allocations were most of the reader's cost.

// Netlink and ctnetlink constants used by the decoder.
const (
	nlmsgHdrLen   = 16
	nfgenHdrLen   = 4
	nlmFCreate    = 0x400
	nlaFNested    = 0x8000
	nlaTypeMask   = ^uint16(nlaFNested | 0x4000) // minus NLA_F_NESTED and NLA_F_NET_BYTEORDER
	ctnlSubsys    = 1                            // NFNL_SUBSYS_CTNETLINK
	ctMsgNew      = 0                            // IPCTNL_MSG_CT_NEW
	ctMsgGet      = 1                            // IPCTNL_MSG_CT_GET
	ctMsgDelete   = 2                            // IPCTNL_MSG_CT_DELETE
	ctaTupleOrig  = 1
	ctaMark       = 8
	ctaCountOrig  = 9
	ctaCountReply = 10
	ctaID         = 12
	ctaTimestamp  = 20

	ctaTupleIP    = 1
	ctaTupleProto = 2
	ctaIPv4Src    = 1
	ctaIPv4Dst    = 2
	ctaIPv6Src    = 3
	ctaIPv6Dst    = 4
	ctaProtoNum   = 1
	ctaProtoSrc   = 2
	ctaProtoDst   = 3
	ctaICMPType   = 5
	ctaICMPCode   = 6
	ctaICMP6Type  = 8
	ctaICMP6Code  = 9

	ctaCountPackets   = 1 // u64 (the kernel has sent 64-bit counters only since 2.6.27)
	ctaCountBytes     = 2 // u64
	ctaTimestampStart = 1
	ctaTimestampStop  = 2
)

var errCtMessage = errors.New("malformed netlink message")

// walk calls f with each netlink attribute's type (flags masked off) and
// payload, in order, until f returns an error.
func walk(b []byte, f func(typ uint16, data []byte) error) error {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		if l < 4 || l > len(b) {
			return errCtMessage
		}
		if err := f(binary.NativeEndian.Uint16(b[2:4])&nlaTypeMask, b[4:l]); err != nil {
			return err
		}
		if adv := (l + 3) &^ 3; adv < len(b) {
			b = b[adv:]
		} else {
			break
		}
	}
	return nil
}

// eachMessage calls f with each netlink message of a datagram (header
// included); a length that runs past the datagram ends it with an error.
func eachMessage(b []byte, f func(msg []byte)) error {
	for len(b) >= nlmsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < nlmsgHdrLen || l > len(b) {
			return errCtMessage
		}
		f(b[:l])
		if adv := (l + 3) &^ 3; adv < len(b) {
			b = b[adv:]
		} else {
			break
		}
	}
	return nil
}

// decodeCtMessage decodes one netlink message of a conntrack event socket
// or, with dump, of a table dump (each entry a NEW message, reported as
// ConnDump). It reports ok false for messages that are no NEW or DESTROY
// event (an update, a netlink error or control message).
func decodeCtMessage(msg []byte, now time.Time, ev *ConnEvent, dump bool) (ok bool, err error) {
	if len(msg) < nlmsgHdrLen+nfgenHdrLen {
		return false, errCtMessage
	}
	typ := binary.NativeEndian.Uint16(msg[4:6])
	flags := binary.NativeEndian.Uint16(msg[6:8])
	if typ>>8 != ctnlSubsys {
		return false, nil
	}
	*ev = ConnEvent{Time: now}
	switch typ & 0xff {
	case ctMsgNew:
		switch {
		case dump:
			ev.Type = ConnDump
		case flags&nlmFCreate == 0:
			return false, nil // an update of an existing entry
		default:
			ev.Type = ConnNew
		}
	case ctMsgDelete:
		ev.Type = ConnDestroy
	default:
		return false, nil
	}
	var tuple bool
	err = walk(msg[nlmsgHdrLen+nfgenHdrLen:], func(t uint16, data []byte) error {
		switch t {
		case ctaTupleOrig:
			tuple = true
			return decodeTuple(data, ev)
		case ctaMark, ctaID:
			if len(data) < 4 {
				return errCtMessage
			}
			if t == ctaMark {
				ev.Mark = dataplane.Mark(binary.BigEndian.Uint32(data))
			} else {
				ev.ID = binary.BigEndian.Uint32(data)
			}
		case ctaCountOrig:
			return decodeCounters(data, &ev.Orig)
		case ctaCountReply:
			return decodeCounters(data, &ev.Reply)
		case ctaTimestamp:
			return decodeTimestamp(data, ev)
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	if !tuple {
		return false, errCtMessage
	}
	return true, nil
}

func decodeTuple(b []byte, ev *ConnEvent) error {
	var src, dst netip.Addr
	var sport, dport uint16
	err := walk(b, func(t uint16, data []byte) error {
		switch t {
		case ctaTupleIP:
			return walk(data, func(t uint16, d []byte) error {
				var a netip.Addr
				switch {
				case (t == ctaIPv4Src || t == ctaIPv4Dst) && len(d) == 4:
					a = netip.AddrFrom4([4]byte(d))
				case (t == ctaIPv6Src || t == ctaIPv6Dst) && len(d) == 16:
					a = netip.AddrFrom16([16]byte(d)).Unmap()
				default:
					return nil
				}
				if t == ctaIPv4Src || t == ctaIPv6Src {
					src = a
				} else {
					dst = a
				}
				return nil
			})
		case ctaTupleProto:
			return walk(data, func(t uint16, d []byte) error {
				if len(d) < 1 {
					return errCtMessage
				}
				switch t {
				case ctaProtoNum:
					ev.Proto = segment.Protocol(d[0])
				case ctaProtoSrc, ctaProtoDst:
					if len(d) < 2 {
						return errCtMessage
					}
					if t == ctaProtoSrc {
						sport = binary.BigEndian.Uint16(d)
					} else {
						dport = binary.BigEndian.Uint16(d)
					}
				case ctaICMPType, ctaICMP6Type:
					ev.ICMPType = d[0]
				case ctaICMPCode, ctaICMP6Code:
					ev.ICMPCode = d[0]
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !src.IsValid() || !dst.IsValid() {
		return errCtMessage
	}
	ev.Src, ev.Dst = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	return nil
}

func decodeCounters(b []byte, c *Counters) error {
	return walk(b, func(t uint16, d []byte) error {
		if len(d) >= 8 && t == ctaCountPackets {
			c.Packets = binary.BigEndian.Uint64(d)
		} else if len(d) >= 8 && t == ctaCountBytes {
			c.Bytes = binary.BigEndian.Uint64(d)
		}
		return nil
	})
}

func decodeTimestamp(b []byte, ev *ConnEvent) error {
	return walk(b, func(t uint16, d []byte) error {
		if len(d) < 8 {
			return nil
		}
		ns := int64(binary.BigEndian.Uint64(d))
		switch {
		case ns == 0:
		case t == ctaTimestampStart:
			ev.Start = time.Unix(0, ns)
		case t == ctaTimestampStop:
			ev.Stop = time.Unix(0, ns)
		}
		return nil
	})
}
