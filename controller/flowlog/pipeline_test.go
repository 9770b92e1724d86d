package flowlog

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/flows"
)

// Test conventions: pods 10.88.0.0/24 on this node, a partner network
// 203.0.113.0/24 in a CIDR zone; origins 1..4.
var (
	t0      = time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)
	web     = netip.MustParseAddr("10.88.0.2")
	api     = netip.MustParseAddr("10.88.0.3")
	partner = netip.MustParseAddr("203.0.113.10")
	origins = map[uint16]segment.Origin{
		1: {ID: 1, Kind: segment.OriginZonePolicy, Name: "perimeter", Rule: "web-to-api"},
		2: {ID: 2, Kind: segment.OriginServiceDependency, Namespace: "shop", Name: "web", Rule: "api"},
		3: {ID: 3, Kind: segment.OriginZoneDefault, FromZone: "web", ToZone: "partners"},
		4: {ID: 4, Kind: segment.OriginZonePolicy, Name: "perimeter", Rule: "deny-rest"},
	}
)

type fakeResolver struct{ origins map[uint16]segment.Origin }

func (f fakeResolver) Resolve(ip netip.Addr) Peer {
	switch ip {
	case web:
		return Peer{Namespace: "shop", Name: "web-1", Zone: "web", Labels: map[string]string{"app": "web", "tier": "x"}, Local: true}
	case api:
		return Peer{Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}, Local: true}
	}
	return Peer{Zone: "partners"}
}

