package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"go4.org/netipx"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
)

func (m *model) compile() *Compiled {
	c := &Compiled{Config: m.cfg, Origins: m.origins, m: m}
	byNS := map[string][]*endpoint{}
	for _, e := range m.endpoints {
		byNS[e.Namespace] = append(byNS[e.Namespace], e)
	}
	covering := m.coverage(byNS)
	c.Sets = m.sets(byNS, covering)
	c.Zones = m.zoneInfo()

	lists := listCache{m: m, memo: map[string]Direction{}}
	c.Endpoints = make([]EndpointRules, 0, len(m.endpoints))
	perimeters := m.perimeters()
	refusedOf := map[string][]string{} // namespace -> the perimeters refusing it
	for _, e := range m.endpoints {
		var clientOf []*entry
		for _, sd := range m.sdsByNS[e.Namespace] {
			if sd.isClient(e.Namespace, e.labels) {
				clientOf = append(clientOf, sd.entries...)
			}
		}
		refused, known := refusedOf[e.Namespace]
		if !known {
			for _, p := range perimeters {
				if m.refuses(p.name, e.Namespace) {
					refused = append(refused, p.name)
				}
			}
			refusedOf[e.Namespace] = refused
		}
		c.Endpoints = append(c.Endpoints, EndpointRules{
			Namespace: e.Namespace, Name: e.Name, IPs: e.IPs, Zone: e.zone,
			Egress:  lists.get(e.zone, true, clientOf, refused),
			Ingress: lists.get(e.zone, false, covering[e], nil),
		})
	}
	m.checkShadowed()
	m.checkRefused(covering)
	m.checkTenantZones()
	c.Errors, c.Warnings = sortProblems(m.errors), sortProblems(m.warnings)
	return c
}

// coverage maps each endpoint to the entries that cover it, in entry order.
func (m *model) coverage(byNS map[string][]*endpoint) map[*endpoint][]*entry {
	cov := map[*endpoint][]*entry{}
	for _, en := range m.entries {
		cands := byNS[en.targetNS]
		if en.cidr.IsValid() {
			cands = m.endpoints
		}
		for _, e := range cands {
			if en.coversEndpoint(e.Namespace, e.labels, e.IPs) {
				cov[e] = append(cov[e], en)
			}
		}
	}
	return cov
}

// ownedIPs appends the addresses that resolve to e (a duplicate address
// goes to the first endpoint by name).
func (m *model) ownedIPs(e *endpoint, to []netip.Addr) []netip.Addr {
	for _, a := range e.IPs {
		if m.epByIP[a] == e {
			to = append(to, a)
		}
	}
	return to
}

// members is what a set holds: networks (nil: none) and endpoint
// addresses.
type members struct {
	nets  *netipx.IPSetBuilder
	addrs []netip.Addr
	// clean: nets holds no endpoint address (a zone's networks, less its
	// endpoints'), so the networks and the addresses are listed apart.
	clean bool
}

// ComparePrefixes orders prefixes by address, then length: the order of
// a Set's prefixes (a total order that formats nothing).
func ComparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

