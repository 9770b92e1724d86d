package flowlog

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/flows"
)

// Config tunes the pipeline. Zero fields take the defaults.
type Config struct {
	// Node names this node in every record.
	Node string
	// FlowInterval: interim records of long connections, denied aggregates,
	// loss records and alert updates are written at most this often.
	// Default 60s.
	FlowInterval time.Duration
	// QueueSize bounds the events waiting for the pipeline; an event that
	// does not fit is dropped and counted (queue-full). Default 65536.
	QueueSize int
	// MaxOpenFlows bounds the connections tracked for interim records,
	// MaxDenied the denied 5-tuples aggregated per interval, MaxAlerts the
	// alert keys. Defaults 100000, 50000, 10000.
	MaxOpenFlows, MaxDenied, MaxAlerts int
	// BatchWait is how long the pipeline lets events gather after it has
	// written a burst, so that a busy node wakes it once per batch instead
	// of once per connection. Default 200 ms; negative: no wait.
	BatchWait time.Duration
	// AlertTTL forgets an alert key not seen for this long. Default 24h.
	AlertTTL time.Duration
	// Labels are the label keys copied into records. Default ["app"].
	Labels []string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnRecord, when set, sees every record written (flow, lost, alert),
	// on the pipeline's goroutine: it must not block, must not modify the
	// record (its label maps are shared), and must not keep it or its
	// parts past the call (their storage is reused).
	OnRecord func(*flow.Record)
}

