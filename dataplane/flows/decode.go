package flows

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/netseg/netseg/api/segment"
)

var errShort = errors.New("truncated packet")

// decodeIP fills p's addresses, protocol, ports or ICMP type from an IPv4
// or IPv6 packet that starts at its IP header. The copy may be cut short
// (NFLOG copy range): only headers are needed.
func decodeIP(b []byte, p *Packet) error {
	if len(b) < 1 {
		return errShort
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return errShort
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return errShort
		}
		p.Length = int(binary.BigEndian.Uint16(b[2:4]))
		p.Proto = segment.Protocol(b[9])
		src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
		p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		if binary.BigEndian.Uint16(b[6:8])&0x1fff != 0 {
			return nil // a later fragment: no L4 header
		}
		l4 = b[ihl:]
	case 6:
		if len(b) < 40 {
			return errShort
		}
		p.Length = 40 + int(binary.BigEndian.Uint16(b[4:6]))
		src, dst := netip.AddrFrom16([16]byte(b[8:24])), netip.AddrFrom16([16]byte(b[24:40]))
		p.Src, p.Dst = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		next, off := b[6], 40
		// Skip extension headers: hop-by-hop, routing, destination
		// options (length in 8-byte units past the first 8) and fragment.
		for next == 0 || next == 43 || next == 60 || next == 44 {
			if len(b) < off+8 {
				return errShort
			}
			if next == 44 {
				fragOff := binary.BigEndian.Uint16(b[off+2:off+4]) >> 3
				next, off = b[off], off+8
				if fragOff != 0 {
					p.Proto = segment.Protocol(next)
					return nil
				}
				continue
			}
			next, off = b[off], off+8+int(b[off+1])*8
		}
		p.Proto = segment.Protocol(next)
		if len(b) < off {
			return errShort
		}
		l4 = b[off:]
	default:
		return errors.New("not an IP packet")
	}
	switch p.Proto {
	case segment.TCP, segment.UDP, segment.SCTP:
		if len(l4) < 4 {
			return errShort
		}
		p.Src = netip.AddrPortFrom(p.Src.Addr(), binary.BigEndian.Uint16(l4[0:2]))
		p.Dst = netip.AddrPortFrom(p.Dst.Addr(), binary.BigEndian.Uint16(l4[2:4]))
	case segment.ICMP, segment.ICMPv6:
		if len(l4) < 2 {
			return errShort
		}
		p.ICMPType, p.ICMPCode = l4[0], l4[1]
	}
	return nil
}
