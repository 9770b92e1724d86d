package flows

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// eventSocket is a netlink multicast socket read in batches by one
// blocking thread, outside Go's network poller. The poller registers a
// socket edge-triggered, so every event the kernel queues wakes a thread
// of the agent even while the reader sleeps between batches: at ten
// thousand connections a second that was ten thousand context switches a
// second, half of the agent's CPU. A blocking poll(2) on the socket and an
// eventfd (to end it on Close) wakes once per batch instead.
type eventSocket struct {
	fd, wake int

	mu              sync.Mutex
	running, closed bool
}

// eventSocketConfig describes the subscription.
type eventSocketConfig struct {
	proto      int      // NETLINK_NETFILTER
	groups     []uint32 // multicast groups to join
	readBuffer int      // SO_RCVBUFFORCE bytes
	reliable   bool     // NETLINK_BROADCAST_ERROR and NETLINK_NO_ENOBUFS
}

// openEventSocket opens the socket in the network namespace nsFd (a
// socket stays in the namespace it was created in).
func openEventSocket(nsFd int, cfg eventSocketConfig) (*eventSocket, error) {
	s := &eventSocket{fd: -1, wake: -1}
	err := inNamespace(nsFd, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, cfg.proto)
		s.fd = fd
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	fail := func(what string, err error) (*eventSocket, error) {
		s.release()
		return nil, fmt.Errorf("netlink socket: %s: %w", what, err)
	}
	if err := unix.Bind(s.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	if err := s.setReadBuffer(cfg.readBuffer); err != nil {
		return fail("receive buffer", err)
	}
	if cfg.reliable {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_NETLINK, unix.NETLINK_BROADCAST_ERROR, 1); err != nil {
			return fail("NETLINK_BROADCAST_ERROR", err)
		}
		if err := unix.SetsockoptInt(s.fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1); err != nil {
			return fail("NETLINK_NO_ENOBUFS", err)
		}
	}
	for _, g := range cfg.groups {
		if err := unix.SetsockoptInt(s.fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, int(g)); err != nil {
			return fail(fmt.Sprintf("join group %d", g), err)
		}
	}
	if err := s.openWake(); err != nil {
		return fail("eventfd", err)
	}
	return s, nil
}

// openWake opens the eventfd Close uses to end a blocked poll.
func (s *eventSocket) openWake() error {
	var err error
	s.wake, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	return err
}

// detachEventSocket takes over the socket of c, which its owner has set
// up (bound, subscribed): the descriptor is duplicated and c closed, which
// takes the socket out of Go's poller while the duplicate keeps it open.
func detachEventSocket(c *netlink.Conn) (*eventSocket, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw conn: %w", err)
	}
	s := &eventSocket{fd: -1, wake: -1}
	var derr error
	if err := raw.Control(func(fd uintptr) { s.fd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, fmt.Errorf("raw conn: %w", err)
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicate netlink socket: %w", derr)
	}
	if err := c.Close(); err != nil {
		s.release()
		return nil, fmt.Errorf("close netlink conn: %w", err)
	}
	if err := s.openWake(); err != nil {
		s.release()
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return s, nil
}

// setReadBuffer sizes the receive buffer past net.core.rmem_max
// (SO_RCVBUFFORCE, root): a burst of events then waits in the socket
// instead of overflowing it.
func (s *eventSocket) setReadBuffer(size int) error {
	if err := unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size); err != nil {
		return fmt.Errorf("set receive buffer to %d bytes: %w", size, err)
	}
	return nil
}

// mmsghdr is struct mmsghdr of recvmmsg(2).
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// recvBuffers are the slots one recvmmsg(2) call fills.
type recvBuffers struct {
	slots [][]byte
	iovs  []unix.Iovec
	hdrs  []mmsghdr
	got   [][]byte
}

// newRecvBuffers cuts buf into slots of size bytes (0: one slot).
func newRecvBuffers(buf []byte, size int) *recvBuffers {
	if size <= 0 || size > len(buf) {
		size = len(buf)
	}
	n := len(buf) / size
	r := &recvBuffers{slots: make([][]byte, n), iovs: make([]unix.Iovec, n), hdrs: make([]mmsghdr, n), got: make([][]byte, 0, n)}
	for i := range n {
		r.slots[i] = buf[i*size : (i+1)*size]
		r.iovs[i].Base = &r.slots[i][0]
		r.iovs[i].SetLen(size)
		r.hdrs[i].hdr.Iov = &r.iovs[i]
		r.hdrs[i].hdr.SetIovlen(1)
	}
	return r
}

