package segment

import "net/netip"

// Endpoint is one container interface on a node, as the agent knows it
// once the CNI plugin registered it: parsed once, at the edge (the agent's
// registry), then used as it is by the enforcement mapping.
type Endpoint struct {
	// ID is stable for the interface's life: "<containerID>/<ifName>".
	ID string
	// Namespace and Name are the pod's.
	Namespace, Name string
	// HostIface is the host side of the veth ("" when there is none).
	HostIface string
	// IPs are the interface's addresses with the pod network's prefix
	// length ("10.88.0.5/24").
	IPs []netip.Prefix
}

// Addrs returns the endpoint's addresses.
func (e Endpoint) Addrs() []netip.Addr {
	out := make([]netip.Addr, 0, len(e.IPs))
	for _, p := range e.IPs {
		out = append(out, p.Addr())
	}
	return out
}