func (f fakeResolver) Origin(id uint16) (segment.Origin, bool) {
	o, ok := f.origins[id]
	return o, ok
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func newTest(cfg Config, src Sources) (*Pipeline, *bytes.Buffer, *bytes.Buffer, *clock) {
	c := &clock{t: t0}
	cfg.Now = c.now
	cfg.Node = "n1"
	var out, alerts bytes.Buffer
	p := New(cfg, &out, &alerts, fakeResolver{origins}, src)
	p.lastTick = t0
	p.baseline()
	return p, &out, &alerts, c
}

func records(t *testing.T, b *bytes.Buffer) []flow.Record {
	t.Helper()
	var out []flow.Record
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var r flow.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("bad line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func mark(v segment.Verdict, origin uint16) dataplane.Mark {
	switch v {
	case segment.Denied:
		return dataplane.MakeMark(segment.Deny, segment.Deny, origin, origin)
	case segment.WouldDeny:
		return dataplane.MakeMark(segment.Allow, segment.Deny, 1, origin)
	}
	return dataplane.MakeMark(segment.Allow, segment.Allow, origin, origin)
}

func ct(typ flows.ConnType, id uint32, src, dst netip.Addr, dport uint16, m dataplane.Mark, start, stop time.Time, bytes uint64) flows.ConnEvent {
	return flows.ConnEvent{Type: typ, ID: id, Time: firstNonZero(stop, start), Proto: segment.TCP,
		Src: netip.AddrPortFrom(src, 40000+uint16(id)), Dst: netip.AddrPortFrom(dst, dport), Mark: m,
		Start: start, Stop: stop, Orig: flows.Counters{Packets: bytes / 100, Bytes: bytes}, Reply: flows.Counters{Packets: bytes / 200, Bytes: bytes / 2}}
}

func boolp(b bool) *bool { return &b }

// TestFinalRecords: verdict, origin lookup, expected flag, names, labels
// selected by config, counters, direction.
func TestFinalRecords(t *testing.T) {
	tests := []struct {
		name     string
		ev       flows.ConnEvent
		verdict  string
		expected bool
		origin   uint16
		dst      flow.Endpoint
		dir      string
	}{
		{"allowed by a ZonePolicy rule", ct(flows.ConnDestroy, 1, web, api, 8443, mark(segment.Allowed, 1), t0, t0.Add(time.Second), 1000), "allowed", true, 1,
			flow.Endpoint{IP: "10.88.0.3", Port: 8443, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}, "egress"},
		{"allowed by a ServiceDependency", ct(flows.ConnDestroy, 2, web, api, 8443, mark(segment.Allowed, 2), t0, t0.Add(time.Second), 1000), "allowed", true, 2,
			flow.Endpoint{IP: "10.88.0.3", Port: 8443, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}, "egress"},
		{"allowed by default is unexpected", ct(flows.ConnDestroy, 3, web, partner, 443, mark(segment.Allowed, 3), t0, t0.Add(time.Second), 1000), "allowed", false, 3,
			flow.Endpoint{IP: "203.0.113.10", Port: 443, Zone: "partners"}, "egress"},
		{"would-deny is unexpected", ct(flows.ConnDestroy, 4, web, api, 22, mark(segment.WouldDeny, 4), t0, t0.Add(time.Second), 1000), "would-deny", false, 4,
			flow.Endpoint{IP: "10.88.0.3", Port: 22, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}, "egress"},
		{"unknown origin id is unexpected", ct(flows.ConnDestroy, 5, partner, api, 22, mark(segment.Allowed, 99), t0, t0.Add(time.Second), 1000), "allowed", false, 99,
			flow.Endpoint{IP: "10.88.0.3", Port: 22, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}, "ingress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, out, _, _ := newTest(Config{}, Sources{})
			p.conn(tt.ev)
			got := records(t, out)
			o, ok := origins[tt.origin]
			if !ok {
				o = segment.Origin{ID: tt.origin}
			}
			res := timedResolver{r: fakeResolver{origins}}
			peer := res.r.Resolve(tt.ev.Src.Addr())
			src := p.rec.endpoint(&flow.Endpoint{}, res, tt.ev.Src, &peer)
			want := []flow.Record{{Schema: flow.Schema, Kind: flow.KindFlow, Node: "n1", Report: flow.ReportFinal, Start: t0, End: t0.Add(time.Second),
				Protocol: "TCP", Src: src, Dst: &tt.dst, Direction: tt.dir, Verdict: tt.verdict, Origin: &o, Expected: boolp(tt.expected),
				PacketsToDst: 10, BytesToDst: 1000, PacketsToSrc: 5, BytesToSrc: 500}}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestInterimRecords: a long connection gets an interim record per
// interval with the counters since the last one; the final record carries
// the rest, and the records add up to the connection's totals.
func TestInterimRecords(t *testing.T) {
	m := mark(segment.Allowed, 1)
	var dump []flows.ConnEvent
	p, out, _, c := newTest(Config{FlowInterval: time.Minute}, Sources{Dump: func() ([]flows.ConnEvent, error) { return dump, nil }})
	p.conn(ct(flows.ConnNew, 7, web, api, 8443, m, t0, time.Time{}, 0))
	// 30 s: too young for an interim record.
	c.t = t0.Add(30 * time.Second)
	dump = []flows.ConnEvent{ct(flows.ConnDump, 7, web, api, 8443, m, t0, time.Time{}, 3000)}
	p.tick(c.t, true)
	c.t = t0.Add(90 * time.Second)
	dump = []flows.ConnEvent{ct(flows.ConnDump, 7, web, api, 8443, m, t0, time.Time{}, 5000)}
	p.tick(c.t, true)
	c.t = t0.Add(150 * time.Second)
	dump = []flows.ConnEvent{ct(flows.ConnDump, 7, web, api, 8443, m, t0, time.Time{}, 8000)}
	p.tick(c.t, true)
	p.conn(ct(flows.ConnDestroy, 7, web, api, 8443, m, t0, t0.Add(160*time.Second), 10000))
	type span struct {
		Report     string
		Start, End time.Duration
		Bytes      uint64
		ConnStart  bool
	}
	var got []span
	var total uint64
	for _, r := range records(t, out) {
		got = append(got, span{r.Report, r.Start.Sub(t0), r.End.Sub(t0), r.BytesToDst, r.ConnStart != nil})
		total += r.BytesToDst
	}
	want := []span{
		{flow.ReportInterim, 0, 90 * time.Second, 5000, true},
		{flow.ReportInterim, 90 * time.Second, 150 * time.Second, 3000, true},
		{flow.ReportFinal, 150 * time.Second, 160 * time.Second, 2000, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if total != 10000 || p.open.len() != 0 {
		t.Errorf("total %d bytes, %d open", total, p.open.len())
	}
}

// TestDeniedAggregation: denied packets aggregate per 5-tuple and interval.
func TestDeniedAggregation(t *testing.T) {
	p, out, _, c := newTest(Config{}, Sources{})
	deny := func(sport uint16, at time.Duration) {
		p.packet(flows.Packet{Time: t0.Add(at), Prefix: flows.PrefixDeny, Mark: mark(segment.Denied, 4), Proto: segment.TCP,
			Src: netip.AddrPortFrom(web, sport), Dst: netip.AddrPortFrom(api, 22), Length: 60})
	}
	for _, at := range []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second} { // SYN retries
		deny(40001, at)
	}
	deny(40002, 8*time.Second)
	p.packet(flows.Packet{Time: t0, Prefix: flows.PrefixAllow, Mark: mark(segment.Allowed, 1), Proto: segment.TCP,
		Src: netip.AddrPortFrom(web, 40003), Dst: netip.AddrPortFrom(api, 8443)})
	c.t = t0.Add(time.Minute)
	p.tick(c.t, true)
	deny(40001, 61*time.Second)
	p.tick(t0.Add(2*time.Minute), true)
	type agg struct {
		Sport      uint16
		Start, End time.Duration
		Packets    uint64
		Verdict    string
		OriginRule string
	}
	var got []agg
	for _, r := range records(t, out) {
		got = append(got, agg{r.Src.Port, r.Start.Sub(t0), r.End.Sub(t0), r.PacketsToDst, r.Verdict, r.Origin.Rule})
	}
	want := []agg{{40001, 0, 7 * time.Second, 4, "denied", "deny-rest"}, {40002, 8 * time.Second, 8 * time.Second, 1, "denied", "deny-rest"},
		{40001, 61 * time.Second, 61 * time.Second, 1, "denied", "deny-rest"}}
	sortAggs := cmpopts.SortSlices(func(a, b agg) bool { return a.Start < b.Start })
	if diff := cmp.Diff(want, got, sortAggs); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestDeniedAlertAtFirstPacket: a denied attempt's alert is written when
// its first packet is read, not at the end of the interval; the retries
// and the interval's record do not count it again; the next interval's
// attempt is counted and written once the interval has passed.
func TestDeniedAlertAtFirstPacket(t *testing.T) {
	p, out, alerts, c := newTest(Config{FlowInterval: time.Minute}, Sources{})
	deny := func(sport uint16, at time.Duration) {
		p.packet(flows.Packet{Time: t0.Add(at), Prefix: flows.PrefixDeny, Mark: mark(segment.Denied, 4), Proto: segment.TCP,
			Src: netip.AddrPortFrom(web, sport), Dst: netip.AddrPortFrom(api, 22), Length: 60})
	}
	type al struct {
		Count      uint64
		Start, End time.Duration
	}
	written := func() []al {
		var got []al
		for _, r := range records(t, alerts) {
			if r.Kind != flow.KindAlert || r.Verdict != "denied" || r.Dst.Port != 22 {
				t.Fatalf("bad alert %+v", r)
			}
			got = append(got, al{r.Count, r.Start.Sub(t0), r.End.Sub(t0)})
		}
		return got
	}
	deny(40001, 0)
	if got, want := written(), []al{{1, 0, 0}}; !cmp.Equal(got, want) {
		t.Fatalf("after the first packet, before any interval: alerts %v, want %v", got, want)
	}
	for _, at := range []time.Duration{time.Second, 3 * time.Second} { // SYN retries
		deny(40001, at)
	}
	c.t = t0.Add(time.Minute)
	p.tick(c.t, true)
	if n := len(records(t, out)); n != 1 {
		t.Errorf("%d flow records after the interval, want its aggregate", n)
	}
	if got, want := written(), []al{{1, 0, 0}}; !cmp.Equal(got, want) {
		t.Errorf("the retries or the aggregate counted again: alerts %v, want %v", got, want)
	}
	deny(40001, 70*time.Second) // the next interval's attempt
	c.t = t0.Add(2 * time.Minute)
	p.tick(c.t, true)
	if got, want := written(), []al{{1, 0, 0}, {2, 0, 70 * time.Second}}; !cmp.Equal(got, want) {
		t.Errorf("after the second interval: alerts %v, want %v", got, want)
	}
}

// TestAlertsFold: unexpected records fold by (src, dst, port/proto,
// verdict); a new key is written at once, changes at most once per
// interval; expected records make no alert.
func TestAlertsFold(t *testing.T) {
	p, _, alerts, c := newTest(Config{FlowInterval: time.Minute}, Sources{})
	for i := uint32(1); i <= 3; i++ {
		p.conn(ct(flows.ConnDestroy, i, web, partner, 443, mark(segment.Allowed, 3), t0, t0.Add(time.Duration(i)*time.Second), 100))
	}
	p.conn(ct(flows.ConnDestroy, 9, web, api, 8443, mark(segment.Allowed, 1), t0, t0.Add(time.Second), 100)) // expected
	p.conn(ct(flows.ConnDestroy, 10, web, api, 22, mark(segment.WouldDeny, 4), t0, t0.Add(time.Second), 100))
	c.t = t0.Add(30 * time.Second)
	p.tick(c.t, true) // too early for updates
	c.t = t0.Add(61 * time.Second)
	p.tick(c.t, true)
	p.tick(t0.Add(200*time.Second), true) // nothing changed: nothing written
	type al struct {
		Src, Dst string
		Port     uint16
		Verdict  string
		Count    uint64
		Last     time.Duration
	}
	var got []al
	for _, r := range records(t, alerts) {
		if r.Kind != flow.KindAlert || r.IsExpected() {
			t.Fatalf("bad alert %+v", r)
		}
		got = append(got, al{r.Src.Workload(), r.Dst.Workload(), r.Dst.Port, r.Verdict, r.Count, r.End.Sub(t0)})
	}
	want := []al{
		{"shop/web-1", "203.0.113.10", 443, "allowed", 1, time.Second},
		{"shop/web-1", "shop/api-1", 22, "would-deny", 1, time.Second},
		{"shop/web-1", "203.0.113.10", 443, "allowed", 3, 3 * time.Second},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestLosses: queue drops, rate-limit counter deltas, reader overflows and
// cap drops become lost records with their cause and unit, once.
func TestLosses(t *testing.T) {
	counters := map[string]uint64{dataplane.CounterLogLimitedAllow: 5, dataplane.CounterLogLimitedDeny: 7}
	overflows := map[string]uint64{flow.CauseNFLOGOverflow: 1}
	p, out, _, c := newTest(Config{QueueSize: 1, MaxDenied: 1, MaxAlerts: 1}, Sources{
		Counters:  func() (map[string]uint64, error) { return counters, nil },
		Overflows: func() map[string]uint64 { return overflows },
	})
	p.Conns([]flows.ConnEvent{ct(flows.ConnDestroy, 1, web, api, 8443, mark(segment.Allowed, 1), t0, t0, 1)}) // queued
	p.Conns([]flows.ConnEvent{ct(flows.ConnDestroy, 2, web, api, 8443, mark(segment.Allowed, 1), t0, t0, 1)}) // dropped
	p.Packets([]flows.Packet{{Prefix: flows.PrefixDeny}})                                                     // dropped
	for _, sport := range []uint16{1, 2, 2} {                                                                 // the second 5-tuple does not fit
		p.packet(flows.Packet{Time: t0, Prefix: flows.PrefixDeny, Mark: mark(segment.Denied, 4), Proto: segment.TCP,
			Src: netip.AddrPortFrom(web, sport), Dst: netip.AddrPortFrom(api, 22)})
	}
	for i := uint32(1); i <= 2; i++ { // the second key does not fit
		p.conn(ct(flows.ConnDestroy, 20+i, web, netip.AddrFrom4([4]byte{203, 0, 113, byte(i)}), 443, mark(segment.Allowed, 3), t0, t0, 1))
	}
	counters = map[string]uint64{dataplane.CounterLogLimitedAllow: 6, dataplane.CounterLogLimitedDeny: 10}
	overflows = map[string]uint64{flow.CauseNFLOGOverflow: 3, flow.CauseCtOverflow: 1}
	c.t = t0.Add(time.Minute)
	p.tick(c.t, true)
	p.tick(t0.Add(2*time.Minute), true) // nothing new
	got := map[string]uint64{}
	for _, r := range records(t, out) {
		if r.Kind == flow.KindLost {
			if !r.Start.Equal(t0) || !r.End.Equal(t0.Add(time.Minute)) {
				t.Errorf("lost record spans %v..%v", r.Start, r.End)
			}
			got[r.Cause+"/"+r.Unit] += r.Count
		}
	}
	want := map[string]uint64{
		"queue-full/connections": 1, "queue-full/packets": 1,
		"rate-limit-allow/messages": 1, "rate-limit-deny/packets": 3,
		"nflog-overflow/overflows": 2, "conntrack-overflow/overflows": 1,
		"denied-table-full/packets": 2,
		// A full alert book evicts its oldest key instead of losing the
		// new one (TestScanCannotSilenceAlerts).
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(want, p.Stats().LostByCause); diff != "" {
		t.Errorf("stats (-want +got):\n%s", diff)
	}
}

// TestMemoryBound: the open-flow table never passes MaxOpenFlows; a
// connection that does not fit still gets its final record, and a long
// one's skipped interim record is counted.
func TestMemoryBound(t *testing.T) {
	var dump []flows.ConnEvent
	p, out, _, c := newTest(Config{MaxOpenFlows: 10}, Sources{Dump: func() ([]flows.ConnEvent, error) { return dump, nil }})
	m := mark(segment.Allowed, 1)
	for i := uint32(0); i < 100; i++ {
		p.conn(ct(flows.ConnNew, i, web, api, 8443, m, t0, time.Time{}, 0))
		dump = append(dump, ct(flows.ConnDump, i, web, api, 8443, m, t0, time.Time{}, 100))
	}
	if p.open.len() != 10 {
		t.Fatalf("%d open flows, cap 10", p.open.len())
	}
	c.t = t0.Add(2 * time.Minute)
	p.tick(c.t, true)
	for i := uint32(0); i < 100; i++ {
		p.conn(ct(flows.ConnDestroy, i, web, api, 8443, m, t0, c.t, 100))
	}
	var final, interim uint64
	var lost uint64
	for _, r := range records(t, out) {
		switch {
		case r.Report == flow.ReportFinal:
			final++
		case r.Report == flow.ReportInterim:
			interim++
		case r.Kind == flow.KindLost && r.Cause == flow.CauseOpenTableFull:
			lost += r.Count
		}
	}
	if final != 100 || interim != 10 || lost != 90 || p.open.len() != 0 {
		t.Errorf("final %d interim %d lost interim %d open %d; want 100, 10, 90, 0", final, interim, lost, p.open.len())
	}
}

// TestResolverHistory: a connection that began before a policy change
// keeps the origin names of the policy that decided it.
func TestResolverHistory(t *testing.T) {
	p, out, _, c := newTest(Config{}, Sources{})
	c.t = t0.Add(time.Minute)
	p.SetResolver(fakeResolver{map[uint16]segment.Origin{1: {ID: 1, Kind: segment.OriginZoneDefault, FromZone: "a", ToZone: "b"}}})
	p.conn(ct(flows.ConnDestroy, 1, web, api, 8443, mark(segment.Allowed, 1), t0, t0.Add(2*time.Minute), 1))
	p.conn(ct(flows.ConnDestroy, 2, web, api, 8443, mark(segment.Allowed, 1), t0.Add(90*time.Second), t0.Add(2*time.Minute), 1))
	var kinds []segment.OriginKind
	for _, r := range records(t, out) {
		if r.Kind == flow.KindFlow {
			kinds = append(kinds, r.Origin.Kind)
		}
	}
	if diff := cmp.Diff([]segment.OriginKind{segment.OriginZonePolicy, segment.OriginZoneDefault}, kinds); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestRotation: the log rotates by size, keeps N files, never splits a line.
func TestRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.log")
	l, err := OpenLog(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 39) + "\n" // 40 bytes: two per file
	for i := 0; i < 7; i++ {
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	sizes := map[string]int{}
	for _, name := range []string{"flows.log", "flows.log.1", "flows.log.2", "flows.log.3"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(path), name))
		if err == nil {
			sizes[name] = len(b)
		}
	}
	if diff := cmp.Diff(map[string]int{"flows.log": 40, "flows.log.1": 80, "flows.log.2": 80}, sizes); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestBatchQueue: a reader's batch is queued up to QueueSize and the rest
// is dropped and counted by unit, as single events are.
func TestBatchQueue(t *testing.T) {
	p, out, _, c := newTest(Config{QueueSize: 3}, Sources{})
	m := mark(segment.Allowed, 1)
	p.Conns([]flows.ConnEvent{
		ct(flows.ConnDestroy, 1, web, api, 8443, m, t0, t0, 1),
		ct(flows.ConnDestroy, 2, web, api, 8443, m, t0, t0, 1),
		ct(flows.ConnNew, 3, web, api, 8443, m, t0, time.Time{}, 0),
		ct(flows.ConnDestroy, 4, web, api, 8443, m, t0, t0, 1),      // dropped
		ct(flows.ConnNew, 5, web, api, 8443, m, t0, time.Time{}, 0), // dropped
	})
	p.Packets([]flows.Packet{{Prefix: flows.PrefixDeny}, {Prefix: flows.PrefixDeny}}) // dropped
	if n := p.QueueLen(); n != 3 {
		t.Fatalf("%d events queued, want 3", n)
	}
	p.drain(nil)
	c.t = t0.Add(time.Minute)
	p.tick(c.t, false)
	got := map[string]uint64{}
	var final int
	for _, r := range records(t, out) {
		switch {
		case r.Kind == flow.KindLost:
			got[r.Cause+"/"+r.Unit] += r.Count
		case r.Report == flow.ReportFinal:
			final++
		}
	}
	want := map[string]uint64{"queue-full/connections": 1, "queue-full/packets": 2, "queue-full/messages": 1}
	if diff := cmp.Diff(want, got); diff != "" || final != 2 {
		t.Errorf("%d final records, want 2; losses (-want +got):\n%s", final, diff)
	}
}

// TestAlertKeepsItsRecord: records are built in reused storage; an alert
// keeps its own copy of what it shows (here the first ICMP type seen),
// whatever records come after.
func TestAlertKeepsItsRecord(t *testing.T) {
	p, _, alerts, c := newTest(Config{FlowInterval: time.Minute}, Sources{})
	icmp := func(id uint32, typ uint8) flows.ConnEvent {
		ev := ct(flows.ConnDestroy, id, web, partner, 0, mark(segment.Allowed, 3), t0, t0.Add(time.Second), 100)
		ev.Proto, ev.ICMPType = segment.ICMP, typ
		return ev
	}
	p.conn(icmp(1, 8))
	p.conn(icmp(2, 13)) // same alert key: counted, the alert keeps type 8
	p.conn(ct(flows.ConnDestroy, 3, web, partner, 443, mark(segment.Allowed, 3), t0, t0.Add(time.Second), 100))
	c.t = t0.Add(61 * time.Second)
	p.tick(c.t, true)
	var types []uint8
	for _, r := range records(t, alerts) {
		if r.Protocol == "ICMP" {
			if r.ICMPType == nil {
				t.Fatalf("ICMP alert without a type: %+v", r)
			}
			types = append(types, *r.ICMPType)
		}
	}
	if diff := cmp.Diff([]uint8{8, 8}, types); diff != "" {
		t.Errorf("ICMP types of the alert's records (-want +got):\n%s", diff)
	}
}

// TestScanCannotSilenceAlerts: one pod scans 20,000 distinct unexpected
// destinations, then another pod makes one new unexpected connection: its
// alert is written at once. The scanner holds its share of keys and one
// scan alert that counts the rest; a full book evicts its oldest key
// instead of refusing new ones; nothing is lost.
func TestScanCannotSilenceAlerts(t *testing.T) {
	p, out, alerts, c := newTest(Config{FlowInterval: time.Minute, MaxAlerts: 100, MaxAlertsPerSource: 64}, Sources{})
	const scanned = 20000
	for i := range uint32(scanned) {
		dst := netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})
		p.conn(ct(flows.ConnDestroy, i+1, web, dst, 443, mark(segment.Allowed, 3), t0, t0.Add(time.Second), 100))
	}
	p.conn(ct(flows.ConnDestroy, scanned+1, api, partner, 443, mark(segment.Allowed, 3), t0, t0.Add(2*time.Second), 100))
	written := map[string]int{}
	var newest flow.Record
	for _, r := range records(t, alerts) {
		k := r.Src.Workload()
		if r.Scan != nil {
			k += " scan"
		}
		written[k]++
		newest = r
	}
	want := map[string]int{"shop/web-1": 64, "shop/web-1 scan": 1, "shop/api-1": 1}
	if diff := cmp.Diff(want, written); diff != "" {
		t.Errorf("alerts written (-want +got):\n%s", diff)
	}
	if newest.Src.Workload() != "shop/api-1" || newest.Dst.Workload() != "203.0.113.10" {
		t.Errorf("the last alert is %+v, want the other pod's", newest)
	}
	if ev, sc := p.alerts.evicted, p.alerts.scanned; ev != 0 || sc != scanned-64 {
		t.Errorf("evicted %d, scanned %d; want 0 and %d", ev, sc, scanned-64)
	}
	// At the interval the scan alert says how much it folded.
	c.t = t0.Add(61 * time.Second)
	p.tick(c.t, true)
	var scan *flow.Record
	for _, r := range records(t, alerts) {
		if r.Scan != nil {
			scan = &r
		}
	}
	if scan == nil || scan.Scan.Keys != scanned-64 || scan.Count != scanned-64 || scan.Dst != nil {
		t.Errorf("scan alert %+v, want %d keys and connections, no destination", scan, scanned-64)
	}
	// 40 more sources, 3 keys each, fill the book of 100: the oldest keys
	// are evicted (they were written), every new pair gets its alert.
	before := len(records(t, alerts))
	for s := range uint32(40) {
		src := netip.AddrFrom4([4]byte{10, 88, 1, byte(s)})
		for d := range uint32(3) {
			p.conn(ct(flows.ConnDestroy, 30000+s*3+d, src, partner, uint16(1000+d), mark(segment.Allowed, 3), t0, t0.Add(3*time.Second), 100))
		}
	}
	if got := len(records(t, alerts)) - before; got != 120 {
		t.Errorf("%d alerts written for 120 new pairs", got)
	}
	if p.alerts.len() != 100 || p.alerts.evicted != 120-(100-66) {
		t.Errorf("book holds %d keys, evicted %d; want 100 and %d", p.alerts.len(), p.alerts.evicted, 120-(100-66))
	}
	for _, r := range records(t, out) {
		if r.Kind == flow.KindLost {
			t.Errorf("lost: %+v", r)
		}
	}
}
