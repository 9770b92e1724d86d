package flows_test

import (
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/dataplane/flows"
	"github.com/netseg/netseg/e2e/lab"
	"github.com/ti-mo/conntrack"
)

func TestMain(m *testing.M) { lab.Main(m) }

// Test address conventions: containers on 10.88.0.0/24 inside the test's
// own node namespace. Origins are arbitrary small numbers.
const (
	subnet      = "10.88.0.0/24"
	oAllow      = 11
	oDeny       = 14
	oStagedDeny = 15
	oAny        = 16
)

type node struct {
	node *lab.Netns
	a, b *lab.Container
	ns   *dataplane.Namespace
}

func newNode(t *testing.T) *node {
	t.Helper()
	l := lab.New(t)
	n := &node{node: l.Node("node")}
	cni := n.node.CNI()
	list := cni.ParseConfList(t, lab.Net{Name: "flownet", Type: "bridge", Subnet: subnet, DataDir: t.TempDir()}.ConfList())
	n.a = cni.MustAdd("a", list, lab.Attach{})
	n.b = cni.MustAdd("b", list, lab.Attach{})
	ns, err := dataplane.OpenNamespace(n.node.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Close() })
	n.ns = ns
	b := n.b.IP(4)
	tcp := func(p uint16) []segment.PortRange {
		return []segment.PortRange{{Protocol: segment.TCP, First: p, Last: p}}
	}
	any := dataplane.Policy{Enforced: []dataplane.Rule{{Action: segment.Allow, Origin: oAny}}}
	rs := &dataplane.Ruleset{
		Sets: []dataplane.Set{{Name: "b", Prefixes: []netip.Prefix{netip.PrefixFrom(b, 32)}}},
		Endpoints: []dataplane.Endpoint{
			{ID: "a/eth0", HostIface: n.a.HostVeth(n.node), IPs: []netip.Addr{n.a.IP(4)}, Ingress: any, Egress: dataplane.Policy{
				Enforced: []dataplane.Rule{{Peer: "b", Ports: tcp(8080), Action: segment.Allow, Origin: oAllow},
					{Peer: "b", Ports: tcp(9090), Action: segment.Allow, Origin: oAny},
					{Action: segment.Deny, Origin: oDeny}},
				Staged: []dataplane.Rule{{Peer: "b", Ports: tcp(8080), Action: segment.Allow, Origin: oAllow},
					{Peer: "b", Ports: tcp(9090), Action: segment.Deny, Origin: oStagedDeny},
					{Action: segment.Deny, Origin: oDeny}}}},
			{ID: "b/eth0", HostIface: n.b.HostVeth(n.node), IPs: []netip.Addr{b}, Egress: any, Ingress: any},
		},
	}
	if err := dataplane.New(dataplane.Config{}, ns.Dial, ns.LinkExists).Sync(rs); err != nil {
		t.Fatal(err)
	}
	return n
}

type collector struct {
	mu      sync.Mutex
	packets []flows.Packet
	conns   []flows.ConnEvent
}

func (c *collector) packet(ps []flows.Packet) {
	c.mu.Lock()
	c.packets = append(c.packets, ps...)
	c.mu.Unlock()
}

func (c *collector) conn(es []flows.ConnEvent) {
	c.mu.Lock()
	c.conns = append(c.conns, es...)
	c.mu.Unlock()
}
func (c *collector) snapshot() ([]flows.Packet, []flows.ConnEvent) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]flows.Packet(nil), c.packets...), append([]flows.ConnEvent(nil), c.conns...)
}

