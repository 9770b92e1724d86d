package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Server is an echo server inside a namespace: TCP connections get back
// what they send; UDP datagrams are answered with the same bytes.
type Server struct {
	Addr netip.AddrPort
	tcp  net.Listener
	udp  net.PacketConn
}

// ListenTCP starts a TCP echo server on addr ("ip:port") inside n. The lab
// closes it.
func (n *Netns) ListenTCP(addr string) *Server {
	n.lab.t.Helper()
	var ln net.Listener
	err := n.Do(func() (err error) {
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		n.lab.t.Fatalf("lab: listen tcp %s in %s: %v", addr, n.Label, err)
	}
	s := &Server{Addr: netip.MustParseAddrPort(ln.Addr().String()), tcp: ln}
	n.lab.onCleanup(func() { _ = ln.Close() })
	go s.serveTCP()
	return s
}

func (s *Server) serveTCP() {
	for {
		c, err := s.tcp.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
}

// ListenUDP starts a UDP echo server on addr inside n. The lab closes it.
func (n *Netns) ListenUDP(addr string) *Server {
	n.lab.t.Helper()
	var pc net.PacketConn
	err := n.Do(func() (err error) {
		pc, err = net.ListenPacket("udp", addr)
		return err
	})
	if err != nil {
		n.lab.t.Fatalf("lab: listen udp %s in %s: %v", addr, n.Label, err)
	}
	s := &Server{Addr: netip.MustParseAddrPort(pc.LocalAddr().String()), udp: pc}
	n.lab.onCleanup(func() { _ = pc.Close() })
	go func() {
		buf := make([]byte, 64<<10)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:k], from)
		}
	}()
	return s
}

// ErrNoReply means the probe got no answer in time (dropped, or nobody there).
var ErrNoReply = errors.New("no reply")

// Probe connects from n to addr over proto ("tcp" or "udp"), sends a random
// token and waits up to timeout for the echo. nil means the exchange
// completed both ways; a refused or silent peer gives an error.
func (n *Netns) Probe(proto string, addr netip.AddrPort, timeout time.Duration) error {
	return n.ProbeFrom(proto, netip.Addr{}, addr, timeout)
}

