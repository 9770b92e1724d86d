package dataplane

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespace is the network namespace the dataplane programs: the node's.
// Tests pass a lab namespace; the agent passes "" (its own).
type Namespace struct {
	fd netns.NsHandle
	nl *vnl.Handle
}

// OpenNamespace opens the namespace bind-mounted at path, or the calling
// thread's own namespace when path is "".
func OpenNamespace(path string) (*Namespace, error) {
	var fd netns.NsHandle
	var err error
	if path == "" {
		fd, err = netns.Get()
	} else {
		fd, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %q: %w", path, err)
	}
	nl, err := vnl.NewHandleAt(fd)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("netlink handle in %q: %w", path, err)
	}
	return &Namespace{fd: fd, nl: nl}, nil
}

// Dial opens an nftables connection inside the namespace (a Dialer).
func (n *Namespace) Dial(opts ...nftables.ConnOption) (*nftables.Conn, error) {
	return nftables.New(append([]nftables.ConnOption{nftables.WithNetNSFd(int(n.fd)), nftables.WithSockOptions(bigBuffers)}, opts...)...)
}

// batchBuffer sizes the netlink socket for a whole batch: the library sends
// a batch in one sendmsg, which the kernel refuses (EMSGSIZE) when it is
// larger than the send buffer, and the kernel answers every message with
// an ack, which overflows a small receive buffer (ENOBUFS). A full resync
// grows with the endpoints, to megabytes. The FORCE variants (root) pass the
// net.core.[rw]mem_max caps; memory is only used while a batch is in flight.
const batchBuffer = 256 << 20

func bigBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("netlink raw conn: %w", err)
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, batchBuffer); serr != nil {
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, batchBuffer)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("size netlink buffers: %w", err)
	}
	return nil
}

// LinkExists reports whether the interface exists in the namespace (a
// LinkChecker). An error means the lookup itself failed (a netlink error,
// not "no such device"): the answer is unknown, and callers keep what
// depends on the interface rather than drop it.
func (n *Namespace) LinkExists(name string) (bool, error) {
	_, err := n.nl.LinkByName(name)
	var missing vnl.LinkNotFoundError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &missing):
		return false, nil
	default:
		return false, fmt.Errorf("look up interface %s: %w", name, err)
	}
}

// NodeAddrs returns the namespace's own addresses that a pod network may
// hold: every interface's unicast addresses but loopback and link-local
// ones (a ptp node has a link-local address per host veth; none is ever
// inside a pod network).
func (n *Namespace) NodeAddrs() ([]netip.Addr, error) {
	list, err := n.nl.AddrList(nil, vnl.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list the node's addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		addr, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		if addr = addr.Unmap(); addr.IsGlobalUnicast() {
			out = append(out, addr)
		}
	}
	return out, nil
}

// Fd returns the namespace's file descriptor, for netlink sockets that
// must be opened inside it (netlink.Config.NetNS). It stays valid until
// Close.
func (n *Namespace) Fd() int { return int(n.fd) }

// Netlink returns the namespace's netlink handle.
func (n *Namespace) Netlink() *vnl.Handle { return n.nl }

// Close releases the namespace handle.
func (n *Namespace) Close() error {
	n.nl.Close()
	return n.fd.Close()
}
