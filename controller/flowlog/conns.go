package flowlog

import (
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/flows"
)

// connKey identifies a conntrack entry: the kernel reuses ids, so the
// tuple comes along.
type connKey struct {
	id       uint32
	proto    segment.Protocol
	src, dst netip.AddrPort
}

// openFlow is a connection tracked for interim records.
type openFlow struct {
	connStart time.Time
	// reportedUntil: the end of the last interim record (zero: none yet).
	reportedUntil time.Time
	// reported counters, subtracted from later ones.
	orig, reply flows.Counters
}

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

func keyOf(ev *flows.ConnEvent) connKey {
	return connKey{id: ev.ID, proto: ev.Proto, src: ev.Src, dst: ev.Dst}
}

func (p *Pipeline) conn(ev flows.ConnEvent) {
	verdict, _ := ev.Mark.Decision()
	if verdict == segment.None || verdict == segment.Denied {
		// Denied first packets never make a confirmed entry; a mark that
		// says otherwise is no decision of a connection that passed.
		return
	}
	k := keyOf(&ev)
	switch ev.Type {
	case flows.ConnNew:
		if _, ok := p.open[k]; ok {
			return
		}
		if len(p.open) >= p.cfg.MaxOpenFlows {
			p.m.untracked.Inc()
			return
		}
		p.open[k] = &openFlow{connStart: firstNonZero(ev.Start, ev.Time)}
	case flows.ConnDestroy:
		of := p.open[k]
		delete(p.open, k)
		delete(p.missing, k)
		start := firstNonZero(ev.Start, ev.Time)
		rec := p.connRecord(&ev, flow.ReportFinal, start)
		rec.End = firstNonZero(ev.Stop, ev.Time)
		if of != nil && !of.reportedUntil.IsZero() {
			p.connStart(rec, start)
			rec.Start = of.reportedUntil
			rec.PacketsToDst -= of.orig.Packets
			rec.BytesToDst -= of.orig.Bytes
			rec.PacketsToSrc -= of.reply.Packets
			rec.BytesToSrc -= of.reply.Bytes
		}
		p.emitFlow(rec)
	}
}

func firstNonZero(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}

// recordParts is the storage of the flow record being built. The
// pipeline builds and writes one record at a time and nothing keeps a
// record once written (alerts copy what they keep), so a busy node's
// twelve thousand records a second are built without allocating.
type recordParts struct {
	rec       flow.Record
	src, dst  flow.Endpoint
	origin    segment.Origin
	expected  bool
	icmp      uint8
	connStart time.Time
}

// connRecord builds a flow record of a conntrack entry with its full
// counters; callers adjust the interval, and write it before building
// another.
func (p *Pipeline) connRecord(ev *flows.ConnEvent, report string, start time.Time) *flow.Record {
	verdict, origin := ev.Mark.Decision()
	rec := &p.parts.rec
	*rec = flow.Record{Kind: flow.KindFlow, Report: report, Start: start, End: ev.Time,
		PacketsToDst: ev.Orig.Packets, BytesToDst: ev.Orig.Bytes,
		PacketsToSrc: ev.Reply.Packets, BytesToSrc: ev.Reply.Bytes}
	p.describe(rec, ev.Proto, ev.Src, ev.Dst, ev.ICMPType, verdict, origin, start)
	return rec
}

// connStart sets rec's connection start (a record that covers part of a
// connection).
func (p *Pipeline) connStart(rec *flow.Record, t time.Time) {
	p.parts.connStart = t
	rec.ConnStart = &p.parts.connStart
}

// describe fills the connection's names, verdict, origin and expected flag.
func (p *Pipeline) describe(rec *flow.Record, proto segment.Protocol, src, dst netip.AddrPort, icmpType uint8, v segment.Verdict, originID uint16, connStart time.Time) {
	tr := p.resolverAt(connStart)
	res := tr.r
	rec.Protocol = proto.String()
	sp, dp := res.Resolve(src.Addr()), res.Resolve(dst.Addr())
	rec.Src = p.endpoint(&p.parts.src, tr, src, &sp)
	rec.Dst = p.endpoint(&p.parts.dst, tr, dst, &dp)
	if proto == segment.ICMP || proto == segment.ICMPv6 {
		p.parts.icmp = icmpType
		rec.ICMPType = &p.parts.icmp
		rec.Src.Port, rec.Dst.Port = 0, 0
	}
	switch {
	case sp.Local:
		rec.Direction = "egress"
	case dp.Local:
		rec.Direction = "ingress"
	default:
		rec.Direction = "forward"
	}
	rec.Verdict = v.String()
	o, ok := res.Origin(originID)
	if !ok {
		o = segment.Origin{ID: originID}
	}
	p.parts.origin = o
	rec.Origin = &p.parts.origin
	p.parts.expected = v == segment.Allowed && ok && (o.Kind == segment.OriginZonePolicy || o.Kind == segment.OriginServiceDependency)
	rec.Expected = &p.parts.expected
}