// Defaults fills unset fields.
func (c Config) Defaults() Config {
	if c.FlowInterval <= 0 {
		c.FlowInterval = time.Minute
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 65536
	}
	if c.MaxOpenFlows <= 0 {
		c.MaxOpenFlows = 100000
	}
	if c.MaxDenied <= 0 {
		c.MaxDenied = 50000
	}
	if c.MaxAlerts <= 0 {
		c.MaxAlerts = 10000
	}
	if c.BatchWait == 0 {
		c.BatchWait = 200 * time.Millisecond
	}
	if c.AlertTTL <= 0 {
		c.AlertTTL = 24 * time.Hour
	}
	if c.Labels == nil {
		c.Labels = []string{"app"}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// Sources are what the pipeline polls once per interval; any may be nil.
type Sources struct {
	// Dump lists the open conntrack entries (flows.Conntrack.Dump), for
	// interim records of long connections.
	Dump func() ([]flows.ConnEvent, error)
	// Counters reads the table's named counters
	// (dataplane.Dataplane.CounterValues): the rate-limit counters'
	// deltas are losses.
	Counters func() (map[string]uint64, error)
	// Overflows returns the readers' cumulative overflow counts by cause
	// (flow.CauseNFLOGOverflow, flow.CauseCtOverflow); see ReaderOverflows.
	Overflows func() map[string]uint64
}

// ReaderOverflows makes Sources.Overflows from the readers (either may be nil).
func ReaderOverflows(nl *flows.NFLOG, ct *flows.Conntrack) func() map[string]uint64 {
	return func() map[string]uint64 {
		m := map[string]uint64{}
		if nl != nil {
			m[flow.CauseNFLOGOverflow] = nl.Stats().Overflows
		}
		if ct != nil {
			m[flow.CauseCtOverflow] = ct.Stats().Overflows
		}
		return m
	}
}

// item is one queued event.
type item struct {
	pkt  flows.Packet
	conn flows.ConnEvent
	isCt bool
}

// Pipeline turns events into records. Packets and Conns may be called from
// any goroutine (the readers'); Run owns everything else.
type Pipeline struct {
	cfg     Config
	src     Sources
	flowOut io.Writer
	alerts  io.Writer
	m       *metrics

	// The queue: readers append to pending, Run takes it whole (swapping
	// in the slice it has processed) and is woken through ready. Two
	// slices reused, not a channel of QueueSize events: a channel's ring
	// is written all round, so every slot is cold by the time it comes
	// back (page faults once the kernel has reclaimed it) and the
	// collector scans all of it on every cycle.
	qMu     sync.Mutex
	pending []item
	ready   chan struct{} // capacity 1: pending is not empty

	resMu     sync.Mutex
	resolvers []timedResolver // newest last

	// Drops at the queue, by unit; read by the loop each interval.
	droppedConns, droppedPackets, droppedOther atomic.Uint64

	// Owned by Run.
	open         map[connKey]*openFlow
	missing      map[connKey]int // open flows absent from consecutive dumps
	denied       map[tupleKey]*aggregate
	alertsByKey  map[alertKey]*alert
	lastTick     time.Time
	lastCounters map[string]uint64
	lastOverflow map[string]uint64
	reported     map[string]uint64 // queue drops already reported, by unit
	pendingLost  map[lostKey]uint64
	writeErr     error
	enc          []byte // the record being written
	parts        recordParts
	labels       map[labelsKey]map[string]string

	statsMu sync.Mutex
	stats   Stats
}

type timedResolver struct {
	since time.Time
	r     Resolver
	gen   uint64 // numbers the resolvers in the order they were set
}

type lostKey struct{ cause, unit string }

// Stats are the pipeline's totals since New.
type Stats struct {
	// Records written by kind, flow records also by verdict.
	Flows, Lost, Alerts uint64
	ByVerdict           map[string]uint64
	// LostByCause sums the counts of lost records by "cause/unit".
	LostByCause map[string]uint64
}

// New returns a pipeline writing flow and lost records to flowOut and
// alerts to alertOut (nil: no alert log). A writer with a Flush method
// is flushed after each burst of records.
func New(cfg Config, flowOut, alertOut io.Writer, res Resolver, src Sources) *Pipeline {
	cfg = cfg.Defaults()
	p := &Pipeline{
		cfg: cfg, src: src, flowOut: flowOut, alerts: alertOut,
		ready:       make(chan struct{}, 1),
		open:        map[connKey]*openFlow{},
		missing:     map[connKey]int{},
		denied:      map[tupleKey]*aggregate{},
		alertsByKey: map[alertKey]*alert{},
		reported:    map[string]uint64{},
		pendingLost: map[lostKey]uint64{},
		labels:      map[labelsKey]map[string]string{},
		stats:       Stats{ByVerdict: map[string]uint64{}, LostByCause: map[string]uint64{}},
	}
	p.resolvers = []timedResolver{{r: res}}
	p.m = newMetrics(p)
	return p
}

// SetResolver installs the resolver of a new compiled policy: call it on
// every policy change. Origin ids are renumbered by a recompile, so
// connections that began before the change keep the previous resolver's
// origins (the last few are kept).
func (p *Pipeline) SetResolver(r Resolver) {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	p.resolvers = append(p.resolvers, timedResolver{since: p.cfg.Now(), r: r, gen: p.resolvers[len(p.resolvers)-1].gen + 1})
	if len(p.resolvers) > 4 {
		p.resolvers = p.resolvers[len(p.resolvers)-4:]
	}
}

// resolverAt returns the resolver in force when a connection began.
func (p *Pipeline) resolverAt(t time.Time) timedResolver {
	p.resMu.Lock()
	defer p.resMu.Unlock()
	for i := len(p.resolvers) - 1; i > 0; i-- {
		if !t.Before(p.resolvers[i].since) {
			return p.resolvers[i]
		}
	}
	return p.resolvers[0]
}

// Packets queues a batch of NFLOG packets (a flows.NFLOG handler).
func (p *Pipeline) Packets(pkts []flows.Packet) {
	p.push(len(pkts), func(i int) item { return item{pkt: pkts[i]} })
}

// Conns queues a batch of conntrack events (a flows.Conntrack handler).
func (p *Pipeline) Conns(evs []flows.ConnEvent) {
	p.push(len(evs), func(i int) item { return item{conn: evs[i], isCt: true} })
}

// push queues the n events at(0), ..., at(n-1) with one lock and at most
// one wake-up of Run. It never blocks: events past QueueSize are dropped
// and counted by unit.
func (p *Pipeline) push(n int, at func(int) item) {
	p.qMu.Lock()
	fit := min(n, max(0, p.cfg.QueueSize-len(p.pending)))
	wake := len(p.pending) == 0 && fit > 0
	for i := range fit {
		p.pending = append(p.pending, at(i))
	}
	p.qMu.Unlock()
	for i := fit; i < n; i++ {
		switch it := at(i); {
		case it.isCt && it.conn.Type == flows.ConnDestroy:
			p.droppedConns.Add(1)
		case !it.isCt && it.pkt.Prefix == flows.PrefixDeny:
			p.droppedPackets.Add(1)
		default:
			p.droppedOther.Add(1)
		}
	}
	if wake {
		select {
		case p.ready <- struct{}{}:
		default:
		}
	}
}

// take returns the queued events, handing the queue spare (emptied) to
// fill next.
func (p *Pipeline) take(spare []item) []item {
	p.qMu.Lock()
	defer p.qMu.Unlock()
	got := p.pending
	p.pending = spare[:0]
	return got
}

// Run processes events until ctx ends, then drains the queue, writes the
// denied aggregates, losses and alert updates still pending, and returns.
// Open connections get no record at shutdown (their conntrack entries
// outlive the agent). It returns the first write error, if any.
func (p *Pipeline) Run(ctx context.Context) error {
	now := p.cfg.Now()
	p.lastTick = now
	p.baseline()
	ticker := time.NewTicker(p.cfg.FlowInterval)
	defer ticker.Stop()
	var spare []item
	for {
		select {
		case <-p.ready:
			// Everything queued, then a flush, so that readers of the
			// file see records soon without a write per record.
			spare = p.drain(spare)
			p.flush()
			if p.cfg.BatchWait > 0 {
				time.Sleep(p.cfg.BatchWait)
			}
		case <-ticker.C:
			p.tick(p.cfg.Now(), true)
		case <-ctx.Done():
			p.drain(spare)
			p.tick(p.cfg.Now(), false)
			return p.writeErr
		}
	}
}

// drain processes the queued events, without waiting for more, and
// returns the emptied slice for reuse.
func (p *Pipeline) drain(spare []item) []item {
	got := p.take(spare)
	for i := range got {
		p.process(got[i])
	}
	clear(got) // no references kept past their records
	return got[:0]
}

// baseline reads the counters' current values so that only later
// changes count as losses.
func (p *Pipeline) baseline() {
	if p.src.Counters != nil {
		if c, err := p.src.Counters(); err == nil {
			p.lastCounters = c
		}
	}
	if p.src.Overflows != nil {
		p.lastOverflow = p.src.Overflows()
	}
}

func (p *Pipeline) process(it item) {
	if it.isCt {
		p.conn(it.conn)
		return
	}
	p.packet(it.pkt)
}

// tick ends an interval: denied aggregates, interim records (with dump),
// losses, alert updates, then a flush.
func (p *Pipeline) tick(now time.Time, dump bool) {
	p.flushDenied(now)
	if dump && p.src.Dump != nil {
		if evs, err := p.src.Dump(); err == nil {
			p.interim(now, evs)
		}
	}
	p.collectLosses()
	p.writeLost(p.lastTick, now)
	p.updateAlerts(now, !dump)
	p.lastTick = now
	p.flush()
	p.m.setGauges(len(p.open), len(p.denied), len(p.alertsByKey))
}

func (p *Pipeline) collectLosses() {
	for unit, v := range map[string]uint64{flow.UnitConnections: p.droppedConns.Load(), flow.UnitPackets: p.droppedPackets.Load(), "messages": p.droppedOther.Load()} {
		if d := v - p.reported[unit]; d > 0 {
			p.pendingLost[lostKey{flow.CauseQueueFull, unit}] += d
			p.reported[unit] = v
		}
	}
	if p.src.Counters != nil {
		if cur, err := p.src.Counters(); err == nil {
			for name, cause := range map[string]string{dataplane.CounterLogLimitedAllow: flow.CauseRateLimitAllow, dataplane.CounterLogLimitedDeny: flow.CauseRateLimitDeny} {
				unit := flow.UnitPackets
				if cause == flow.CauseRateLimitAllow {
					// Accepted connections keep their records (conntrack);
					// only their NFLOG message is missing.
					unit = "messages"
				}
				if d := delta(cur[name], p.lastCounters[name]); d > 0 {
					p.pendingLost[lostKey{cause, unit}] += d
				}
			}
			p.lastCounters = cur
		}
	}
	if p.src.Overflows != nil {
		cur := p.src.Overflows()
		for cause, v := range cur {
			if d := delta(v, p.lastOverflow[cause]); d > 0 {
				p.pendingLost[lostKey{cause, flow.UnitOverflows}] += d
			}
		}
		p.lastOverflow = cur
	}
}

// delta of a counter that only grows, unless it was reset (the table was
// recreated): then all of cur is new.
func delta(cur, last uint64) uint64 {
	if cur < last {
		return cur
	}
	return cur - last
}

func (p *Pipeline) lose(cause, unit string, n uint64) {
	if n > 0 {
		p.pendingLost[lostKey{cause, unit}] += n
	}
}

func (p *Pipeline) writeLost(start, end time.Time) {
	for k, n := range p.pendingLost {
		p.write(&flow.Record{Kind: flow.KindLost, Start: start, End: end, Cause: k.cause, Unit: k.unit, Count: n})
		p.m.lost.WithLabelValues(k.cause, k.unit).Add(float64(n))
		p.statsMu.Lock()
		p.stats.LostByCause[k.cause+"/"+k.unit] += n
		p.statsMu.Unlock()
		delete(p.pendingLost, k)
	}
}

// write encodes one record to its log.
func (p *Pipeline) write(r *flow.Record) {
	r.Schema = flow.Schema
	r.Node = p.cfg.Node
	out := p.flowOut
	if r.Kind == flow.KindAlert {
		out = p.alerts
	}
	if out == nil {
		return
	}
	p.enc = append(appendRecord(p.enc[:0], r), '\n')
	if _, err := out.Write(p.enc); err != nil {
		p.setErr(fmt.Errorf("write %s record: %w", r.Kind, err))
		return
	}
	if p.cfg.OnRecord != nil {
		p.cfg.OnRecord(r)
	}
	p.statsMu.Lock()
	switch r.Kind {
	case flow.KindFlow:
		p.stats.Flows++
		p.stats.ByVerdict[r.Verdict]++
	case flow.KindLost:
		p.stats.Lost++
	case flow.KindAlert:
		p.stats.Alerts++
	}
	p.statsMu.Unlock()
	p.m.records.WithLabelValues(r.Kind, r.Verdict).Inc()
}

func (p *Pipeline) setErr(err error) {
	if p.writeErr == nil {
		p.writeErr = err
	}
	p.m.writeErrors.Inc()
}

type flusher interface{ Flush() error }

func (p *Pipeline) flush() {
	for _, w := range []io.Writer{p.flowOut, p.alerts} {
		if f, ok := w.(flusher); ok {
			if err := f.Flush(); err != nil {
				p.setErr(fmt.Errorf("flush: %w", err))
			}
		}
	}
}

// Stats returns the totals so far.
func (p *Pipeline) Stats() Stats {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	s := p.stats
	s.ByVerdict, s.LostByCause = map[string]uint64{}, map[string]uint64{}
	for k, v := range p.stats.ByVerdict {
		s.ByVerdict[k] = v
	}
	for k, v := range p.stats.LostByCause {
		s.LostByCause[k] = v
	}
	return s
}

// QueueLen is the number of events waiting.
func (p *Pipeline) QueueLen() int {
	p.qMu.Lock()
	defer p.qMu.Unlock()
	return len(p.pending)
}

func addrString(a netip.Addr) string { return a.Unmap().String() }