func (m *model) sets(byNS map[string][]*endpoint, covering map[*endpoint][]*entry) []Set {
	var sets []Set
	// Zone sets are disjoint: an endpoint's address belongs to its zone
	// only; a network belongs to the first zone by precedence.
	// A set lists its endpoint addresses one by one (/32, /128) and the
	// rest as the fewest prefixes: aggregating endpoint addresses would
	// make an endpoint's arrival rewrite its neighbours' prefixes, where
	// listing them makes it one added member.
	add := func(name string, ms members) {
		var prefixes []netip.Prefix
		if ms.nets == nil || ms.clean {
			// Endpoint addresses sorted, without the range arithmetic
			// networks need (most sets have no networks); networks that
			// hold no endpoint address, as the fewest prefixes.
			if ms.nets != nil {
				n, _ := ms.nets.IPSet()
				prefixes = n.Prefixes()
			}
			slices.SortFunc(ms.addrs, netip.Addr.Compare)
			ms.addrs = slices.Compact(ms.addrs)
			for _, a := range ms.addrs {
				if prefixes == nil {
					prefixes = make([]netip.Prefix, 0, len(ms.addrs))
				}
				prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
			}
			if ms.nets != nil {
				slices.SortFunc(prefixes, ComparePrefixes)
			}
			sets = append(sets, Set{Name: name, Prefixes: prefixes})
			return
		}
		// Networks that may hold endpoint addresses (a dependency's
		// CIDR): those addresses are listed one by one, the rest of the
		// networks as the fewest prefixes.
		b := ms.nets
		for _, a := range ms.addrs {
			b.Add(a)
		}
		all, _ := b.IPSet() // errors only for invalid input, which normAddrs removes
		var own []netip.Addr
		for a := range m.epByIP {
			if all.Contains(a) {
				own = append(own, a)
				b.Remove(a)
			}
		}
		rest, _ := b.IPSet()
		prefixes = rest.Prefixes()
		slices.SortFunc(own, netip.Addr.Compare)
		for _, a := range own {
			prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
		}
		slices.SortFunc(prefixes, ComparePrefixes)
		sets = append(sets, Set{Name: name, Prefixes: prefixes})
	}
	var earlierB netipx.IPSetBuilder
	zoneMembers := map[string]*members{}
	for _, z := range m.zones {
		ms := &members{}
		if len(z.cidrs) > 0 {
			earlier, _ := earlierB.IPSet()
			ms.nets = &netipx.IPSetBuilder{}
			for _, p := range z.cidrs {
				ms.nets.AddPrefix(p)
				earlierB.AddPrefix(p)
			}
			ms.nets.RemoveSet(earlier)
			for a := range m.epByIP { // the endpoint addresses inside: usually few
				if slices.ContainsFunc(z.cidrs, func(p netip.Prefix) bool { return p.Contains(a) }) {
					ms.nets.Remove(a)
				}
			}
			ms.clean = true
		}
		zoneMembers[z.name] = ms
	}
	for _, e := range m.endpoints {
		if ms := zoneMembers[e.zone]; ms != nil {
			ms.addrs = m.ownedIPs(e, ms.addrs)
		}
	}
	zoned := members{clean: true}
	for _, z := range m.zones {
		ms := zoneMembers[z.name]
		zoned.addrs = append(zoned.addrs, ms.addrs...)
		if ms.nets != nil {
			if zoned.nets == nil {
				zoned.nets = &netipx.IPSetBuilder{}
			}
			n, _ := ms.nets.IPSet()
			zoned.nets.AddSet(n)
		}
		add(ZoneSet(z.name), *ms)
	}
	add(ZonedSet, zoned)
	for _, en := range m.entries {
		var ms members
		if en.cidr.IsValid() {
			ms.nets = &netipx.IPSetBuilder{}
			ms.nets.AddPrefix(en.cidr)
		} else {
			for _, e := range byNS[en.targetNS] {
				if en.coversEndpoint(e.Namespace, e.labels, e.IPs) {
					ms.addrs = m.ownedIPs(e, ms.addrs)
				}
			}
		}
		add(DependencySet(en.sd.ns, en.sd.name, en.name), ms)
	}
	for _, sds := range m.sdsByNS {
		for _, sd := range sds {
			var ms members
			for _, e := range byNS[sd.ns] {
				if sd.isClient(e.Namespace, e.labels) {
					ms.addrs = m.ownedIPs(e, ms.addrs)
				}
			}
			add(WorkloadSet(sd.ns, sd.name), ms)
		}
	}
	for _, p := range m.perimeters() {
		refused := map[string]*members{}
		for _, n := range m.zoneNames() {
			refused[n] = &members{}
		}
		for ns, eps := range byNS {
			if !m.refuses(p.name, ns) {
				continue
			}
			for _, e := range eps {
				refused[e.zone].addrs = m.ownedIPs(e, refused[e.zone].addrs)
			}
		}
		for n, ms := range refused {
			add(PerimeterSet(p.name, n), *ms)
		}
	}
	sort.Slice(sets, func(i, j int) bool { return sets[i].Name < sets[j].Name })
	return sets
}

