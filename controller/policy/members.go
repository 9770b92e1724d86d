package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
)

func (m *model) addDependency(in *v1alpha1.ServiceDependency, services map[key]Service) {
	const kind = "ServiceDependency"
	ns, name := in.Namespace, in.Name
	w := in.Spec.Workload
	sd := &sdep{ns: ns, name: name, client: m.selector(&w, kind, ns, name, "spec.workload")}
	seen := map[string]bool{}
	for i, d := range in.Spec.DependsOn {
		field := fmt.Sprintf("spec.dependsOn[%d]", i)
		if seen[d.Name] {
			m.errorf(kind, ns, name, field+".name", "duplicate dependency name %q; entry ignored", d.Name)
			continue
		}
		seen[d.Name] = true
		e := &entry{sd: sd, name: d.Name, index: i}
		ports, ok := m.ports(d.Ports, kind, ns, name, field+".ports")
		e.ports = ports
		n := 0
		if d.Service != nil {
			n++
		}
		if d.Workload != nil {
			n++
		}
		if d.CIDR != "" {
			n++
		}
		switch {
		case n != 1:
			m.errorf(kind, ns, name, field, "exactly one of service, workload or cidr must be set")
			ok = false
		case d.Service != nil:
			k := key{d.Service.Namespace, d.Service.Name}
			if k.ns == "" {
				k.ns = ns
			}
			e.targetNS = k.ns
			svc, found := services[k]
			switch {
			case !found:
				m.warnf(kind, ns, name, field+".service", "service %s/%s not found; the dependency allows nothing until it exists", k.ns, k.name)
				e.target = labels.Nothing()
			case len(svc.Selector) == 0:
				e.target = labels.Nothing()
			default:
				e.target = labels.SelectorFromSet(svc.Selector)
			}
			if len(d.Ports) == 0 {
				e.ports = svc.Ports
			}
		case d.Workload != nil:
			e.targetNS = d.Workload.Namespace
			if e.targetNS == "" {
				e.targetNS = ns
			}
			e.target = m.selector(&d.Workload.LabelSelector, kind, ns, name, field+".workload")
		default:
			p, err := ParseCIDR(d.CIDR)
			if err != nil {
				m.errorf(kind, ns, name, field+".cidr", "%v", err)
				ok = false
				break
			}
			e.cidr = p
		}
		if !ok {
			// A broken entry stays (its set and origin exist) but covers nothing.
			e.target, e.cidr, e.targetNS = labels.Nothing(), netip.Prefix{}, ""
		}
		sd.entries = append(sd.entries, e)
	}
	// An entry weighs one per port range it lists (at least one): each
	// range is a rule per family in every chain the entry reaches, so 64
	// ports on "0.0.0.0/0" cost 64 times what one port does.
	n, weight, used := len(sd.entries), 0, m.nsEntries[ns]
	for _, e := range sd.entries {
		weight += max(1, len(e.ports))
	}
	switch {
	case used+weight > m.cfg.EntryBudget:
		m.errorf(kind, ns, name, "spec.dependsOn", "over the dependency budget of namespace %s: its %d entries weigh %d (one per port range each lists) and would make %d, %d over the budget of %d per namespace; not compiled",
			ns, n, weight, used+weight, used+weight-m.cfg.EntryBudget, m.cfg.EntryBudget)
		return
	case m.entriesTotal+n > m.entryRoom:
		m.errorf(kind, ns, name, "spec.dependsOn", "over the cluster's origin budget: its %d entries would make %d dependency entries, %d over the %d origin ids the zones and ZonePolicy rules leave; not compiled",
			n, m.entriesTotal+n, m.entriesTotal+n-m.entryRoom, m.entryRoom)
		return
	}
	m.nsEntries[ns] += weight
	m.entriesTotal += n
	m.entries = append(m.entries, sd.entries...)
	m.sdsByNS[ns] = append(m.sdsByNS[ns], sd)
}

// sharedOrigins is the number of origin ids the zones and ZonePolicy rules
// take: a rule each, a zone default for every ordered pair of zones
// (unzoned included), and a perimeter from every zone into each zone that
// refuses some namespace's dependencies.
func (m *model) sharedOrigins() int {
	zones := len(m.zones) + 1
	return len(m.rules) + zones*zones + len(m.perimeters())*zones
}

func (m *model) addEndpoint(in Endpoint) {
	e := &endpoint{Endpoint: in, labels: labels.Set(in.Labels), nsLabels: m.namespaceLabels(in.Namespace)}
	var tie *zone
	e.zone, tie = m.zoneOfLabels(e.nsLabels, e.labels)
	if tie != nil {
		m.errorf("Endpoint", in.Namespace, in.Name, "", "selected by zones %s and %s with the same priority %d; %s wins by name",
			e.zone, tie.name, tie.priority, e.zone)
	}
	for _, a := range e.IPs {
		if o, dup := m.epByIP[a]; dup {
			m.warnf("Endpoint", in.Namespace, in.Name, "", "address %s is also used by endpoint %s/%s, which wins", a, o.Namespace, o.Name)
			continue
		}
		m.epByIP[a] = e
	}
	m.endpoints = append(m.endpoints, e)
}