// endpoint fills e with the address and what peer (the address resolved
// under tr) names.
func (p *Pipeline) endpoint(e *flow.Endpoint, tr timedResolver, ap netip.AddrPort, peer *Peer) *flow.Endpoint {
	*e = flow.Endpoint{IP: addrString(ap.Addr()), Port: ap.Port(), Namespace: peer.Namespace, Name: peer.Name, Zone: peer.Zone,
		Labels: p.selectedLabels(tr.gen, peer)}
	return e
}

// labelsKey names a workload under one resolver (its generation).
type labelsKey struct {
	gen             uint64
	namespace, name string
}

// selectedLabels returns the workload's labels that the config selects,
// nil when none. The map is shared by every record of the workload under
// this resolver (records are read-only once built): one map per workload,
// not two per connection.
func (p *Pipeline) selectedLabels(gen uint64, peer *Peer) map[string]string {
	if len(peer.Labels) == 0 {
		return nil
	}
	k := labelsKey{gen, peer.Namespace, peer.Name}
	if m, ok := p.labels[k]; ok {
		return m
	}
	var m map[string]string
	for _, l := range p.cfg.Labels {
		if v, ok := peer.Labels[l]; ok {
			if m == nil {
				m = map[string]string{}
			}
			m[l] = v
		}
	}
	if len(p.labels) >= 10000 {
		clear(p.labels) // workloads of old resolvers go
	}
	p.labels[k] = m
	return m
}

func (p *Pipeline) emitFlow(rec *flow.Record) {
	p.write(rec)
	if !rec.IsExpected() {
		p.fold(rec)
	}
}

// interim writes a record for every tracked connection that has been open
// for at least an interval, with the counters since its last record.
func (p *Pipeline) interim(now time.Time, evs []flows.ConnEvent) {
	seen := make(map[connKey]bool, len(evs))
	for i := range evs {
		ev := &evs[i]
		verdict, _ := ev.Mark.Decision()
		if verdict != segment.Allowed && verdict != segment.WouldDeny {
			continue
		}
		k := keyOf(ev)
		seen[k] = true
		start := firstNonZero(ev.Start, ev.Time)
		of, ok := p.open[k]
		if !ok {
			if len(p.open) >= p.cfg.MaxOpenFlows {
				if now.Sub(start) >= p.cfg.FlowInterval {
					p.lose(flow.CauseOpenTableFull, flow.UnitRecords, 1)
				}
				continue
			}
			of = &openFlow{connStart: start}
			p.open[k] = of
		}
		from := firstNonZero(of.reportedUntil, of.connStart)
		if now.Sub(from) < p.cfg.FlowInterval {
			continue
		}
		rec := p.connRecord(ev, flow.ReportInterim, from)
		rec.End = now
		p.connStart(rec, of.connStart)
		rec.PacketsToDst -= of.orig.Packets
		rec.BytesToDst -= of.orig.Bytes
		rec.PacketsToSrc -= of.reply.Packets
		rec.BytesToSrc -= of.reply.Bytes
		of.reportedUntil, of.orig, of.reply = now, ev.Orig, ev.Reply
		p.emitFlow(rec)
	}
	// Entries gone from two dumps in a row lost their DESTROY event (the
	// loss was counted where it happened): stop tracking them. One dump is
	// not enough: the DESTROY may still wait in the queue.
	for k := range p.open {
		if seen[k] {
			delete(p.missing, k)
			continue
		}
		p.missing[k]++
		if p.missing[k] >= 2 {
			delete(p.open, k)
			delete(p.missing, k)
		}
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
	k := tupleKey{proto: pkt.Proto, src: pkt.Src, dst: pkt.Dst}
	icmp := pkt.Proto == segment.ICMP || pkt.Proto == segment.ICMPv6
	if icmp {
		k.icmp = uint16(pkt.ICMPType)<<8 | uint16(pkt.ICMPCode)
	}
	a, ok := p.denied[k]
	if !ok {
		if len(p.denied) >= p.cfg.MaxDenied {
			p.lose(flow.CauseDeniedTableFull, flow.UnitPackets, 1)
			return
		}
		a = &aggregate{first: pkt.Time, mark: pkt.Mark, icmp: icmp, icmpType: pkt.ICMPType}
		p.denied[k] = a
	}
	a.packets++
	a.bytes += uint64(pkt.Length)
	if pkt.Time.Before(a.first) {
		a.first = pkt.Time
	}
	if pkt.Time.After(a.last) {
		a.last = pkt.Time
	}
}

// flushDenied writes one record per denied 5-tuple of the interval.
func (p *Pipeline) flushDenied(now time.Time) {
	for k, a := range p.denied {
		verdict, origin := a.mark.Decision()
		rec := &flow.Record{Kind: flow.KindFlow, Report: flow.ReportAggregate, Start: a.first, End: a.last,
			PacketsToDst: a.packets, BytesToDst: a.bytes}
		p.describe(rec, k.proto, k.src, k.dst, a.icmpType, verdict, origin, a.first)
		p.emitFlow(rec)
		delete(p.denied, k)
	}
}