func (m *model) zoneInfo() []ZoneInfo {
	count := map[string]int{}
	for _, e := range m.endpoints {
		count[e.zone]++
	}
	var out []ZoneInfo
	for _, z := range m.zones {
		out = append(out, ZoneInfo{Name: z.name, Priority: z.priority, DefaultAction: z.def, Monitor: z.monitor, Endpoints: count[z.name]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return append(out, ZoneInfo{Name: Unzoned, DefaultAction: m.cfg.UnzonedDefault, Endpoints: count[Unzoned]})
}

// listCache shares rule lists between endpoints with the same zone and
// the same dependency entries.
type listCache struct {
	m    *model
	memo map[string]Direction
}

func (lc listCache) get(zone string, egress bool, entries []*entry, refused []string) Direction {
	var k strings.Builder
	k.WriteString(zone)
	k.WriteString(strconv.FormatBool(egress))
	for _, e := range entries {
		k.WriteString("," + strconv.Itoa(int(e.origin)) + "/" + e.sd.ns + "/" + e.sd.name + "/" + e.name)
	}
	k.WriteString("|" + strings.Join(refused, ","))
	if d, ok := lc.memo[k.String()]; ok {
		return d
	}
	d := Direction{Enforced: lc.m.list(zone, egress, true, entries, refused), Staged: lc.m.list(zone, egress, false, entries, refused)}
	lc.memo[k.String()] = d
	return d
}

// list is the rule list of an endpoint in zone: for egress the peer is the
// destination, for ingress the source. refused (egress only) are the
// perimeter zones that refuse the endpoint's namespace.
func (m *model) list(zone string, egress, enforced bool, entries []*entry, refused []string) RuleList {
	var l RuleList
	for _, r := range m.rules {
		own, other := r.from, r.to
		if !egress {
			own, other = r.to, r.from
		}
		if r.broken || enforced && r.monitor || !own.has(zone) {
			continue
		}
		if other.any {
			l.Policy = append(l.Policy, Rule{Ports: r.ports, Action: r.action, Origin: r.origin})
			continue
		}
		for _, n := range other.names {
			l.Policy = append(l.Policy, Rule{Peer: zonePeer(n), Ports: r.ports, Action: r.action, Origin: r.origin})
		}
	}
	// A perimeter comes before the dependencies it refuses: egress, by the
	// destination's zone; ingress, by the sources of refused namespaces,
	// per source zone (the fallback depends on both zones).
	perimeter := func(from, to string, peer PeerMatch) {
		a, o := m.fallback(from, to, enforced, true)
		l.Tail = append(l.Tail, Rule{Peer: peer, Action: a, Origin: o})
	}
	for _, p := range refused {
		perimeter(zone, p, zonePeer(p))
	}
	if z := m.zoneByName[zone]; !egress && z != nil && z.admit != v1alpha1.AdmitAny {
		for _, n := range m.zoneNames() {
			perimeter(n, zone, PeerMatch{Set: PerimeterSet(zone, n)})
		}
	}
	for _, e := range entries {
		p := PeerMatch{Set: DependencySet(e.sd.ns, e.sd.name, e.name)}
		if !egress {
			p = PeerMatch{Set: WorkloadSet(e.sd.ns, e.sd.name)}
		}
		l.Tail = append(l.Tail, Rule{Peer: p, Ports: e.ports, Action: segment.Allow, Origin: e.origin})
	}
	dflt := func(peerZone string) Rule {
		from, to := zone, peerZone
		if !egress {
			from, to = peerZone, zone
		}
		return Rule{Action: m.both(from, to, enforced), Origin: m.zdOrigin[[2]string{from, to}]}
	}
	names := make([]string, 0, len(m.zones))
	for _, z := range m.zones {
		names = append(names, z.name)
	}
	sort.Strings(names)
	for _, n := range names {
		r := dflt(n)
		r.Peer = zonePeer(n)
		l.Tail = append(l.Tail, r)
	}
	l.Tail = append(l.Tail, dflt(Unzoned)) // addresses in no zone
	return l
}

func zonePeer(zone string) PeerMatch {
	if zone == Unzoned {
		return PeerMatch{Set: ZonedSet, Not: true}
	}
	return PeerMatch{Set: ZoneSet(zone)}
}

func sortProblems(ps []Problem) []Problem {
	sort.Slice(ps, func(i, j int) bool { return ps[i].String() < ps[j].String() })
	out := ps[:0]
	for _, p := range ps {
		if len(out) == 0 || p != out[len(out)-1] {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// addrInSet reports whether a is in the sorted prefixes.
func addrInSet(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
