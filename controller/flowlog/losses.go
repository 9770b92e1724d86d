package flowlog

import (
	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/dataplane"
)

type lostKey struct{ cause, unit string }

// losses gathers, over an interval, what the pipeline could not record:
// the queue's drops, the kernel's rate-limit counters, the readers'
// overflows, full tables. Each interval's sums become lost records.
type losses struct {
	pending  map[lostKey]uint64
	reported map[string]uint64 // queue drops already reported, by unit
	// The sources' values at the last collect: only later growth is lost.
	lastCounters, lastOverflow map[string]uint64
	lastDropped                uint64 // records the logs dropped
}

func newLosses() *losses {
	return &losses{pending: map[lostKey]uint64{}, reported: map[string]uint64{}}
}

func (l *losses) add(cause, unit string, n uint64) {
	if n > 0 {
		l.pending[lostKey{cause, unit}] += n
	}
}

// baseline reads the sources' current values so that only later changes
// count as losses.
func (l *losses) baseline(src Sources) {
	if src.Counters != nil {
		if c, err := src.Counters(); err == nil {
			l.lastCounters = c
		}
	}
	if src.Overflows != nil {
		l.lastOverflow = src.Overflows()
	}
}

// collect adds what was lost since the last collect: queue drops (dropped:
// cumulative, by unit), the rate limits' counters and the readers'
// overflows.
func (l *losses) collect(dropped map[string]uint64, src Sources) {
	for unit, v := range dropped {
		if d := v - l.reported[unit]; d > 0 {
			l.add(flow.CauseQueueFull, unit, d)
			l.reported[unit] = v
		}
	}
	if src.Counters != nil {
		if cur, err := src.Counters(); err == nil {
			for name, cause := range map[string]string{dataplane.CounterLogLimitedAllow: flow.CauseRateLimitAllow, dataplane.CounterLogLimitedDeny: flow.CauseRateLimitDeny} {
				unit := flow.UnitPackets
				if cause == flow.CauseRateLimitAllow {
					// Accepted connections keep their records (conntrack);
					// only their NFLOG message is missing.
					unit = unitMessages
				}
				l.add(cause, unit, delta(cur[name], l.lastCounters[name]))
			}
			l.lastCounters = cur
		}
	}
	if src.Overflows != nil {
		cur := src.Overflows()
		for cause, v := range cur {
			l.add(cause, flow.UnitOverflows, delta(v, l.lastOverflow[cause]))
		}
		l.lastOverflow = cur
	}
}

// collectWrites adds the records the logs dropped since the last call
// (dropped: cumulative).
func (l *losses) collectWrites(dropped uint64) {
	l.add(flow.CauseWriteError, flow.UnitRecords, delta(dropped, l.lastDropped))
	l.lastDropped = dropped
}

// drain hands each pending loss to f and forgets it.
func (l *losses) drain(f func(k lostKey, n uint64)) {
	for k, n := range l.pending {
		f(k, n)
		delete(l.pending, k)
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
