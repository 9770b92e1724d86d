package flowlog

import (
	"net/netip"
	"sync"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
)

// Peer is what the agent knows of an address.
type Peer struct {
	// Namespace and Name are set when the address is a workload's.
	Namespace, Name string
	Zone            string
	Labels          map[string]string
	// Local: a workload on this node (its egress rules decide what it
	// opens).
	Local bool
}

// Resolver names addresses and origins. The agent implements it over its
// endpoint registry and the compiled policy (or uses NewPolicyResolver);
// tests use a fake. Methods are called from the pipeline's goroutine.
type Resolver interface {
	Resolve(ip netip.Addr) Peer
	// Origin returns the policy element with the id a conntrack mark
	// carries, in the compiled policy this resolver belongs to.
	Origin(id uint16) (segment.Origin, bool)
}

// PolicyResolver resolves through a compiled policy and the node's
// endpoints. It caches bare addresses' zones.
type PolicyResolver struct {
	c     *policy.Compiled
	byIP  map[netip.Addr]Peer
	mu    sync.Mutex
	cache map[netip.Addr]Peer
}

var _ Resolver = (*PolicyResolver)(nil)

// NewPolicyResolver resolves the endpoints' addresses to the endpoints
// (local ones are those whose addresses are in local) and other addresses
// to their zone in c.
func NewPolicyResolver(c *policy.Compiled, endpoints []policy.Endpoint, local []netip.Addr) *PolicyResolver {
	isLocal := map[netip.Addr]bool{}
	for _, a := range local {
		isLocal[a.Unmap()] = true
	}
	r := &PolicyResolver{c: c, byIP: map[netip.Addr]Peer{}, cache: map[netip.Addr]Peer{}}
	for _, e := range endpoints {
		zone := policy.Unzoned
		if er, ok := c.Endpoint(e.Namespace, e.Name); ok {
			zone = er.Zone
		}
		for _, ip := range e.IPs {
			ip = ip.Unmap()
			r.byIP[ip] = Peer{Namespace: e.Namespace, Name: e.Name, Zone: zone, Labels: e.Labels, Local: isLocal[ip]}
		}
	}
	return r
}

// Resolve implements Resolver.
func (r *PolicyResolver) Resolve(ip netip.Addr) Peer {
	ip = ip.Unmap()
	if p, ok := r.byIP[ip]; ok {
		return p
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p, ok := r.cache[ip]; ok {
		return p
	}
	if len(r.cache) > 10000 {
		clear(r.cache)
	}
	// Decide resolves a bare address to its zone (a CIDR zone or unzoned).
	p := Peer{Zone: r.c.Decide(policy.AddrPeer(ip), policy.AddrPeer(ip), 0, segment.ICMP).SrcZone}
	r.cache[ip] = p
	return p
}

// Origin implements Resolver.
func (r *PolicyResolver) Origin(id uint16) (segment.Origin, bool) { return r.c.Origin(id) }
