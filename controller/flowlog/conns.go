package flowlog

import (
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane/flows"
)

// connKey identifies a conntrack entry: the kernel reuses ids, so the
// tuple comes along.
type connKey struct {
	id       uint32
	proto    segment.Protocol
	src, dst netip.AddrPort
}

func keyOf(ev *flows.ConnEvent) connKey {
	return connKey{id: ev.ID, proto: ev.Proto, src: ev.Src, dst: ev.Dst}
}

// openFlow is a connection tracked for interim records.
type openFlow struct {
	connStart time.Time
	// reportedUntil: the end of the last interim record (zero: none yet).
	reportedUntil time.Time
	// reported counters, subtracted from later ones.
	orig, reply flows.Counters
}

// since subtracts what earlier interim records reported from rec's
// counters.
func (of *openFlow) since(rec *flow.Record) {
	rec.PacketsToDst -= of.orig.Packets
	rec.BytesToDst -= of.orig.Bytes
	rec.PacketsToSrc -= of.reply.Packets
	rec.BytesToSrc -= of.reply.Bytes
}

// openConns are the connections tracked for interim records (at most
// max), and how many dumps in a row each has been missing from.
type openConns struct {
	byKey   map[connKey]*openFlow
	missing map[connKey]int
	max     int
}

func newOpenConns(max int) *openConns {
	return &openConns{byKey: map[connKey]*openFlow{}, missing: map[connKey]int{}, max: max}
}

func (o *openConns) len() int { return len(o.byKey) }

// track starts tracking k; false: the table is full.
func (o *openConns) track(k connKey, start time.Time) (*openFlow, bool) {
	if of, ok := o.byKey[k]; ok {
		return of, true
	}
	if len(o.byKey) >= o.max {
		return nil, false
	}
	of := &openFlow{connStart: start}
	o.byKey[k] = of
	return of, true
}

// end stops tracking k and returns what it was (nil: untracked).
func (o *openConns) end(k connKey) *openFlow {
	of := o.byKey[k]
	delete(o.byKey, k)
	delete(o.missing, k)
	return of
}

// sweep forgets entries gone from two dumps in a row (seen: the entries
// of this dump): they lost their DESTROY event (the loss was counted
// where it happened). One dump is not enough: the DESTROY may still wait
// in the queue.
func (o *openConns) sweep(seen map[connKey]bool) {
	for k := range o.byKey {
		if seen[k] {
			delete(o.missing, k)
			continue
		}
		o.missing[k]++
		if o.missing[k] >= 2 {
			o.end(k)
		}
	}
}

// conn handles a conntrack event: NEW starts tracking, DESTROY writes the
// final record (the counters since the last interim one).
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
		if _, ok := p.open.track(k, firstNonZero(ev.Start, ev.Time)); !ok {
			p.m.untracked.Inc()
		}
	case flows.ConnDestroy:
		of := p.open.end(k)
		start := firstNonZero(ev.Start, ev.Time)
		rec := p.rec.connRecord(&ev, flow.ReportFinal, start, p.res.at(start))
		rec.End = firstNonZero(ev.Stop, ev.Time)
		if of != nil && !of.reportedUntil.IsZero() {
			p.rec.connStart(rec, start)
			rec.Start = of.reportedUntil
			of.since(rec)
		}
		p.emitFlow(rec)
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
		of, ok := p.open.track(k, start)
		if !ok {
			if now.Sub(start) >= p.cfg.FlowInterval {
				p.losses.add(flow.CauseOpenTableFull, flow.UnitRecords, 1)
			}
			continue
		}
		from := firstNonZero(of.reportedUntil, of.connStart)
		if now.Sub(from) < p.cfg.FlowInterval {
			continue
		}
		rec := p.rec.connRecord(ev, flow.ReportInterim, from, p.res.at(from))
		rec.End = now
		p.rec.connStart(rec, of.connStart)
		of.since(rec)
		of.reportedUntil, of.orig, of.reply = now, ev.Orig, ev.Reply
		p.emitFlow(rec)
	}
	p.open.sweep(seen)
}

func firstNonZero(ts ...time.Time) time.Time {
	for _, t := range ts {
		if !t.IsZero() {
			return t
		}
	}
	return time.Time{}
}
