package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/netseg/netseg/api/segment"
)

// checkShadowed warns about ZonePolicy rules that an earlier rule always
// decides first, so they can never match.
func (m *model) checkShadowed() {
	for i, r := range m.rules {
		if r.broken {
			continue
		}
		for _, e := range m.rules[:i] {
			if e.broken || !coversZones(e.from, r.from) || !coversZones(e.to, r.to) || !coversPorts(e.ports, r.ports) {
				continue
			}
			where := ""
			if e.monitor && !r.monitor {
				where = " in the staged pass"
			}
			m.warnf("ZonePolicy", "", r.policy, fmt.Sprintf("spec.rules[%d]", r.index),
				"rule %s is shadowed%s by rule %s of ZonePolicy %s, which matches everything it matches first", r.name, where, e.name, e.policy)
			break
		}
	}
}

// coversZones reports whether every zone of b is in a.
func coversZones(a, b zoneRef) bool {
	if a.any {
		return true
	}
	if b.any {
		return false
	}
	for _, n := range b.names {
		if !a.has(n) {
			return false
		}
	}
	return true
}

// coversPorts reports whether every port of b is in a.
func coversPorts(a, b []segment.PortRange) bool {
	if len(a) == 0 {
		return true
	}
	if len(b) == 0 {
		return false
	}
	for _, rb := range b {
		// Walk rb's ports through a's ranges of the same protocol.
		next := int(rb.First)
		for progress := true; progress && next <= int(rb.Last); {
			progress = false
			for _, ra := range a {
				if ra.Protocol == rb.Protocol && int(ra.First) <= next && next <= int(ra.Last) {
					next = int(ra.Last) + 1
					progress = true
				}
			}
		}
		if next <= int(rb.Last) {
			return false
		}
	}
	return true
}

// checkRefused warns about dependency entries that reach into a zone whose
// perimeter refuses their namespace: those connections are decided by the
// zone defaults, which the app team may not expect.
func (m *model) checkRefused(covering map[*endpoint][]*entry) {
	refused := map[*entry]map[string]bool{}
	note := func(en *entry, zone string) {
		if refused[en] == nil {
			refused[en] = map[string]bool{}
		}
		refused[en][zone] = true
	}
	for e, ens := range covering {
		for _, en := range ens {
			if m.refuses(e.zone, en.sd.ns) {
				note(en, e.zone)
			}
		}
	}
	for _, p := range m.perimeters() {
		for _, en := range m.entries {
			if en.cidr.IsValid() && m.refuses(p.name, en.sd.ns) && slices.ContainsFunc(p.cidrs, en.cidr.Overlaps) {
				note(en, p.name)
			}
		}
	}
	for _, en := range m.entries { // in entry order, for a stable report
		if zones := refused[en]; zones != nil {
			names := slices.Sorted(maps.Keys(zones))
			m.warnf("ServiceDependency", en.sd.ns, en.sd.name, fmt.Sprintf("spec.dependsOn[%d]", en.index),
				"entry %s reaches zone %s, which does not admit dependencies from namespace %s (spec.admitDependencies); only a ZonePolicy rule can open it",
				en.name, strings.Join(names, ", "), en.sd.ns)
		}
	}
}

// checkTenantZones warns about zones that select pods by podSelector
// alone while membership matters: a zone whose default is Deny, or one a
// ZonePolicy Allow rule names. Pod labels are the app teams' to set, so any
// namespace's pod can join such a zone (and get what its rules allow);
// a namespaceSelector keeps the zone to namespaces an admin labels.
func (m *model) checkTenantZones() {
	allowed := map[string]bool{}
	for _, r := range m.rules {
		if r.broken || r.action != segment.Allow {
			continue
		}
		for _, n := range append(append([]string(nil), r.from.names...), r.to.names...) {
			allowed[n] = true
		}
	}
	for _, z := range m.zones {
		if z.podSel == nil || z.nsSel != nil {
			continue
		}
		var why []string
		if z.def == segment.Deny {
			why = append(why, "its default is Deny")
		}
		if allowed[z.name] {
			why = append(why, "a ZonePolicy Allow rule names it")
		}
		if len(why) > 0 {
			m.warnf("Zone", "", z.name, "spec.podSelector", "selects pods by podSelector alone and %s: any namespace's pod with these labels joins the zone; add a namespaceSelector to keep it to namespaces an admin labels",
				strings.Join(why, " and "))
		}
	}
}
