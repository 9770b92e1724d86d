package dataplane

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Namespace is the network namespace the dataplane programs: the node's.
// Tests pass a lab namespace; the agent passes "" (its own).
type Namespace struct {
	fd netns.NsHandle
	nl *netlink.Handle
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
	nl, err := netlink.NewHandleAt(fd)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("netlink handle in %q: %w", path, err)
	}
	return &Namespace{fd: fd, nl: nl}, nil
}

// Dial opens an nftables connection inside the namespace (a Dialer).
func (n *Namespace) Dial() (*nftables.Conn, error) {
	return nftables.New(nftables.WithNetNSFd(int(n.fd)))
}

// LinkExists reports whether the interface exists in the namespace (a
// LinkChecker).
func (n *Namespace) LinkExists(name string) bool {
	_, err := n.nl.LinkByName(name)
	return err == nil
}

// Netlink returns the namespace's netlink handle.
func (n *Namespace) Netlink() *netlink.Handle { return n.nl }

// Close releases the namespace handle.
func (n *Namespace) Close() error {
	n.nl.Close()
	return n.fd.Close()
}

