package flowlog

import (
	"context"
	"io"
	"time"

	"github.com/netseg/netseg/api/flow"
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
	// MaxAlertsPerSource is the alert keys one source workload may hold;
	// its further keys fold into one scan alert. Default 64.
	MaxAlertsPerSource int
	// Labels are the label keys copied into records. Default ["app"].
	Labels []string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// OnRecord, when set, sees every record written (flow, lost, alert),
	// on the pipeline's goroutine: it must not block, must not modify the
	// record (its label maps are shared), and must not keep it or its
	// parts past the call (their storage is reused).
	OnRecord func(*flow.Record)
	// OnWriteError, when set, hears when writing a log starts failing (the
	// error) and when it works again (nil), on the pipeline's goroutine.
	OnWriteError func(error)
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
	if c.MaxAlertsPerSource <= 0 {
		c.MaxAlertsPerSource = 64
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

// Pipeline turns events into records. Packets and Conns may be called from
// any goroutine (the readers'); Run's loop owns everything else. Each part
// owns its state: the queue (events in), the open connections, the
// denied aggregates, the alerts, the losses, and the recorder (records
// out); the loop moves events and intervals between them.
type Pipeline struct {
	cfg Config
	src Sources
	m   *metrics

	q   *queue
	res *resolverHistory

	// Owned by Run.
	open     *openConns
	denied   *deniedAggs
	alerts   *alertBook
	losses   *losses
	rec      *recorder
	lastTick time.Time
}

// New returns a pipeline writing flow and lost records to flowOut and
// alerts to alertOut (nil: no alert log). A writer with a Flush method
// is flushed after each burst of records.
func New(cfg Config, flowOut, alertOut io.Writer, res Resolver, src Sources) *Pipeline {
	cfg = cfg.Defaults()
	p := &Pipeline{
		cfg: cfg, src: src,
		q:      newQueue(cfg.QueueSize),
		res:    &resolverHistory{list: []timedResolver{{r: res}}},
		open:   newOpenConns(cfg.MaxOpenFlows),
		denied: newDeniedAggs(cfg.MaxDenied),
		alerts: newAlertBook(cfg.MaxAlerts, cfg.MaxAlertsPerSource, cfg.FlowInterval, cfg.AlertTTL),
		losses: newLosses(),
	}
	p.m = newMetrics(p)
	p.rec = &recorder{node: cfg.Node, labels: cfg.Labels, flowOut: flowOut, alerts: alertOut, onRecord: cfg.OnRecord,
		onWriteError: cfg.OnWriteError, m: p.m,
		byWorkload: map[labelsKey]map[string]string{},
		stats:      Stats{ByVerdict: map[string]uint64{}, LostByCause: map[string]uint64{}}}
	return p
}

// SetResolver installs the resolver of a new compiled policy: call it on
// every policy change. Origin ids are renumbered by a recompile, so
// connections that began before the change keep the previous resolver's
// origins (the last few are kept).
func (p *Pipeline) SetResolver(r Resolver) { p.res.set(r, p.cfg.Now()) }

// Packets queues a batch of NFLOG packets (a flows.NFLOG handler).
func (p *Pipeline) Packets(pkts []flows.Packet) {
	p.q.push(len(pkts), func(i int) item { return item{pkt: pkts[i]} })
}

// Conns queues a batch of conntrack events (a flows.Conntrack handler).
func (p *Pipeline) Conns(evs []flows.ConnEvent) {
	p.q.push(len(evs), func(i int) item { return item{conn: evs[i], isCt: true} })
}

// Run processes events until ctx ends, then drains the queue, writes the
// denied aggregates, losses and alert updates still pending, and returns.
// Open connections get no record at shutdown (their conntrack entries
// outlive the agent). It returns the first write error, if any.
func (p *Pipeline) Run(ctx context.Context) error {
	p.lastTick = p.cfg.Now()
	p.baseline()
	ticker := time.NewTicker(p.cfg.FlowInterval)
	defer ticker.Stop()
	var spare []item
	for {
		select {
		case <-p.q.ready:
			// Everything queued, then a flush, so that readers of the
			// file see records soon without a write per record.
			spare = p.drain(spare)
			p.rec.flush()
			if p.cfg.BatchWait > 0 {
				time.Sleep(p.cfg.BatchWait)
			}
		case <-ticker.C:
			p.tick(p.cfg.Now(), true)
		case <-ctx.Done():
			p.drain(spare)
			p.tick(p.cfg.Now(), false)
			return p.rec.err
		}
	}
}

// baseline reads the loss sources' current values so that only later
// changes count as losses.
func (p *Pipeline) baseline() { p.losses.baseline(p.src) }

// drain processes the queued events, without waiting for more, and
// returns the emptied slice for reuse.
func (p *Pipeline) drain(spare []item) []item {
	got := p.q.take(spare)
	for i := range got {
		if got[i].isCt {
			p.conn(got[i].conn)
		} else {
			p.packet(got[i].pkt)
		}
	}
	clear(got) // no references kept past their records
	return got[:0]
}

// tick ends an interval: denied aggregates, interim records (with dump),
// losses, alert updates, then a flush.
func (p *Pipeline) tick(now time.Time, dump bool) {
	p.flushDenied()
	if dump && p.src.Dump != nil {
		if evs, err := p.src.Dump(); err == nil {
			p.interim(now, evs)
		}
	}
	p.losses.collect(p.q.dropped(), p.src)
	p.losses.collectWrites(p.rec.dropped())
	p.writeLost(p.lastTick, now)
	p.alerts.due(now, !dump, func(a *alert) { p.writeAlert(a, now) })
	p.lastTick = now
	p.rec.flush()
	p.m.setGauges(p.open.len(), p.denied.len(), p.alerts.len())
}

// writeLost writes the interval's losses as lost records.
func (p *Pipeline) writeLost(start, end time.Time) {
	p.losses.drain(func(k lostKey, n uint64) {
		p.rec.write(&flow.Record{Kind: flow.KindLost, Start: start, End: end, Cause: k.cause, Unit: k.unit, Count: n})
		p.m.lost.WithLabelValues(k.cause, k.unit).Add(float64(n))
		p.rec.countLost(k, n)
	})
}

// emitFlow writes a flow record, and folds it into its alert when it is
// unexpected.
func (p *Pipeline) emitFlow(rec *flow.Record) {
	p.rec.write(rec)
	if !rec.IsExpected() {
		p.fold(rec)
	}
}

// Stats returns the totals so far.
func (p *Pipeline) Stats() Stats { return p.rec.totals() }

// QueueLen is the number of events waiting.
func (p *Pipeline) QueueLen() int { return p.q.len() }
