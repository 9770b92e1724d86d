package flowlog

import (
	"net/netip"
	"sync"
	"time"

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
	p := Peer{Zone: r.c.ZoneOfAddr(ip)}
	r.cache[ip] = p
	return p
}

// Origin implements Resolver.
func (r *PolicyResolver) Origin(id uint16) (segment.Origin, bool) { return r.c.Origin(id) }

// timedResolver is a resolver and the time from which it is in force.
type timedResolver struct {
	since time.Time
	r     Resolver
	gen   uint64 // numbers the resolvers in the order they were set
}

// resolverHistory keeps the last few resolvers: origin ids are renumbered
// by a recompile, so a connection that began before a policy change is
// named with the resolver in force when it began.
type resolverHistory struct {
	mu   sync.Mutex
	list []timedResolver // newest last
}

// set installs r from since on.
func (h *resolverHistory) set(r Resolver, since time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.list = append(h.list, timedResolver{since: since, r: r, gen: h.list[len(h.list)-1].gen + 1})
	if len(h.list) > 4 {
		h.list = h.list[len(h.list)-4:]
	}
}

// at returns the resolver in force at t.
func (h *resolverHistory) at(t time.Time) timedResolver {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.list) - 1; i > 0; i-- {
		if !t.Before(h.list[i].since) {
			return h.list[i]
		}
	}
	return h.list[0]
}
