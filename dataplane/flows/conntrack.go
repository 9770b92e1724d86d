package flows

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/netseg/netseg/dataplane"
	"github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ConntrackConfig configures a conntrack reader.
type ConntrackConfig struct {
	// New also subscribes to NEW events, on a second socket. They are best
	// effort: an overflow loses some and is counted.
	New bool
	// Unreliable turns off reliable DESTROY delivery. By default the
	// DESTROY socket sets NETLINK_BROADCAST_ERROR and NETLINK_NO_ENOBUFS,
	// as conntrackd does: when the socket is full the kernel keeps the
	// entry and delivers its DESTROY event again later (nf_conntrack_ecache
	// redelivery), so no final record is lost while the reader lives; the
	// price is that entries wait in the kernel while the reader is behind.
	Unreliable bool
	// ReadBuffer is each socket's receive buffer in bytes. Default 64 MiB.
	ReadBuffer int
}

// Conntrack reads conntrack events of netseg's connections (non-zero
// mark) inside a network namespace.
type Conntrack struct {
	cfg       ConntrackConfig
	nsFd      int
	destroy   *netlink.Conn
	newConn   *netlink.Conn
	closed    atomic.Bool
	closeOnce sync.Once

	messages, overflows, errs atomic.Uint64
}

// EnableAccounting turns on conntrack accounting and timestamps in the
// namespace (net.netfilter.nf_conntrack_acct=1, nf_conntrack_timestamp=1).
// Both are per network namespace and apply to connections that begin
// afterwards; /proc/sys/net resolves to the namespace of the thread that
// opens the file, so the writes run on a thread switched into it.
func EnableAccounting(nsFd int) error {
	return inNamespace(nsFd, func() error {
		for _, key := range []string{"nf_conntrack_acct", "nf_conntrack_timestamp"} {
			path := filepath.Join("/proc/sys/net/netfilter", key)
			if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
				return fmt.Errorf("sysctl net.netfilter.%s=1: %w", key, err)
			}
		}
		return nil
	})
}