// ProbeFrom is Probe with the source address bound to from (an address n owns, e.g.
// a secondary one a spoofing test added). An invalid from lets the kernel choose.
func (n *Netns) ProbeFrom(proto string, from netip.Addr, addr netip.AddrPort, timeout time.Duration) error {
	token := make([]byte, 16)
	_, _ = rand.Read(token)
	msg := []byte(hex.EncodeToString(token))
	return n.Do(func() error {
		d := net.Dialer{Timeout: timeout}
		if from.IsValid() {
			if proto == "udp" {
				d.LocalAddr = &net.UDPAddr{IP: from.AsSlice()}
			} else {
				d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
			}
		}
		c, err := d.Dial(proto, addr.String())
		if err != nil {
			if isTimeout(err) {
				return fmt.Errorf("%s %s: %w", proto, addr, ErrNoReply)
			}
			return fmt.Errorf("%s %s: %w", proto, addr, err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("%s %s: send: %w", proto, addr, err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil {
			if isTimeout(err) {
				return fmt.Errorf("%s %s: %w", proto, addr, ErrNoReply)
			}
			return fmt.Errorf("%s %s: receive: %w", proto, addr, err)
		}
		if !bytes.Equal(got, msg) {
			return fmt.Errorf("%s %s: echo mismatch: sent %q, got %q", proto, addr, msg, got)
		}
		return nil
	})
}

// Dial opens a connection from n and returns it; the lab closes it. Use it
// for long-lived connections whose survival a test checks.
func (n *Netns) Dial(proto string, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() (err error) {
		c, err = net.DialTimeout(proto, addr.String(), timeout)
		return err
	})
	if err != nil {
		return nil, err
	}
	n.lab.onCleanup(func() { _ = c.Close() })
	return c, nil
}

// Ping sends one ICMP echo request from n to addr (IPv4 or IPv6) and waits
// up to timeout for the matching reply. nil means a reply came back. It
// uses a raw ICMP socket created inside n, so it needs no ping binary.
func (n *Netns) Ping(addr netip.Addr, timeout time.Duration) error {
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if addr.Is6() && !addr.Is4In6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	return n.Do(func() error {
		c, err := icmp.ListenPacket(network, listen)
		if err != nil {
			return fmt.Errorf("icmp socket: %w", err)
		}
		defer c.Close()
		id := int(seq.Add(1) & 0xffff)
		req := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("netseg-lab")}}
		b, err := req.Marshal(nil)
		if err != nil {
			return fmt.Errorf("icmp marshal: %w", err)
		}
		if _, err := c.WriteTo(b, &net.IPAddr{IP: addr.AsSlice()}); err != nil {
			return fmt.Errorf("icmp %s: send: %w", addr, err)
		}
		deadline := time.Now().Add(timeout)
		_ = c.SetReadDeadline(deadline)
		buf := make([]byte, 1500)
		for {
			k, from, err := c.ReadFrom(buf)
			if err != nil {
				if isTimeout(err) {
					return fmt.Errorf("icmp %s: %w", addr, ErrNoReply)
				}
				return fmt.Errorf("icmp %s: receive: %w", addr, err)
			}
			m, err := icmp.ParseMessage(proto, buf[:k])
			if err != nil || m.Type != replyType {
				continue
			}
			echo, ok := m.Body.(*icmp.Echo)
			if ok && echo.ID == id && from.String() == addr.String() {
				return nil
			}
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// ConnRate opens TCP connections from n to addr with workers goroutines
// for d, each connection sending one byte and reading its echo, and
// returns how many completed and how many failed. Each worker's sockets are
// created on a thread inside n. The loop is bounded by d. The client
// resets each connection after the echo (SO_LINGER 0), so no TIME_WAIT
// state piles up and the rate does not fall as the run goes on.
func (n *Netns) ConnRate(addr netip.AddrPort, workers int, d time.Duration) (ok, failed int64, err error) {
	var wg sync.WaitGroup
	var okN, failN atomic.Int64
	errs := make(chan error, workers)
	deadline := time.Now().Add(d)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- n.Do(func() error {
				buf := []byte{1}
				for time.Now().Before(deadline) {
					c, err := net.DialTimeout("tcp", addr.String(), time.Second)
					if err != nil {
						failN.Add(1)
						continue
					}
					// Reset instead of FIN: no TIME_WAIT, so the client's
					// ephemeral ports never run out during a long run.
					_ = c.(*net.TCPConn).SetLinger(0)
					_ = c.SetDeadline(time.Now().Add(time.Second))
					if _, err := c.Write(buf); err == nil {
						if _, err := io.ReadFull(c, buf); err == nil {
							okN.Add(1)
							c.Close()
							continue
						}
					}
					failN.Add(1)
					c.Close()
				}
				return nil
			})
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		if e != nil {
			err = e
		}
	}
	return okN.Load(), failN.Load(), err
}

// Load is one side of a connection-rate comparison: a client and the
// address it connects to.
type Load struct {
	Client *Netns
	Addr   netip.AddrPort
}

// ConnRatesSideBySide runs ConnRate (8 workers) for two loads in
// alternating turns, a b b a a b b a, so that drift in the machine's speed
// during the run (several percent within a minute on 2 vCPUs) falls on
// both alike. It returns each load's completed connections over its four
// turns, and fails on any error or failed connection.
func ConnRatesSideBySide(a, b Load, turn time.Duration) (okA, okB int64, err error) {
	for _, second := range []bool{false, true, true, false, false, true, true, false} {
		load, total := a, &okA
		if second {
			load, total = b, &okB
		}
		ok, failed, err := load.Client.ConnRate(load.Addr, 8, turn)
		if err != nil || failed > 0 {
			return okA, okB, fmt.Errorf("%s -> %s: %d ok, %d failed, %v", load.Client.Label, load.Addr, ok, failed, err)
		}
		*total += ok
	}
	return okA, okB, nil
}