// maxBatch bounds the datagrams read before a batch is handed on.
const maxBatch = 4096

// readBatches reads s until Close (then it returns nil) or another error,
// in batches: decode appends what each datagram holds to the batch, which
// handle gets once the socket runs empty or maxBatch datagrams came (the
// slice is reused after handle returns); then it waits pause before
// looking again, letting the next batch gather in the socket. A socket
// found empty is waited for in poll. ENOBUFS errors are counted in
// overflows and reading goes on. slot is the largest datagram expected:
// one receive call fills as many slots as buf holds (0: buf is one slot).
// The descriptors are released when it returns. Call it once per socket.
func readBatches[T any](s *eventSocket, buf []byte, slot int, pause time.Duration,
	decode func(datagram []byte, batch []T) []T, handle func([]T), overflows *atomic.Uint64) error {
	s.mu.Lock()
	if s.closed || s.running {
		s.mu.Unlock()
		return nil
	}
	s.running = true
	s.mu.Unlock()
	defer s.finish()
	r := newRecvBuffers(buf, slot)
	var batch []T
	for {
		// Receive first, and block in poll only when the socket is empty:
		// a busy reader then makes no system call that Go's scheduler
		// sees (the receive does not block, so it goes without the
		// runtime's system call bookkeeping), and each return from one
		// would restart the system monitor at its 20 µs tick.
		n := 0
		for n < maxBatch {
			got, err := s.recv(r)
			if err == unix.EAGAIN {
				break
			}
			switch err {
			case nil:
				for _, d := range got {
					batch = decode(d, batch)
				}
				n += len(got)
			case unix.EINTR:
			case unix.ENOBUFS:
				overflows.Add(1)
			default:
				return fmt.Errorf("receive: %w", err)
			}
		}
		if s.isClosed() {
			return nil
		}
		if n == 0 {
			if closed, err := s.poll(); closed || err != nil {
				return err
			}
			continue
		}
		if len(batch) > 0 {
			handle(batch)
		}
		batch = batch[:0]
		// A sleep, not a poll with a timeout: Go's sysmon keeps waking
		// every 20 µs to take the processor from a thread in a long
		// system call, so only a reader that found nothing blocks in
		// poll.
		time.Sleep(pause)
	}
}

func (s *eventSocket) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// recv receives what the socket holds, up to r's slots, in one system
// call: a busy node's conntrack events come one datagram each.
func (s *eventSocket) recv(r *recvBuffers) ([][]byte, error) {
	// MSG_DONTWAIT: the call never blocks, so it needs none of the
	// runtime's bookkeeping for system calls.
	n, _, errno := unix.RawSyscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)),
		unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return nil, errno
	}
	r.got = r.got[:0]
	for i := range int(n) {
		r.got = append(r.got, r.slots[i][:min(int(r.hdrs[i].len), len(r.slots[i]))])
	}
	return r.got, nil
}

// poll waits until the socket is readable, or Close fired the eventfd
// (closed).
func (s *eventSocket) poll() (closed bool, err error) {
	fds := [2]unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}, {Fd: int32(s.wake), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("poll: %w", err)
		}
		return fds[1].Revents != 0, nil
	}
}

// Close ends a read in progress (its descriptors are released when it
// has returned: close(2) does not interrupt a blocked poll), or releases
// the descriptors at once if no read runs.
func (s *eventSocket) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	if s.running {
		_, _ = unix.Write(s.wake, []byte{1, 0, 0, 0, 0, 0, 0, 0})
		return
	}
	s.release()
}

// finish ends a read: the descriptors are released under the lock, so a
// Close meanwhile neither writes to a descriptor being closed (whose
// number the process may already have reused) nor races its release.
func (s *eventSocket) finish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.release()
}

// release closes the descriptors.
func (s *eventSocket) release() {
	for _, fd := range []int{s.fd, s.wake} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	s.fd, s.wake = -1, -1
}
