package flowlog

import (
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane/flows"
)

// recorder builds records in reused storage and writes them to their
// logs: flow and lost records to one, alerts to the other.
type recorder struct {
	node     string
	labels   []string // label keys copied into records
	flowOut  io.Writer
	alerts   io.Writer
	onRecord func(*flow.Record)
	m        *metrics

	enc   []byte // the record being written
	parts recordParts
	// byWorkload: the selected labels of each workload under a resolver.
	byWorkload map[labelsKey]map[string]string
	err        error // the first write error
	// failing: the last write or flush failed; onWriteError hears of each
	// change (the error, then nil once writing works again).
	failing      bool
	onWriteError func(error)

	statsMu sync.Mutex
	stats   Stats
}

// Stats are the pipeline's totals since New.
type Stats struct {
	// Records written by kind, flow records also by verdict.
	Flows, Lost, Alerts uint64
	ByVerdict           map[string]uint64
	// LostByCause sums the counts of lost records by "cause/unit".
	LostByCause map[string]uint64
}

// recordParts is the storage of the flow record being built. The
// pipeline builds and writes one record at a time and nothing keeps a
// record once written (alerts copy what they keep), so a busy node's
// records are built without allocating.
type recordParts struct {
	rec       flow.Record
	src, dst  flow.Endpoint
	origin    segment.Origin
	expected  bool
	icmp      uint8
	connStart time.Time
}

// connRecord builds a flow record of a conntrack entry with its full
// counters, named under tr; callers adjust the interval, and write it
// before building another.
func (w *recorder) connRecord(ev *flows.ConnEvent, report string, start time.Time, tr timedResolver) *flow.Record {
	verdict, origin := ev.Mark.Decision()
	rec := &w.parts.rec
	*rec = flow.Record{Kind: flow.KindFlow, Report: report, Start: start, End: ev.Time,
		PacketsToDst: ev.Orig.Packets, BytesToDst: ev.Orig.Bytes,
		PacketsToSrc: ev.Reply.Packets, BytesToSrc: ev.Reply.Bytes}
	w.describe(rec, ev.Proto, ev.Src, ev.Dst, ev.ICMPType, verdict, origin, tr)
	return rec
}

// connStart sets rec's connection start (a record that covers part of a
// connection).
func (w *recorder) connStart(rec *flow.Record, t time.Time) {
	w.parts.connStart = t
	rec.ConnStart = &w.parts.connStart
}

// describe fills the connection's names, verdict, origin and expected
// flag, as the resolver tr knows them.
func (w *recorder) describe(rec *flow.Record, proto segment.Protocol, src, dst netip.AddrPort, icmpType uint8, v segment.Verdict, originID uint16, tr timedResolver) {
	res := tr.r
	rec.Protocol = proto.String()
	sp, dp := res.Resolve(src.Addr()), res.Resolve(dst.Addr())
	rec.Src = w.endpoint(&w.parts.src, tr, src, &sp)
	rec.Dst = w.endpoint(&w.parts.dst, tr, dst, &dp)
	if isICMP(proto) {
		w.parts.icmp = icmpType
		rec.ICMPType = &w.parts.icmp
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
	w.parts.origin = o
	rec.Origin = &w.parts.origin
	w.parts.expected = v == segment.Allowed && ok && (o.Kind == segment.OriginZonePolicy || o.Kind == segment.OriginServiceDependency)
	rec.Expected = &w.parts.expected
}

// endpoint fills e with the address and what peer (the address resolved
// under tr) names.
func (w *recorder) endpoint(e *flow.Endpoint, tr timedResolver, ap netip.AddrPort, peer *Peer) *flow.Endpoint {
	*e = flow.Endpoint{IP: ap.Addr().Unmap().String(), Port: ap.Port(), Namespace: peer.Namespace, Name: peer.Name, Zone: peer.Zone,
		Labels: w.selectedLabels(tr.gen, peer)}
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
func (w *recorder) selectedLabels(gen uint64, peer *Peer) map[string]string {
	if len(peer.Labels) == 0 {
		return nil
	}
	k := labelsKey{gen, peer.Namespace, peer.Name}
	if m, ok := w.byWorkload[k]; ok {
		return m
	}
	var m map[string]string
	for _, l := range w.labels {
		if v, ok := peer.Labels[l]; ok {
			if m == nil {
				m = map[string]string{}
			}
			m[l] = v
		}
	}
	if len(w.byWorkload) >= 10000 {
		clear(w.byWorkload) // workloads of old resolvers go
	}
	w.byWorkload[k] = m
	return m
}

// write encodes one record to its log.
func (w *recorder) write(r *flow.Record) {
	r.Schema = flow.Schema
	r.Node = w.node
	out := w.flowOut
	if r.Kind == flow.KindAlert {
		out = w.alerts
	}
	if out == nil {
		return
	}
	w.enc = append(appendRecord(w.enc[:0], r), '\n')
	if _, err := out.Write(w.enc); err != nil {
		w.setErr(fmt.Errorf("write %s record: %w", r.Kind, err))
		return
	}
	if w.onRecord != nil {
		w.onRecord(r)
	}
	w.statsMu.Lock()
	switch r.Kind {
	case flow.KindFlow:
		w.stats.Flows++
		w.stats.ByVerdict[r.Verdict]++
	case flow.KindLost:
		w.stats.Lost++
	case flow.KindAlert:
		w.stats.Alerts++
	}
	w.statsMu.Unlock()
	w.m.records.WithLabelValues(r.Kind, r.Verdict).Inc()
}

// countLost adds a lost record's count to the stats, written or not.
func (w *recorder) countLost(k lostKey, n uint64) {
	w.statsMu.Lock()
	w.stats.LostByCause[k.cause+"/"+k.unit] += n
	w.statsMu.Unlock()
}

func (w *recorder) setErr(err error) {
	if w.err == nil {
		w.err = err
	}
	w.m.writeErrors.Inc()
	if !w.failing {
		w.failing = true
		if w.onWriteError != nil {
			w.onWriteError(err)
		}
	}
}

// ok notes a write or flush that worked: a failing log has recovered.
func (w *recorder) ok() {
	if w.failing {
		w.failing = false
		if w.onWriteError != nil {
			w.onWriteError(nil)
		}
	}
}

// dropped sums the records the logs dropped with their buffers.
func (w *recorder) dropped() uint64 {
	var n uint64
	for _, out := range []io.Writer{w.flowOut, w.alerts} {
		if d, ok := out.(interface{ Dropped() uint64 }); ok {
			n += d.Dropped()
		}
	}
	return n
}

type flusher interface{ Flush() error }

// flush flushes the logs that buffer.
func (w *recorder) flush() {
	failed := false
	for _, out := range []io.Writer{w.flowOut, w.alerts} {
		if f, ok := out.(flusher); ok {
			if err := f.Flush(); err != nil {
				w.setErr(fmt.Errorf("flush: %w", err))
				failed = true
			}
		}
	}
	if !failed {
		w.ok()
	}
}

// totals returns a copy of the stats.
func (w *recorder) totals() Stats {
	w.statsMu.Lock()
	defer w.statsMu.Unlock()
	s := w.stats
	s.ByVerdict, s.LostByCause = map[string]uint64{}, map[string]uint64{}
	for k, v := range w.stats.ByVerdict {
		s.ByVerdict[k] = v
	}
	for k, v := range w.stats.LostByCause {
		s.LostByCause[k] = v
	}
	return s
}
