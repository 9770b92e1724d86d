package flowlog

import (
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
)

// alertKey folds unexpected connections: source and destination workload
// (or address), destination port and protocol, verdict.
type alertKey struct {
	src, dst string
	port     uint16
	proto    string
	verdict  string
}

type alert struct {
	rec         flow.Record // the alert as last written, updated in place
	dirty       bool
	lastWritten time.Time
}

// fold counts an unexpected flow record into its alert: Count is the
// connections (attempts, for denied aggregates) folded. A new key is written at once; later changes at most
// once per interval (updateAlerts).
func (p *Pipeline) fold(r *flow.Record) {
	k := alertKey{src: r.Src.Workload(), dst: r.Dst.Workload(), port: r.Dst.Port, proto: r.Protocol, verdict: r.Verdict}
	// A connection counts once: in its first record (the first interim
	// one, or the final one when there was none).
	n := uint64(1)
	if r.ConnStart != nil && !r.Start.Equal(*r.ConnStart) {
		n = 0
	}
	p.m.unexpected.WithLabelValues(r.Src.Zone, r.Dst.Zone, r.Verdict).Add(float64(n))
	a, ok := p.alertsByKey[k]
	if !ok {
		if len(p.alertsByKey) >= p.cfg.MaxAlerts {
			p.lose(flow.CauseAlertTableFull, flow.UnitConnections, n)
			return
		}
		src, dst := *r.Src, *r.Dst
		src.Port = 0
		var origin *segment.Origin
		if r.Origin != nil {
			o := *r.Origin
			origin = &o
		}
		var icmp *uint8 // r's parts are reused: the alert keeps copies
		if r.ICMPType != nil {
			t := *r.ICMPType
			icmp = &t
		}
		f := false
		a = &alert{rec: flow.Record{Kind: flow.KindAlert, Start: r.Start, End: r.End, Protocol: r.Protocol,
			Src: &src, Dst: &dst, ICMPType: icmp, Verdict: r.Verdict, Origin: origin, Expected: &f}}
		p.alertsByKey[k] = a
		a.rec.Count = n
		p.writeAlert(a, p.cfg.Now())
		return
	}
	if r.Start.Before(a.rec.Start) {
		a.rec.Start = r.Start
	}
	if r.End.After(a.rec.End) {
		a.rec.End = r.End
	}
	if r.Origin != nil {
		o := *r.Origin
		a.rec.Origin = &o
	}
	if n > 0 {
		a.rec.Count += n
		a.dirty = true
	}
}

func (p *Pipeline) writeAlert(a *alert, now time.Time) {
	rec := a.rec
	p.write(&rec)
	a.dirty, a.lastWritten = false, now
}

// updateAlerts writes the alerts whose count changed, once an interval
// has passed since they were last written (all of them when final), and
// forgets keys idle for AlertTTL.
func (p *Pipeline) updateAlerts(now time.Time, final bool) {
	for k, a := range p.alertsByKey {
		if a.dirty && (final || now.Sub(a.lastWritten) >= p.cfg.FlowInterval) {
			p.writeAlert(a, now)
		}
		if !a.dirty && now.Sub(a.rec.End) > p.cfg.AlertTTL {
			delete(p.alertsByKey, k)
		}
	}
}