// TestReaders: NFLOG carries the deny decision of a dropped SYN, conntrack
// NEW and DESTROY events carry the decision, accounting and timestamps of
// allowed and would-deny connections, and a dump lists an open one.
func TestReaders(t *testing.T) {
	n := newNode(t)
	if err := flows.EnableAccounting(n.ns.Fd()); err != nil {
		t.Fatal(err)
	}
	nl, err := flows.OpenNFLOG(n.ns.Fd(), flows.NFLOGConfig{Group: 100})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := flows.OpenConntrack(n.ns.Fd(), flows.ConntrackConfig{New: true})
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = nl.Run(col.packet) }()
	go func() { defer wg.Done(); _ = ct.Run(col.conn) }()
	defer func() { nl.Close(); ct.Close(); wg.Wait() }()
	t.Logf("NFLOG attaches conntrack entries: %v", nl.ConntrackAttached())

	b := n.b.IP(4)
	n.b.ListenTCP(netip.AddrPortFrom(b, 8080).String())
	n.b.ListenTCP(netip.AddrPortFrom(b, 9090).String())
	if err := n.a.Probe("tcp", netip.AddrPortFrom(b, 7070), 300*time.Millisecond); err == nil {
		t.Fatal("a -> b:7070 passed")
	}
	conn, err := n.a.Dial("tcp", netip.AddrPortFrom(b, 8080), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 10000)
	if _, err := conn.Write(payload); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(payload))
	if _, err := ioReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	dump, err := ct.Dump()
	if err != nil {
		t.Fatal(err)
	}
	var dumped bool
	for _, e := range dump {
		dumped = dumped || e.Dst.Port() == 8080
	}
	if !dumped {
		t.Errorf("dump lacks the open connection: %+v", dump)
	}
	checkDumpAgainstLibrary(t, n.ns.Fd(), dump)
	conn.Close()
	if err := n.a.Probe("tcp", netip.AddrPortFrom(b, 9090), time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	n.node.MustRun("conntrack", "-F")

	deadline := time.Now().Add(3 * time.Second)
	for {
		packets, conns := col.snapshot()
		var deny, destroy8080, destroy9090 bool
		for _, p := range packets {
			v, o := p.Mark.Decision()
			if p.Prefix == flows.PrefixDeny && p.Dst.Port() == 7070 && v == segment.Denied && o == oDeny {
				deny = true
			}
		}
		for _, e := range conns {
			v, o := e.Mark.Decision()
			if e.Type != flows.ConnDestroy {
				continue
			}
			switch e.Dst.Port() {
			case 8080:
				destroy8080 = v == segment.Allowed && o == oAllow
				if e.Orig.Bytes < 10000 || e.Reply.Bytes < 10000 || e.Start.IsZero() || e.Stop.IsZero() {
					t.Errorf("8080 destroy event lacks accounting or timestamps: %+v", e)
				}
			case 9090:
				destroy9090 = v == segment.WouldDeny && o == oStagedDeny
			}
		}
		if deny && destroy8080 && destroy9090 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deny packet %v, allowed destroy %v, would-deny destroy %v\npackets %+v\nconns %+v", deny, destroy8080, destroy9090, packets, conns)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("nflog %+v conntrack %+v", nl.Stats(), ct.Stats())
}

// checkDumpAgainstLibrary dumps the table with github.com/ti-mo/conntrack
// and wants the same netseg entries as the reader's own decoding.
func checkDumpAgainstLibrary(t *testing.T, nsFd int, dump []flows.ConnEvent) {
	t.Helper()
	type entry struct {
		id          uint32
		src, dst    netip.AddrPort
		mark        dataplane.Mark
		orig, reply flows.Counters
	}
	ours := map[entry]bool{}
	for _, e := range dump {
		ours[entry{e.ID, e.Src, e.Dst, e.Mark, e.Orig, e.Reply}] = true
	}
	c, err := conntrack.Dial(&netlink.Config{NetNS: nsFd})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fl, err := c.Dump(nil)
	if err != nil {
		t.Fatal(err)
	}
	theirs := map[entry]bool{}
	for _, f := range fl {
		if f.Mark == 0 {
			continue
		}
		o := f.TupleOrig
		theirs[entry{f.ID, netip.AddrPortFrom(o.IP.SourceAddress.Unmap(), o.Proto.SourcePort),
			netip.AddrPortFrom(o.IP.DestinationAddress.Unmap(), o.Proto.DestinationPort), dataplane.Mark(f.Mark),
			flows.Counters{Packets: f.CountersOrig.Packets, Bytes: f.CountersOrig.Bytes},
			flows.Counters{Packets: f.CountersReply.Packets, Bytes: f.CountersReply.Bytes}}] = true
	}
	if len(ours) == 0 || !maps.Equal(ours, theirs) {
		t.Errorf("dump decoded by netseg %v, by ti-mo/conntrack %v", ours, theirs)
	}
}

func ioReadFull(c interface{ Read([]byte) (int, error) }, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := c.Read(buf[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// TestOverflowIsCounted: with best-effort delivery and a small receive
// buffer, DESTROY events that do not fit while the reader waits between
// batches are dropped by the kernel, counted as an overflow, and the
// reader goes on with what comes next.
func TestOverflowIsCounted(t *testing.T) {
	n := newNode(t)
	ct, err := flows.OpenConntrack(n.ns.Fd(), flows.ConntrackConfig{Unreliable: true, ReadBuffer: 4096, BatchWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var col collector
	done := make(chan struct{})
	go func() { defer close(done); _ = ct.Run(col.conn) }()
	defer func() { ct.Close(); <-done }()
	b := netip.AddrPortFrom(n.b.IP(4), 8080)
	n.b.ListenTCP(b.String())
	burst := func(k int) {
		for i := 0; i < k; i++ {
			c, err := n.a.Dial("tcp", b, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		time.Sleep(100 * time.Millisecond)
		n.node.MustRun("conntrack", "-F")
	}
	burst(1) // wakes the reader, which then waits 2 s
	time.Sleep(200 * time.Millisecond)
	burst(200) // far more than 4 KiB of events while it waits
	deadline := time.Now().Add(5 * time.Second)
	for ct.Stats().Overflows == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no overflow counted: %+v", ct.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	before := ct.Stats().Messages
	burst(3)
	for ct.Stats().Messages <= before {
		if time.Now().After(deadline.Add(5 * time.Second)) {
			t.Fatalf("no events read after the overflow: %+v", ct.Stats())
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("%+v", ct.Stats())
}
