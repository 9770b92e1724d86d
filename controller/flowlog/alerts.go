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

// alertBook holds the alerts by key (at most max): a new key is written at
// once, later changes at most once per interval, and a key idle for ttl
// is forgotten.
type alertBook struct {
	byKey         map[alertKey]*alert
	max           int
	interval, ttl time.Duration
}

func newAlertBook(max int, interval, ttl time.Duration) *alertBook {
	return &alertBook{byKey: map[alertKey]*alert{}, max: max, interval: interval, ttl: ttl}
}

func (b *alertBook) len() int { return len(b.byKey) }

// fold counts n connections of the unexpected flow record r into its
// alert. It returns the alert when it is new (to be written now), and
// false when the book is full and r was not folded.
func (b *alertBook) fold(r *flow.Record, n uint64) (fresh *alert, ok bool) {
	k := alertKey{src: r.Src.Workload(), dst: r.Dst.Workload(), port: r.Dst.Port, proto: r.Protocol, verdict: r.Verdict}
	a, known := b.byKey[k]
	if !known {
		if len(b.byKey) >= b.max {
			return nil, false
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
			Src: &src, Dst: &dst, ICMPType: icmp, Verdict: r.Verdict, Origin: origin, Expected: &f, Count: n}}
		b.byKey[k] = a
		return a, true
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
	return nil, true
}

// due hands write the alerts whose count changed, once an interval has
// passed since they were last written (all of them when final), and
// forgets keys idle for the ttl.
func (b *alertBook) due(now time.Time, final bool, write func(*alert)) {
	for k, a := range b.byKey {
		if a.dirty && (final || now.Sub(a.lastWritten) >= b.interval) {
			write(a)
		}
		if !a.dirty && now.Sub(a.rec.End) > b.ttl {
			delete(b.byKey, k)
		}
	}
}

// fold counts an unexpected flow record into its alert: Count is the
// connections (attempts, for denied aggregates) folded. A new alert is
// written at once.
func (p *Pipeline) fold(r *flow.Record) {
	// A connection counts once: in its first record (the first interim
	// one, or the final one when there was none).
	n := uint64(1)
	if r.ConnStart != nil && !r.Start.Equal(*r.ConnStart) {
		n = 0
	}
	p.m.unexpected.WithLabelValues(r.Src.Zone, r.Dst.Zone, r.Verdict).Add(float64(n))
	fresh, ok := p.alerts.fold(r, n)
	switch {
	case !ok:
		p.losses.add(flow.CauseAlertTableFull, flow.UnitConnections, n)
	case fresh != nil:
		p.writeAlert(fresh, p.cfg.Now())
	}
}

func (p *Pipeline) writeAlert(a *alert, now time.Time) {
	rec := a.rec
	p.rec.write(&rec)
	a.dirty, a.lastWritten = false, now
}