// zoneOfLabels returns the zone whose selectors match, by precedence, and
// the next matching zone if it has the same priority.
func (m *model) zoneOfLabels(nsl, podl labels.Set) (string, *zone) {
	var win *zone
	for _, z := range m.zones {
		if z.nsSel == nil && z.podSel == nil {
			continue
		}
		if z.nsSel != nil && !z.nsSel.Matches(nsl) || z.podSel != nil && !z.podSel.Matches(podl) {
			continue
		}
		if win == nil {
			win = z
			continue
		}
		if z.priority == win.priority {
			return win.name, z
		}
		break
	}
	if win == nil {
		return Unzoned, nil
	}
	return win.name, nil
}

// zoneOfAddr returns the zone of an address that is not an endpoint.
func (m *model) zoneOfAddr(a netip.Addr) string {
	for _, z := range m.zones {
		for _, p := range z.cidrs {
			if p.Contains(a) {
				return z.name
			}
		}
	}
	return Unzoned
}

// effective is a zone's default action in a pass.
func (m *model) effective(zoneName string, enforced bool) segment.Action {
	if zoneName == Unzoned {
		return m.cfg.UnzonedDefault
	}
	z := m.zoneByName[zoneName]
	if z == nil {
		return segment.Deny
	}
	if enforced && z.monitor {
		return segment.Allow
	}
	return z.def
}

// both is the zone-default decision between two zones.
func (m *model) both(from, to string, enforced bool) segment.Action {
	if m.effective(from, enforced) == segment.Allow && m.effective(to, enforced) == segment.Allow {
		return segment.Allow
	}
	return segment.Deny
}

// perimeters are the zones that refuse some namespace's dependencies,
// by name.
func (m *model) perimeters() []*zone {
	var out []*zone
	for _, z := range m.zones {
		if z.admit != v1alpha1.AdmitAny {
			out = append(out, z)
		}
	}
	slices.SortFunc(out, func(a, b *zone) int { return strings.Compare(a.name, b.name) })
	return out
}

// refuses reports whether zone p does not admit the dependencies of
// namespace ns (the perimeter of spec.admitDependencies).
func (m *model) refuses(p, ns string) bool {
	z := m.zoneByName[p]
	switch {
	case z == nil || z.admit == v1alpha1.AdmitAny:
		return false
	case z.admit == v1alpha1.AdmitZoneNamespaces:
		return z.nsSel == nil || !z.nsSel.Matches(m.namespaceLabels(ns))
	}
	return true
}

// fallback is the zone defaults' result for a connection from zone from
// into zone to; perimeter says that dependencies were not consulted
// because to refuses the source's namespace, which the origin then names
// where it denies.
func (m *model) fallback(from, to string, enforced, perimeter bool) (segment.Action, uint16) {
	a := m.both(from, to, enforced)
	if perimeter && a != segment.Allow {
		return a, m.pmOrigin[[2]string{from, to}]
	}
	return a, m.zdOrigin[[2]string{from, to}]
}

// isClient reports whether an endpoint is a client of sd.
func (sd *sdep) isClient(ns string, l labels.Set) bool {
	return ns == sd.ns && sd.client.Matches(l)
}

// coversEndpoint reports whether the entry's destinations include an
// endpoint; a CIDR entry covers an endpoint with an address inside.
func (e *entry) coversEndpoint(ns string, l labels.Set, ips []netip.Addr) bool {
	if e.cidr.IsValid() {
		for _, a := range ips {
			if e.cidr.Contains(a) {
				return true
			}
		}
		return false
	}
	return e.target != nil && ns == e.targetNS && e.target.Matches(l)
}

// assignOrigins numbers the origins: what the cluster shares (ZonePolicy
// rules, zone defaults, perimeters) first, then the dependency entries,
// which the budgets keep within the ids left.
func (m *model) assignOrigins() {
	m.origins = []segment.Origin{{}}
	dropped := 0
	add := func(o segment.Origin) uint16 {
		if len(m.origins) > segment.MaxOriginID {
			dropped++
			return 0
		}
		o.ID = uint16(len(m.origins))
		m.origins = append(m.origins, o)
		return o.ID
	}
	rules := append([]*prule(nil), m.rules...)
	sort.Slice(rules, func(i, j int) bool {
		a, b := rules[i], rules[j]
		return a.policy < b.policy || a.policy == b.policy && a.index < b.index
	})
	for _, r := range rules {
		r.origin = add(segment.Origin{Kind: segment.OriginZonePolicy, Name: r.policy, Rule: r.name})
	}
	names := m.zoneNames()
	for _, a := range names {
		for _, b := range names {
			m.zdOrigin[[2]string{a, b}] = add(segment.Origin{Kind: segment.OriginZoneDefault, FromZone: a, ToZone: b})
		}
	}
	for _, p := range m.perimeters() {
		for _, a := range names {
			m.pmOrigin[[2]string{a, p.name}] = add(segment.Origin{Kind: segment.OriginZonePerimeter, FromZone: a, ToZone: p.name})
		}
	}
	for _, e := range m.entries { // already by namespace, name, index
		e.origin = add(segment.Origin{Kind: segment.OriginServiceDependency, Namespace: e.sd.ns, Name: e.sd.name, Rule: e.name})
	}
	if dropped > 0 {
		m.errorf("Config", "", "", "", "%d origins do not fit the %d ids of a conntrack mark and have id 0", dropped, segment.MaxOriginID)
	}
}

// zoneNames are the declared zones and "unzoned", sorted.
func (m *model) zoneNames() []string {
	names := []string{Unzoned}
	for _, z := range m.zones {
		names = append(names, z.name)
	}
	sort.Strings(names)
	return names
}
