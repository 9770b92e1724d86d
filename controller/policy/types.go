package policy

import (
	"fmt"
	"net/netip"

	"github.com/netseg/netseg/api/segment"
)

// matchPorts reports whether port/proto is in ports; no ports means every
// protocol and port, ICMP included. A policy's ICMP stands for the ICMP of
// either family (segment.ICMP).
func matchPorts(ports []segment.PortRange, port uint16, proto segment.Protocol) bool {
	if len(ports) == 0 {
		return true
	}
	for _, r := range ports {
		if r.Protocol == proto && proto != segment.ICMP && r.First <= port && port <= r.Last {
			return true
		}
	}
	return false
}

// Namespace is a namespace's name and labels. Every namespace also carries
// the label kubernetes.io/metadata.name: <name>.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// NamespaceNameLabel is the label every namespace carries with its name.
const NamespaceNameLabel = "kubernetes.io/metadata.name"

// Endpoint is a container (a pod) with its addresses.
type Endpoint struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr
}

// Service is what the compiler needs of a Kubernetes Service: the endpoints
// it selects and its ports. Standalone mode has none.
type Service struct {
	Namespace, Name string
	// Selector selects endpoints in Namespace; an empty one selects none,
	// as for a Kubernetes Service.
	Selector map[string]string
	// Ports are used for dependencies that name no ports; none means all.
	Ports []segment.PortRange
}

// Config holds the compiler's settings.
type Config struct {
	// UnzonedDefault is the default action of the implicit zone "unzoned";
	// empty means Allow, so that installing netseg breaks nothing.
	UnzonedDefault segment.Action
	// EntryBudget is how many dependency entries the ServiceDependencies
	// of one namespace may hold together (each is an origin id, a kernel
	// set and rules), an entry weighing one per port range it lists (its
	// rules per chain and family); 0 means DefaultEntryBudget. A
	// ServiceDependency that would take its namespace past it is not
	// compiled.
	EntryBudget int
}

// DefaultEntryBudget is the default Config.EntryBudget: 512 entries (two
// ServiceDependencies of the most entries the CRD allows), so that 30
// namespaces at their budget still fit the 16,383 origin ids of a
// conntrack mark beside a few hundred ZonePolicy rules and zones.
const DefaultEntryBudget = 512

// Unzoned is the implicit zone of endpoints and addresses in no zone.
const Unzoned = "unzoned"

// Peer is one side of a connection for Decide: an endpoint (Name set) or a
// bare address (Name empty, IPs holding the address).
type Peer struct {
	Namespace, Name string
	Labels          map[string]string
	IPs             []netip.Addr
}

// AddrPeer is a bare address.
func AddrPeer(a netip.Addr) Peer { return Peer{IPs: []netip.Addr{a}} }

// IsEndpoint reports whether p names an endpoint.
func (p Peer) IsEndpoint() bool { return p.Name != "" }

func (p Peer) String() string {
	if p.IsEndpoint() {
		return p.Namespace + "/" + p.Name
	}
	if len(p.IPs) > 0 {
		return p.IPs[0].String()
	}
	return "<no address>"
}

// Problem is an error or a warning about one object.
type Problem struct {
	Kind      string // Zone, ZonePolicy, ServiceDependency, Endpoint, Config
	Namespace string
	Name      string
	Field     string // field path, e.g. spec.rules[1].to[0].zone; may be empty
	Message   string
}

// Object is the kind and name of the object, e.g. "ZonePolicy perimeter".
func (p Problem) Object() string {
	if p.Namespace != "" {
		return p.Kind + " " + p.Namespace + "/" + p.Name
	}
	return p.Kind + " " + p.Name
}

func (p Problem) String() string {
	if p.Field != "" {
		return p.Object() + ": " + p.Field + ": " + p.Message
	}
	return p.Object() + ": " + p.Message
}

// ParseCIDR reads a network of a policy (a Zone's cidrs, a dependency's
// cidr): the one place netseg turns policy text into a network. Like the
// API server's isCIDR, it refuses IPv4-mapped IPv6 networks (which the
// kernel would see as IPv4, with another length) and host bits (10.0.0.5/8
// means neither the address nor the network for sure): every part of
// netseg then gives a CIDR the same meaning.
func ParseCIDR(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil:
		return p, fmt.Errorf("must be a CIDR such as 10.0.0.0/8, not %q", s)
	case p.Addr().Is4In6():
		return p, fmt.Errorf("%q is an IPv4-mapped IPv6 network: write the IPv4 network", s)
	case p.Addr().Zone() != "":
		return p, fmt.Errorf("%q has a zone: write the network alone", s)
	case p.Masked() != p:
		return p, fmt.Errorf("%q has host bits set: write the network, %s", s, p.Masked())
	}
	return p, nil
}
