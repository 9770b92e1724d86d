package flows

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
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
	// BatchWait is how long the reader lets events gather in the socket
	// after handing on a batch, so that a busy node costs the agent a
	// wakeup per batch rather than one per connection (each wakeup takes a
	// core from the workloads, and each idle-to-busy turn restarts Go's
	// system monitor at its 20 µs tick). Events wait in the kernel
	// meanwhile, in a socket buffer sized to hold many batches at the
	// lab's highest connection rate. Default 200 ms; negative: no wait.
	BatchWait time.Duration
}

// Conntrack reads conntrack events of netseg's connections (non-zero
// mark) inside a network namespace.
type Conntrack struct {
	cfg     ConntrackConfig
	nsFd    int
	destroy *eventSocket
	newConn *eventSocket

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
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 200 * time.Millisecond
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

func (c *Conntrack) subscribe(group netfilter.NetlinkGroup, reliable bool) (*eventSocket, error) {
	s, err := openEventSocket(c.nsFd, eventSocketConfig{proto: unix.NETLINK_NETFILTER, groups: []uint32{uint32(group)},
		readBuffer: c.cfg.ReadBuffer, reliable: reliable})
	if err != nil {
		return nil, fmt.Errorf("conntrack events (group %d): %w", group, err)
	}
	return s, nil
}

// sockets lists the open event sockets.
func (c *Conntrack) sockets() []*eventSocket {
	if c.newConn == nil {
		return []*eventSocket{c.destroy}
	}
	return []*eventSocket{c.destroy, c.newConn}
}

// Run reads events and calls handle with each batch of netseg's
// connections (non-zero mark), until Close; the slice is reused after
// handle returns. With NEW events, handle is called from two goroutines.
// It returns nil after Close, or the first other error; the sockets are
// closed when it returns. Call it once.
func (c *Conntrack) Run(handle func([]ConnEvent)) error {
	socks := c.sockets()
	errc := make(chan error, len(socks))
	for _, s := range socks {
		go func() { errc <- c.read(s, handle) }()
	}
	var err error
	for range socks {
		if e := <-errc; e != nil {
			err = errors.Join(err, e)
			c.Close() // one socket failed: end the other's read too
		}
	}
	return err
}

// ctDatagram bounds a conntrack event datagram (one message of a few
// hundred bytes).
const ctDatagram = 8 << 10

// read hands on one socket's events in batches: 64 per receive call into
// one reused buffer, decoded in place, then waits BatchWait.
func (c *Conntrack) read(s *eventSocket, handle func([]ConnEvent)) error {
	var now time.Time // when the batch began
	err := readBatches(s, make([]byte, 64*ctDatagram), ctDatagram, c.cfg.BatchWait,
		func(b []byte, batch []ConnEvent) []ConnEvent {
			if len(batch) == 0 {
				now = time.Now()
			}
			return c.decode(b, now, batch)
		}, handle, &c.overflows)
	if err != nil {
		return fmt.Errorf("conntrack events: %w", err)
	}
	return nil
}

// decode appends the netseg events (non-zero mark) of one datagram.
func (c *Conntrack) decode(b []byte, now time.Time, batch []ConnEvent) []ConnEvent {
	err := eachMessage(b, func(msg []byte) {
		var ev ConnEvent
		ok, err := decodeCtMessage(msg, now, &ev, false)
		switch {
		case err != nil:
			c.errs.Add(1)
		case ok:
			c.messages.Add(1)
			if ev.Mark != 0 { // else not decided by netseg
				batch = append(batch, ev)
			}
		}
	})
	if err != nil {
		c.errs.Add(1)
	}
	return batch
}

// Dump reads the conntrack table and returns netseg's entries (non-zero
// mark) as ConnDump events. It decodes in place like the event reader: a
// busy node's table holds tens of thousands of entries.
func (c *Conntrack) Dump() ([]ConnEvent, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: c.nsFd})
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: dial: %w", err)
	}
	defer conn.Close()
	// IPCTNL_MSG_CT_GET with NLM_F_DUMP, family AF_UNSPEC: every entry.
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(ctnlSubsys<<8 | ctMsgGet), Flags: netlink.Request | netlink.Dump},
		Data:   []byte{unix.AF_UNSPEC, 0 /* NFNETLINK_V0 */, 0, 0},
	}
	sent, err := conn.Send(req)
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: request: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("conntrack dump: raw conn: %w", err)
	}
	now := time.Now()
	var out []ConnEvent
	buf := make([]byte, 256<<10)
	var done bool
	var derr error
	for !done && derr == nil {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return rerr != unix.EAGAIN
		}); err != nil {
			return nil, fmt.Errorf("conntrack dump: receive: %w", err)
		}
		if rerr == unix.EINTR {
			continue
		}
		if rerr != nil {
			return nil, fmt.Errorf("conntrack dump: receive: %w", rerr)
		}
		if err := eachMessage(buf[:n], func(msg []byte) {
			if binary.NativeEndian.Uint32(msg[8:12]) != sent.Header.Sequence {
				return
			}
			switch binary.NativeEndian.Uint16(msg[4:6]) {
			case unix.NLMSG_DONE:
				done = true
			case unix.NLMSG_ERROR:
				if len(msg) >= nlmsgHdrLen+4 {
					if code := int32(binary.NativeEndian.Uint32(msg[16:20])); code != 0 {
						derr = fmt.Errorf("conntrack dump: %w", unix.Errno(-code))
					}
				}
				done = true
			default:
				var ev ConnEvent
				ok, err := decodeCtMessage(msg, now, &ev, true)
				if err != nil {
					c.errs.Add(1)
				} else if ok && ev.Mark != 0 {
					out = append(out, ev)
				}
			}
		}); err != nil {
			return nil, fmt.Errorf("conntrack dump: %w", err)
		}
	}
	return out, derr
}

// Stats returns the reader's counters (both sockets).
func (c *Conntrack) Stats() Stats {
	return Stats{Messages: c.messages.Load(), Overflows: c.overflows.Load(), Errors: c.errs.Load()}
}

// Close ends Run (which closes the sockets), or closes them if Run was
// never called.
func (c *Conntrack) Close() error {
	for _, s := range c.sockets() {
		s.Close()
	}
	return nil
}
