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
	icmpType       uint8
	// alerted: its first packet raised (or counted into) its alert, so
	// the interval's record does not count it again.
	alerted bool
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

// add folds a denied packet, of tuple k, into its tuple's aggregate and
// returns it, and whether the packet started it; nil: the table is full
// and the packet was not folded.
func (d *deniedAggs) add(k tupleKey, pkt *flows.Packet) (*aggregate, bool) {
	a, ok := d.byTuple[k]
	if !ok {
		if len(d.byTuple) >= d.max {
			return nil, false
		}
		a = &aggregate{first: pkt.Time, mark: pkt.Mark, icmpType: pkt.ICMPType}
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
	return a, !ok
}

// tupleOf is the tuple a denied packet is aggregated by.
func tupleOf(pkt *flows.Packet) tupleKey {
	k := tupleKey{proto: pkt.Proto, src: pkt.Src, dst: pkt.Dst}
	if isICMP(pkt.Proto) {
		k.icmp = uint16(pkt.ICMPType)<<8 | uint16(pkt.ICMPCode)
	}
	return k
}

func isICMP(p segment.Protocol) bool { return p == segment.ICMP || p == segment.ICMPv6 }

// drain hands each aggregate to f and starts the next interval empty.
func (d *deniedAggs) drain(f func(k tupleKey, a *aggregate)) {
	for k, a := range d.byTuple {
		f(k, a)
		delete(d.byTuple, k)
	}
}

// packet aggregates a denied first packet by 5-tuple. The first packet of
// a tuple in an interval goes to its alert at once, when unexpected: an
// analyst learns of a denied attempt within the reader's batch, not at
// the end of the interval that counts its retries.
func (p *Pipeline) packet(pkt flows.Packet) {
	verdict, _ := pkt.Mark.Decision()
	if pkt.Prefix != flows.PrefixDeny || verdict != segment.Denied {
		// Accepted connections are reported from conntrack, which carries
		// the same decision and the byte counts.
		p.m.nflogIgnored.Inc()
		return
	}
	k := tupleOf(&pkt)
	a, first := p.denied.add(k, &pkt)
	if a == nil {
		p.losses.add(flow.CauseDeniedTableFull, flow.UnitPackets, 1)
		return
	}
	if first {
		if rec := p.deniedRecord(k, a); !rec.IsExpected() {
			p.foldN(rec, 1)
			a.alerted = true
		}
	}
}

// deniedRecord is the record of a denied tuple's aggregate so far.
func (p *Pipeline) deniedRecord(k tupleKey, a *aggregate) *flow.Record {
	verdict, origin := a.mark.Decision()
	rec := &flow.Record{Kind: flow.KindFlow, Report: flow.ReportAggregate, Start: a.first, End: a.last,
		PacketsToDst: a.packets, BytesToDst: a.bytes}
	p.rec.describe(rec, k.proto, k.src, k.dst, a.icmpType, verdict, origin, p.res.at(a.first))
	return rec
}

// flushDenied writes one record per denied 5-tuple of the interval.
func (p *Pipeline) flushDenied() {
	p.denied.drain(func(k tupleKey, a *aggregate) {
		rec := p.deniedRecord(k, a)
		if !a.alerted {
			p.emitFlow(rec)
			return
		}
		// Counted in its alert by its first packet: the record brings
		// the alert's last seen up to date.
		p.rec.write(rec)
		p.foldN(rec, 0)
	})
}
