package lab

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// socketBatch is how many client sockets the namespace thread makes at a
// time: one wake-up of that thread per 64 connections.
const socketBatch = 64

// ConnRate opens TCP connections from n to addr with workers goroutines
// for d, each connection sending one byte and reading its echo, and
// returns how many completed and how many failed.
//
// A socket belongs to the namespace it was made in, whatever thread uses
// it later. So one thread inside n makes the sockets, in batches, and the
// workers are ordinary goroutines that connect and echo through Go's
// poller. Workers that are themselves threads locked in n would spend
// most of the machine on Go handing its processors between those threads
// (each wait in the poller parks a locked thread and wakes it again):
// that load peaks at about 12,000 connections a second on 2 vCPUs, this
// one at about 30,000.
//
// The client resets each connection after the echo (SO_LINGER 0), so no
// TIME_WAIT state piles up and the rate does not fall as the run goes on.
// It widens n's ephemeral port range to 1024-65535: one destination at
// 30,000 connections a second gets its 5-tuples back within about a
// second with the default 28,232 ports, while conntrack (the tests give
// closed entries a 1 s timeout) may still hold the previous connection
// on the same tuple, and carry on with that entry for the new one (two
// connections, one entry). ConnRateTo spreads the workers over several
// destinations, which spaces the returns wider still.
func (n *Netns) ConnRate(addr netip.AddrPort, workers int, d time.Duration) (ok, failed int64, err error) {
	return n.ConnRateTo([]netip.AddrPort{addr}, workers, d)
}

