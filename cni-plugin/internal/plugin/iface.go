package plugin

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// containerIface finds the container interface in the previous result: the
// one named ifName inside netnsPath, or else the one named ifName, and the
// addresses assigned to it with their prefix length ("10.88.0.5/24").
func containerIface(result *current.Result, netnsPath, ifName string) (*current.Interface, []string, error) {
	idx := -1
	for i, iface := range result.Interfaces {
		if iface.Name == ifName && iface.Sandbox == netnsPath {
			idx = i
			break
		}
	}
	if idx < 0 {
		for i, iface := range result.Interfaces {
			if iface.Name == ifName {
				idx = i
				break
			}
		}
	}
	if idx < 0 {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: prevResult has no interface %q in netns %s: chain netseg after a plugin that creates the container's veth (bridge, ptp)", ifName, netnsPath), "")
	}
	var ips, unbound []string
	for _, ipc := range result.IPs {
		switch {
		case ipc.Interface == nil:
			unbound = append(unbound, ipc.Address.String())
		case *ipc.Interface == idx:
			ips = append(ips, ipc.Address.String())
		}
	}
	if len(ips) == 0 {
		// Some plugins leave ips[].interface unset; with a single container
		// interface the addresses can only be its own.
		ips = unbound
	}
	if len(ips) == 0 {
		return nil, nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: prevResult assigns no address to %q: give the main plugin an IPAM section (host-local, ...)", ifName), "")
	}
	return result.Interfaces[idx], ips, nil
}

// hostVeth returns the name of the host side of the container's veth. It
// reads the container link in its namespace through a netlink handle bound
// there (no thread switch), takes the peer's ifindex from IFLA_LINK (for a
// veth the kernel reports the peer there, see veth_get_iflink), and looks
// that index up in the plugin's own namespace, the host's.
func hostVeth(netnsPath, ifName string) (string, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return "", fmt.Errorf("open container netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE) // one socket, not one per netlink family
	if err != nil {
		return "", fmt.Errorf("netlink in container netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		return "", fmt.Errorf("find %s in container netns %s: %w", ifName, netnsPath, err)
	}
	if link.Type() != "veth" {
		return "", types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("netseg: container interface %s is a %s, not a veth: netseg enforces on the host side of a veth; chain it after bridge or ptp", ifName, link.Type()), "")
	}
	peer := link.Attrs().ParentIndex
	if peer == 0 {
		return "", fmt.Errorf("veth %s in %s reports no peer ifindex", ifName, netnsPath)
	}
	host, err := netlink.LinkByIndex(peer)
	if err != nil {
		return "", fmt.Errorf("host side of veth %s (ifindex %d) not in the plugin's network namespace: run the plugin in the host namespace: %w", ifName, peer, err)
	}
	if host.Type() != "veth" {
		return "", fmt.Errorf("ifindex %d, the peer of %s, is a %s named %s, not a veth", peer, ifName, host.Type(), host.Attrs().Name)
	}
	return host.Attrs().Name, nil
}
