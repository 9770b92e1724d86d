package flowlog

import (
	"sync"
	"sync/atomic"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/dataplane/flows"
)

// item is one queued event.
type item struct {
	pkt  flows.Packet
	conn flows.ConnEvent
	isCt bool
}

// queue hands events from the readers' goroutines to the pipeline's loop.
// Readers append to pending; the loop takes it whole (swapping in the
// slice it has processed) and is woken through ready. Two slices reused,
// not a channel of size events: a channel's ring is written all round, so
// every slot is cold by the time it comes back (page faults once the
// kernel has reclaimed it) and the collector scans all of it on every
// cycle.
type queue struct {
	size    int
	mu      sync.Mutex
	pending []item
	ready   chan struct{} // capacity 1: pending is not empty

	// Events dropped because the queue was full, by unit.
	droppedConns, droppedPackets, droppedOther atomic.Uint64
}

func newQueue(size int) *queue { return &queue{size: size, ready: make(chan struct{}, 1)} }

// push queues the n events at(0), ..., at(n-1) with one lock and at most
// one wake-up of the loop. It never blocks: events past the queue's size
// are dropped and counted by unit.
func (q *queue) push(n int, at func(int) item) {
	q.mu.Lock()
	fit := min(n, max(0, q.size-len(q.pending)))
	wake := len(q.pending) == 0 && fit > 0
	for i := range fit {
		q.pending = append(q.pending, at(i))
	}
	q.mu.Unlock()
	for i := fit; i < n; i++ {
		switch it := at(i); {
		case it.isCt && it.conn.Type == flows.ConnDestroy:
			q.droppedConns.Add(1)
		case !it.isCt && it.pkt.Prefix == flows.PrefixDeny:
			q.droppedPackets.Add(1)
		default:
			q.droppedOther.Add(1)
		}
	}
	if wake {
		select {
		case q.ready <- struct{}{}:
		default:
		}
	}
}

// take returns the queued events, handing the queue spare (emptied) to
// fill next.
func (q *queue) take(spare []item) []item {
	q.mu.Lock()
	defer q.mu.Unlock()
	got := q.pending
	q.pending = spare[:0]
	return got
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.pending)
}

// dropped returns the drops so far by unit (cumulative).
func (q *queue) dropped() map[string]uint64 {
	return map[string]uint64{flow.UnitConnections: q.droppedConns.Load(), flow.UnitPackets: q.droppedPackets.Load(), unitMessages: q.droppedOther.Load()}
}

// unitMessages counts NFLOG messages that are not records of their own
// (accepted connections' first packets).
const unitMessages = "messages"
