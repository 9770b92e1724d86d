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
