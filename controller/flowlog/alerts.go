package flowlog

import (
	"container/list"
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
	scan     bool // the scan alert of src and verdict
}

type alert struct {
	key         alertKey
	rec         flow.Record // the alert as last written, updated in place
	dirty       bool
	lastWritten time.Time
}

// alertBook holds the alerts by key, at most max: a new key is written at
// once, later changes at most once per interval, and a key idle for ttl
// is forgotten. No scan can silence it:
//   - a full book evicts its least recently seen key (already written),
//     so a new pair always gets its alert;
//   - a source holds at most perSource keys: past them its new keys fold
//     into one scan alert of that source and verdict, which counts them.
type alertBook struct {
	byKey         map[alertKey]*list.Element // of *alert
	lru           *list.List                 // front: most recently seen
	perSrc        map[string]int             // keys per source, scan alerts left out
	max           int
	perSource     int
	interval, ttl time.Duration
	// evicted and scanned count keys evicted from a full book and new
	// keys folded into scan alerts.
	evicted, scanned uint64
}

func newAlertBook(max, perSource int, interval, ttl time.Duration) *alertBook {
	return &alertBook{byKey: map[alertKey]*list.Element{}, lru: list.New(), perSrc: map[string]int{},
		max: max, perSource: perSource, interval: interval, ttl: ttl}
}

func (b *alertBook) len() int { return len(b.byKey) }

// fold counts n connections of the unexpected flow record r into its
// alert. It returns the alert when it is new (to be written now).
func (b *alertBook) fold(r *flow.Record, n uint64) (fresh *alert) {
	k := alertKey{src: r.Src.Workload(), dst: r.Dst.Workload(), port: r.Dst.Port, proto: r.Protocol, verdict: r.Verdict}
	if e, known := b.byKey[k]; known {
		b.lru.MoveToFront(e)
		b.update(e.Value.(*alert), r, n)
		return nil
	}
	if b.perSrc[k.src] >= b.perSource {
		b.scanned++
		sk := alertKey{src: k.src, verdict: k.verdict, scan: true}
		if e, known := b.byKey[sk]; known {
			b.lru.MoveToFront(e)
			a := e.Value.(*alert)
			a.rec.Scan.Keys++
			b.update(a, r, n)
			a.rec.Origin = nil // a scan has no single origin
			a.dirty = true
			return nil
		}
		src := *r.Src
		src.Port = 0
		f := false
		a := &alert{key: sk, rec: flow.Record{Kind: flow.KindAlert, Start: r.Start, End: r.End, Src: &src, Verdict: r.Verdict,
			Expected: &f, Count: n, Scan: &flow.Scan{Keys: 1}}}
		b.insert(a)
		return a
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
	a := &alert{key: k, rec: flow.Record{Kind: flow.KindAlert, Start: r.Start, End: r.End, Protocol: r.Protocol,
		Src: &src, Dst: &dst, ICMPType: icmp, Verdict: r.Verdict, Origin: origin, Expected: &f, Count: n}}
	b.perSrc[k.src]++
	b.insert(a)
	return a
}

// insert adds a new alert, evicting the least recently seen one when the
// book is full.
func (b *alertBook) insert(a *alert) {
	for len(b.byKey) >= b.max && b.lru.Len() > 0 {
		b.evicted++
		b.remove(b.lru.Back())
	}
	b.byKey[a.key] = b.lru.PushFront(a)
}

func (b *alertBook) remove(e *list.Element) {
	a := b.lru.Remove(e).(*alert)
	delete(b.byKey, a.key)
	if !a.key.scan {
		if b.perSrc[a.key.src]--; b.perSrc[a.key.src] <= 0 {
			delete(b.perSrc, a.key.src)
		}
	}
}

// update folds r into a known alert.
func (b *alertBook) update(a *alert, r *flow.Record, n uint64) {
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

// due hands write the alerts whose count changed, once an interval has
// passed since they were last written (all of them when final), and
// forgets keys idle for the ttl.
func (b *alertBook) due(now time.Time, final bool, write func(*alert)) {
	for e := b.lru.Front(); e != nil; {
		next := e.Next()
		a := e.Value.(*alert)
		if a.dirty && (final || now.Sub(a.lastWritten) >= b.interval) {
			write(a)
		}
		if !a.dirty && now.Sub(a.rec.End) > b.ttl {
			b.remove(e)
		}
		e = next
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
	p.foldN(r, n)
}

// foldN counts n connections (or attempts) of the unexpected record r
// into its alert; a new alert is written at once.
func (p *Pipeline) foldN(r *flow.Record, n uint64) {
	p.m.unexpected.WithLabelValues(r.Src.Zone, r.Dst.Zone, r.Verdict).Add(float64(n))
	evicted, scanned := p.alerts.evicted, p.alerts.scanned
	if fresh := p.alerts.fold(r, n); fresh != nil {
		p.writeAlert(fresh, p.cfg.Now())
	}
	p.m.alertsEvicted.Add(float64(p.alerts.evicted - evicted))
	p.m.alertsScanned.Add(float64(p.alerts.scanned - scanned))
}

func (p *Pipeline) writeAlert(a *alert, now time.Time) {
	rec := a.rec
	p.rec.write(&rec)
	a.dirty, a.lastWritten = false, now
}