// ConnRateTo is ConnRate with worker i connecting to addrs[i%len(addrs)];
// the addresses are of one family.
func (n *Netns) ConnRateTo(addrs []netip.AddrPort, workers int, d time.Duration) (ok, failed int64, err error) {
	if len(addrs) == 0 {
		return 0, 0, errors.New("connection rate: no destination")
	}
	family := unix.AF_INET
	if addrs[0].Addr().Is6() {
		family = unix.AF_INET6
	}
	sas := make([]unix.Sockaddr, len(addrs))
	for i, a := range addrs {
		if a.Addr().Is6() != (family == unix.AF_INET6) {
			return 0, 0, fmt.Errorf("connection rate to %v: addresses of both families", addrs)
		}
		if family == unix.AF_INET {
			sas[i] = &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
		} else {
			sas[i] = &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
		}
	}
	if err := n.sysctl("net.ipv4.ip_local_port_range", "1024 65535"); err != nil {
		return 0, 0, err
	}
	socks := make(chan []int, 2*workers)
	stop := make(chan struct{})
	made := make(chan error, 1)
	go func() { made <- n.Do(func() error { return makeSockets(family, socks, stop) }) }()

	var wg sync.WaitGroup
	var okN, failN atomic.Int64
	deadline := time.Now().Add(d)
	for w := range workers {
		sa := sas[w%len(sas)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := []byte{1}
			for fds := range socks {
				for i, fd := range fds {
					if !time.Now().Before(deadline) {
						closeSockets(fds[i:])
						return
					}
					if echoOnce(fd, sa, buf) == nil {
						okN.Add(1)
					} else {
						failN.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	for fds := range socks { // closed by makeSockets once it has stopped
		closeSockets(fds)
	}
	if err := <-made; err != nil {
		return okN.Load(), failN.Load(), fmt.Errorf("client sockets in %s: %w", n.Label, err)
	}
	return okN.Load(), failN.Load(), nil
}

// makeSockets sends batches of non-blocking TCP sockets of family, set to
// reset on close, until stop is closed or a socket cannot be made; it
// closes socks when it returns.
func makeSockets(family int, socks chan<- []int, stop <-chan struct{}) error {
	defer close(socks)
	linger := &unix.Linger{Onoff: 1, Linger: 0}
	for {
		fds := make([]int, 0, socketBatch)
		for range socketBatch {
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				closeSockets(fds)
				return fmt.Errorf("socket: %w", err)
			}
			fds = append(fds, fd)
			// Reset instead of FIN: no TIME_WAIT, so the client's ephemeral
			// ports never run out during a long run.
			if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, linger); err != nil {
				closeSockets(fds)
				return fmt.Errorf("SO_LINGER: %w", err)
			}
		}
		select {
		case socks <- fds:
		case <-stop:
			closeSockets(fds)
			return nil
		}
	}
}

func closeSockets(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// echoTimeout bounds one connection. TCP resends a lost SYN after 1 s,
// and conntrack drops a SYN now and then under this load (a SYN that
// reopens its tuple's closed entry while the entry is being removed is
// dropped: "drop" in conntrack -S); a 1 s bound would fail exactly those
// connections, leaving unknown whether they reached the server.
const echoTimeout = 3 * time.Second

// echoOnce connects the non-blocking socket fd to sa, sends buf, reads
// its echo back into buf, and closes fd, all within echoTimeout.
func echoOnce(fd int, sa unix.Sockaddr, buf []byte) error {
	f := os.NewFile(uintptr(fd), "client") // non-blocking: Go's poller waits for it
	defer f.Close()
	if err := f.SetDeadline(time.Now().Add(echoTimeout)); err != nil {
		return err
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	// The first call connects; if that is in progress, the poller waits
	// until the socket is writable and the second call reads the result.
	var connectErr error
	started := false
	err = rc.Write(func(fd uintptr) bool {
		if !started {
			started = true
			connectErr = unix.Connect(int(fd), sa)
			return connectErr != unix.EINPROGRESS
		}
		soErr, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		connectErr = err
		if err == nil && soErr != 0 {
			connectErr = unix.Errno(soErr)
		}
		return true
	})
	if err := errors.Join(err, connectErr); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if _, err := f.Write(buf); err != nil {
		return err
	}
	_, err = io.ReadFull(f, buf)
	return err
}

// Load is one side of a connection-rate comparison: a client and the
// addresses it connects to (see ConnRateTo).
type Load struct {
	Client *Netns
	Addrs  []netip.AddrPort
}

// ConnRatesSideBySide runs ConnRateTo (8 workers) for each load in turns,
// forward then backward, twice (a b b a a b b a for two loads; a b c c b a
// a b c c b a for three), so that drift in the machine's speed during the
// run (several percent within a minute on 2 vCPUs) falls on all alike.
// Each turn loads its node for warmup first, uncounted, then for turn,
// counted. Conntrack removes the entries of closed connections in bursts,
// seconds late (the last ones 5-6 s after the load stopped, with 1 s
// timeouts), and their DESTROY events and flow records follow: a warm-up
// that long lets each counted turn carry its own node's steady share of
// that work, rather than the previous node's. It returns each load's
// completed connections over its four counted turns, and over all its
// turns with the warm-ups, and fails on any error or failed connection.
func ConnRatesSideBySide(warmup, turn time.Duration, loads ...Load) (counted, made []int64, err error) {
	order := make([]int, 0, 4*len(loads))
	for range 2 {
		for i := range loads {
			order = append(order, i)
		}
		for i := len(loads) - 1; i >= 0; i-- {
			order = append(order, i)
		}
	}
	counted, made = make([]int64, len(loads)), make([]int64, len(loads))
	for _, i := range order {
		if warmup > 0 {
			ok, err := runTurn(loads[i], warmup)
			made[i] += ok
			if err != nil {
				return counted, made, err
			}
		}
		ok, err := runTurn(loads[i], turn)
		made[i] += ok
		if err != nil {
			return counted, made, err
		}
		counted[i] += ok
	}
	return counted, made, nil
}

// runTurn runs ConnRateTo with 8 workers for d; a failed connection is an
// error.
func runTurn(load Load, d time.Duration) (int64, error) {
	ok, failed, err := load.Client.ConnRateTo(load.Addrs, 8, d)
	if err != nil || failed > 0 {
		return ok, fmt.Errorf("%s -> %v: %d ok, %d failed, %v", load.Client.Label, load.Addrs, ok, failed, err)
	}
	return ok, nil
}
