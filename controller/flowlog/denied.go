package flowlog

import (
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/flows"
)

// tupleKey is a denied 5-tuple (ICMP: type and code instead of ports).
type tupleKey struct {
	proto    segment.Protocol
	src, dst netip.AddrPort
	icmp     uint16
}

type aggregate struct {
	first, last    time.Time
	packets, bytes uint64
	mark           dataplane.Mark
	icmp           bool
	icmpType       uint8
}

// deniedAggs folds the denied first packets of one interval by 5-tuple:
// a denied connection's retries become one record with counts. It holds
// at most max tuples.
type deniedAggs struct {
	byTuple map[tupleKey]*aggregate
	max     int
}

func newDeniedAggs(max int) *deniedAggs {
	return &deniedAggs{byTuple: map[tupleKey]*aggregate{}, max: max}
}

func (d *deniedAggs) len() int { return len(d.byTuple) }

// add folds a denied packet into its tuple's aggregate; false: the table
// is full and the packet was not folded.
func (d *deniedAggs) add(pkt *flows.Packet) bool {
	k := tupleKey{proto: pkt.Proto, src: pkt.Src, dst: pkt.Dst}
	icmp := pkt.Proto == segment.ICMP || pkt.Proto == segment.ICMPv6
	if icmp {
		k.icmp = uint16(pkt.ICMPType)<<8 | uint16(pkt.ICMPCode)
	}
	a, ok := d.byTuple[k]
	if !ok {
		if len(d.byTuple) >= d.max {
			return false
		}
		a = &aggregate{first: pkt.Time, mark: pkt.Mark, icmp: icmp, icmpType: pkt.ICMPType}
		d.byTuple[k] = a
	}
	a.packets++
	a.bytes += uint64(pkt.Length)
	if pkt.Time.Before(a.first) {
		a.first = pkt.Time
	}
	if pkt.Time.After(a.last) {
		a.last = pkt.Time
	}
	return true
}

// drain hands each aggregate to f and starts the next interval empty.
func (d *deniedAggs) drain(f func(k tupleKey, a *aggregate)) {
	for k, a := range d.byTuple {
		f(k, a)
		delete(d.byTuple, k)
	}
}

// packet aggregates a denied first packet by 5-tuple.
func (p *Pipeline) packet(pkt flows.Packet) {
	verdict, _ := pkt.Mark.Decision()
	if pkt.Prefix != flows.PrefixDeny || verdict != segment.Denied {
		// Accepted connections are reported from conntrack, which carries
		// the same decision and the byte counts.
		p.m.nflogIgnored.Inc()
		return
	}
	if !p.denied.add(&pkt) {
		p.losses.add(flow.CauseDeniedTableFull, flow.UnitPackets, 1)
	}
}

// flushDenied writes one record per denied 5-tuple of the interval.
func (p *Pipeline) flushDenied() {
	p.denied.drain(func(k tupleKey, a *aggregate) {
		verdict, origin := a.mark.Decision()
		rec := &flow.Record{Kind: flow.KindFlow, Report: flow.ReportAggregate, Start: a.first, End: a.last,
			PacketsToDst: a.packets, BytesToDst: a.bytes}
		p.rec.describe(rec, k.proto, k.src, k.dst, a.icmpType, verdict, origin, p.res.at(a.first))
		p.emitFlow(rec)
	})
}
