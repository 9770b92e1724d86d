package policy

import (
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"go4.org/netipx"
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
	for _, e := range m.endpoints {
		var clientOf []*entry
		for _, sd := range m.sdsByNS[e.Namespace] {
			if sd.isClient(e.Namespace, e.labels) {
				clientOf = append(clientOf, sd.entries...)
			}
		}
		c.Endpoints = append(c.Endpoints, EndpointRules{
			Namespace: e.Namespace, Name: e.Name, IPs: e.IPs, Zone: e.zone,
			Egress:  lists.get(e.zone, true, clientOf),
			Ingress: lists.get(e.zone, false, covering[e]),
		})
	}
	m.checkShadowed()
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

// ownedIPs are the addresses that resolve to e (a duplicate address goes
// to the first endpoint by name).
func (m *model) ownedIPs(e *endpoint, b *netipx.IPSetBuilder) {
	for _, a := range e.IPs {
		if m.epByIP[a] == e {
			b.Add(a)
		}
	}
}

func (m *model) sets(byNS map[string][]*endpoint, covering map[*endpoint][]*entry) []Set {
	var sets []Set
	// Zone sets are disjoint: an endpoint's address belongs to its zone
	// only; a network belongs to the first zone by precedence.
	var epB, earlierB, zonedB netipx.IPSetBuilder
	for a := range m.epByIP {
		epB.Add(a)
	}
	eps, _ := epB.IPSet()
	// A set lists its endpoint addresses one by one (/32, /128) and the
	// rest as the fewest prefixes: aggregating endpoint addresses would
	// make an endpoint's arrival rewrite its neighbours' prefixes, where
	// listing them makes it one added member.
	add := func(name string, b *netipx.IPSetBuilder) {
		s, _ := b.IPSet() // errors only for invalid input, which normAddrs removes
		var rest netipx.IPSetBuilder
		rest.AddSet(s)
		rest.RemoveSet(eps)
		r, _ := rest.IPSet()
		prefixes := r.Prefixes()
		var in netipx.IPSetBuilder
		in.AddSet(s)
		in.Intersect(eps)
		own, _ := in.IPSet()
		for _, rg := range own.Ranges() {
			for a := rg.From(); ; a = a.Next() {
				prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
				if a == rg.To() {
					break
				}
			}
		}
		sort.Slice(prefixes, func(i, j int) bool {
			if c := prefixes[i].Addr().Compare(prefixes[j].Addr()); c != 0 {
				return c < 0
			}
			return prefixes[i].Bits() < prefixes[j].Bits()
		})
		sets = append(sets, Set{Name: name, Prefixes: prefixes})
	}
	members := map[string]*netipx.IPSetBuilder{}
	for _, z := range m.zones {
		b := &netipx.IPSetBuilder{}
		if len(z.cidrs) > 0 {
			earlier, _ := earlierB.IPSet()
			for _, p := range z.cidrs {
				b.AddPrefix(p)
				earlierB.AddPrefix(p)
			}
			b.RemoveSet(earlier)
			b.RemoveSet(eps)
		}
		members[z.name] = b
	}
	for _, e := range m.endpoints {
		if b := members[e.zone]; b != nil {
			m.ownedIPs(e, b)
		}
	}
	for _, z := range m.zones {
		s, _ := members[z.name].IPSet()
		zonedB.AddSet(s)
		add(ZoneSet(z.name), members[z.name])
	}
	add(ZonedSet, &zonedB)
	for _, en := range m.entries {
		var b netipx.IPSetBuilder
		if en.cidr.IsValid() {
			b.AddPrefix(en.cidr)
		} else {
			for _, e := range byNS[en.targetNS] {
				if en.coversEndpoint(e.Namespace, e.labels, e.IPs) {
					m.ownedIPs(e, &b)
				}
			}
		}
		add(DependencySet(en.sd.ns, en.sd.name, en.name), &b)
	}
	for _, sds := range m.sdsByNS {
		for _, sd := range sds {
			var b netipx.IPSetBuilder
			for _, e := range byNS[sd.ns] {
				if sd.isClient(e.Namespace, e.labels) {
					m.ownedIPs(e, &b)
				}
			}
			add(WorkloadSet(sd.ns, sd.name), &b)
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

func (lc listCache) get(zone string, egress bool, entries []*entry) Direction {
	var k strings.Builder
	k.WriteString(zone)
	k.WriteString(strconv.FormatBool(egress))
	for _, e := range entries {
		k.WriteString("," + strconv.Itoa(int(e.origin)) + "/" + e.sd.ns + "/" + e.sd.name + "/" + e.name)
	}
	if d, ok := lc.memo[k.String()]; ok {
		return d
	}
	d := Direction{Enforced: lc.m.list(zone, egress, true, entries), Staged: lc.m.list(zone, egress, false, entries)}
	lc.memo[k.String()] = d
	return d
}

// list is the rule list of an endpoint in zone: for egress the peer is the
// destination, for ingress the source.
func (m *model) list(zone string, egress, enforced bool, entries []*entry) RuleList {
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
	for _, e := range entries {
		p := PeerMatch{Set: DependencySet(e.sd.ns, e.sd.name, e.name)}
		if !egress {
			p = PeerMatch{Set: WorkloadSet(e.sd.ns, e.sd.name)}
		}
		l.Tail = append(l.Tail, Rule{Peer: p, Ports: e.ports, Action: Allow, Origin: e.origin})
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