// inNamespace runs f on a locked OS thread switched into the namespace.
// A thread that cannot switch back stays locked and dies with the
// goroutine, so no other goroutine runs in the wrong namespace.
func inNamespace(nsFd int, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- fmt.Errorf("current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(netns.NsHandle(nsFd)); err != nil {
			errc <- fmt.Errorf("enter network namespace: %w", err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leave network namespace: %w (after: %v)", err, ferr)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// OpenConntrack subscribes to DESTROY (and, with cfg.New, NEW) events in
// the namespace whose file descriptor is nsFd.
func OpenConntrack(nsFd int, cfg ConntrackConfig) (*Conntrack, error) {
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = 64 << 20
	}
	c := &Conntrack{cfg: cfg, nsFd: nsFd}
	var err error
	if c.destroy, err = c.subscribe(netfilter.GroupCTDestroy, !cfg.Unreliable); err != nil {
		return nil, err
	}
	if cfg.New {
		if c.newConn, err = c.subscribe(netfilter.GroupCTNew, false); err != nil {
			c.destroy.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *Conntrack) subscribe(group netfilter.NetlinkGroup, reliable bool) (*netlink.Conn, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.nsFd})
	if err != nil {
		return nil, fmt.Errorf("conntrack events: dial netlink: %w", err)
	}
	fail := func(what string, err error) (*netlink.Conn, error) {
		conn.Close()
		return nil, fmt.Errorf("conntrack events (group %d): %s: %w", group, what, err)
	}
	if err := setReadBuffer(conn, c.cfg.ReadBuffer); err != nil {
		return fail("receive buffer", err)
	}
	if reliable {
		if err := conn.SetOption(netlink.BroadcastError, true); err != nil {
			return fail("NETLINK_BROADCAST_ERROR", err)
		}
		if err := conn.SetOption(netlink.NoENOBUFS, true); err != nil {
			return fail("NETLINK_NO_ENOBUFS", err)
		}
	}
	if err := conn.JoinGroup(uint32(group)); err != nil {
		return fail("join group", err)
	}
	return conn, nil
}

// Run reads events and calls handle for each netseg connection (non-zero
// mark), until Close. With NEW events, handle is called from two
// goroutines. It returns nil after Close, or the first other error.
func (c *Conntrack) Run(handle func(ConnEvent)) error {
	if c.newConn == nil {
		return c.read(c.destroy, handle)
	}
	errc := make(chan error, 1)
	go func() { errc <- c.read(c.newConn, handle) }()
	err := c.read(c.destroy, handle)
	return errors.Join(err, <-errc)
}

func (c *Conntrack) read(conn *netlink.Conn, handle func(ConnEvent)) error {
	for {
		msgs, err := conn.Receive()
		if err != nil {
			if c.closed.Load() {
				return nil
			}
			if errors.Is(err, unix.ENOBUFS) {
				c.overflows.Add(1)
				continue
			}
			return fmt.Errorf("conntrack events: receive: %w", err)
		}
		now := time.Now()
		for _, m := range msgs {
			var ev conntrack.Event
			if err := ev.Unmarshal(m); err != nil || ev.Flow == nil {
				c.errs.Add(1)
				continue
			}
			var t ConnType
			switch ev.Type {
			case conntrack.EventNew:
				t = ConnNew
			case conntrack.EventDestroy:
				t = ConnDestroy
			default:
				continue
			}
			c.messages.Add(1)
			if ev.Flow.Mark == 0 {
				continue // not decided by netseg
			}
			handle(fromFlow(t, now, ev.Flow))
		}
	}
}

// Dump reads the conntrack table and returns netseg's entries (non-zero
// mark) as ConnDump events.
func (c *Conntrack) Dump() ([]ConnEvent, error) {
	conn, err := conntrack.Dial(&netlink.Config{NetNS: c.nsFd})
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: dial: %w", err)
	}
	defer conn.Close()
	flows, err := conn.Dump(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: %w", err)
	}
	now := time.Now()
	out := make([]ConnEvent, 0, len(flows))
	for i := range flows {
		if flows[i].Mark != 0 {
			out = append(out, fromFlow(ConnDump, now, &flows[i]))
		}
	}
	return out, nil
}

func fromFlow(t ConnType, now time.Time, f *conntrack.Flow) ConnEvent {
	o := f.TupleOrig
	ev := ConnEvent{
		Type: t, ID: f.ID, Time: now,
		Proto: dataplane.Protocol(o.Proto.Protocol),
		Src:   netipAddrPort(o.IP.SourceAddress, o.Proto.SourcePort),
		Dst:   netipAddrPort(o.IP.DestinationAddress, o.Proto.DestinationPort),
		Mark:  dataplane.Mark(f.Mark),
		Start: f.Timestamp.Start, Stop: f.Timestamp.Stop,
		Orig:  Counters{f.CountersOrig.Packets, f.CountersOrig.Bytes},
		Reply: Counters{f.CountersReply.Packets, f.CountersReply.Bytes},
	}
	if o.Proto.ICMPv4 || o.Proto.ICMPv6 {
		ev.ICMPType, ev.ICMPCode = o.Proto.ICMPType, o.Proto.ICMPCode
	}
	if f.Timestamp.Start.UnixNano() == 0 {
		ev.Start = time.Time{}
	}
	if f.Timestamp.Stop.UnixNano() == 0 {
		ev.Stop = time.Time{}
	}
	return ev
}

// Stats returns the reader's counters (both sockets).
func (c *Conntrack) Stats() Stats {
	return Stats{Messages: c.messages.Load(), Overflows: c.overflows.Load(), Errors: c.errs.Load()}
}

// Close closes the sockets; Run returns.
func (c *Conntrack) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		err = c.destroy.Close()
		if c.newConn != nil {
			err = errors.Join(err, c.newConn.Close())
		}
	})
	return err
}
