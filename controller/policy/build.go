package policy

import (
	"fmt"
	"net/netip"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
)

// model is the normalized form of a Model's objects that Decide and the
// rule lists are computed from.
type model struct {
	cfg        Config
	zones      []*zone // by precedence: priority, then name
	zoneByName map[string]*zone
	rules      []*prule // by policy priority, policy name, rule order
	entries    []*entry // by namespace, ServiceDependency name, entry order
	sdsByNS    map[string][]*sdep
	nsLabels   map[string]labels.Set
	endpoints  []*endpoint // by namespace and name
	epByIP     map[netip.Addr]*endpoint
	origins    []segment.Origin
	zdOrigin   map[[2]string]uint16
	pmOrigin   map[[2]string]uint16 // (from zone, perimeter zone)
	// The dependency entries' budgets: entries per namespace so far, in
	// all so far, and the room the shared origins leave.
	nsEntries    map[string]int
	entriesTotal int
	entryRoom    int
	errors       []Problem
	warnings     []Problem
}

type zone struct {
	name          string
	priority      int32
	def           segment.Action
	monitor       bool
	nsSel, podSel labels.Selector // nil: not set
	cidrs         []netip.Prefix
	admit         v1alpha1.Admission
}

// zoneRef is the zones of a rule's from or to side.
type zoneRef struct {
	any   bool
	names []string // existing zones or "unzoned"
}

func (r zoneRef) empty() bool { return !r.any && len(r.names) == 0 }

func (r zoneRef) has(z string) bool {
	if r.any {
		return true
	}
	for _, n := range r.names {
		if n == z {
			return true
		}
	}
	return false
}

type prule struct {
	policy   string
	priority int32
	index    int
	name     string
	monitor  bool
	action   segment.Action
	from, to zoneRef
	ports    []segment.PortRange
	broken   bool // invalid: matches nothing
	origin   uint16
}

type sdep struct {
	ns, name string
	client   labels.Selector
	entries  []*entry
}

type entry struct {
	sd       *sdep
	name     string
	index    int
	targetNS string
	target   labels.Selector // service or workload; nil for cidr or none
	cidr     netip.Prefix
	ports    []segment.PortRange
	origin   uint16
}

type endpoint struct {
	Endpoint
	labels   labels.Set
	nsLabels labels.Set
	zone     string
}

func (m *model) errorf(kind, ns, name, field, format string, args ...any) {
	m.errors = append(m.errors, Problem{kind, ns, name, field, fmt.Sprintf(format, args...)})
}

func (m *model) warnf(kind, ns, name, field, format string, args ...any) {
	m.warnings = append(m.warnings, Problem{kind, ns, name, field, fmt.Sprintf(format, args...)})
}

func build(src *Model) *model {
	m := &model{
		cfg:        src.cfg,
		zoneByName: map[string]*zone{},
		sdsByNS:    map[string][]*sdep{},
		nsLabels:   map[string]labels.Set{},
		epByIP:     map[netip.Addr]*endpoint{},
		zdOrigin:   map[[2]string]uint16{},
		pmOrigin:   map[[2]string]uint16{},
		nsEntries:  map[string]int{},
	}
	if m.cfg.EntryBudget <= 0 {
		m.cfg.EntryBudget = DefaultEntryBudget
	}
	switch m.cfg.UnzonedDefault {
	case 0:
		m.cfg.UnzonedDefault = segment.Allow
	case segment.Allow, segment.Deny:
	default:
		m.errorf("Config", "", "", "unzonedDefault", "must be Allow or Deny, not %q; using Deny", m.cfg.UnzonedDefault)
		m.cfg.UnzonedDefault = segment.Deny
	}
	for _, name := range sortedKeys(src.zones, func(a, b string) bool { return a < b }) {
		m.addZone(src.zones[name])
	}
	sort.SliceStable(m.zones, func(i, j int) bool { return m.zones[i].priority < m.zones[j].priority })
	m.checkCIDRTies()
	for _, name := range sortedKeys(src.policies, func(a, b string) bool { return a < b }) {
		m.addPolicy(src.policies[name])
	}
	sort.SliceStable(m.rules, func(i, j int) bool { return m.rules[i].priority < m.rules[j].priority })
	for name, ns := range src.namespaces {
		m.nsLabels[name] = nsLabels(name, ns.Labels)
	}
	m.entryRoom = segment.MaxOriginID - m.sharedOrigins()
	if m.entryRoom < 0 {
		m.errorf("Config", "", "", "", "ZonePolicy rules, zone defaults and perimeters need %d origin ids, %d over the %d a conntrack mark carries; no dependency is compiled",
			m.sharedOrigins(), -m.entryRoom, segment.MaxOriginID)
	}
	for _, k := range sortedKeys(src.deps, keyLess) {
		m.addDependency(src.deps[k], src.services)
	}
	for _, k := range src.endpointKeys() {
		m.addEndpoint(src.endpoints[k])
	}
	m.assignOrigins()
	return m
}

func nsLabels(name string, l map[string]string) labels.Set {
	s := make(labels.Set, len(l)+1)
	for k, v := range l {
		s[k] = v
	}
	s[NamespaceNameLabel] = name
	return s
}

func (m *model) namespaceLabels(ns string) labels.Set {
	if l, ok := m.nsLabels[ns]; ok {
		return l
	}
	return labels.Set{NamespaceNameLabel: ns}
}

// selector converts an optional label selector; nil stays nil.
func (m *model) selector(s *metav1.LabelSelector, kind, ns, name, field string) labels.Selector {
	if s == nil {
		return nil
	}
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		m.errorf(kind, ns, name, field, "invalid selector: %v", err)
		return labels.Nothing()
	}
	return sel
}

func (m *model) addZone(in *v1alpha1.Zone) {
	const kind = "Zone"
	if in.Name == Unzoned || in.Name == "*" || in.Name == "" {
		m.errorf(kind, "", in.Name, "metadata.name", "the name %q is reserved; zone ignored", in.Name)
		return
	}
	z := &zone{name: in.Name, priority: in.Spec.Priority}
	switch a := action(in.Spec.DefaultAction); a {
	case segment.Allow, segment.Deny:
		z.def = a
	default:
		m.errorf(kind, "", z.name, "spec.defaultAction", "must be Allow or Deny, not %q; using Deny", in.Spec.DefaultAction)
		z.def = segment.Deny
	}
	z.monitor = m.mode(in.Spec.Mode, kind, "", z.name, "spec.mode")
	switch z.admit = in.Spec.AdmitDependencies; z.admit {
	case "":
		z.admit = v1alpha1.AdmitAny
	case v1alpha1.AdmitAny, v1alpha1.AdmitNone:
	case v1alpha1.AdmitZoneNamespaces:
		if in.Spec.NamespaceSelector == nil {
			m.warnf(kind, "", z.name, "spec.admitDependencies", "ZoneNamespaces without a namespaceSelector admits no namespace's dependencies, as None does")
		}
	default:
		m.errorf(kind, "", z.name, "spec.admitDependencies", "must be Any, ZoneNamespaces or None, not %q; using None", z.admit)
		z.admit = v1alpha1.AdmitNone
	}
	z.nsSel = m.selector(in.Spec.NamespaceSelector, kind, "", z.name, "spec.namespaceSelector")
	z.podSel = m.selector(in.Spec.PodSelector, kind, "", z.name, "spec.podSelector")
	for i, c := range in.Spec.CIDRs {
		p, err := ParseCIDR(c)
		if err != nil {
			m.errorf(kind, "", z.name, fmt.Sprintf("spec.cidrs[%d]", i), "%v", err)
			continue
		}
		z.cidrs = append(z.cidrs, p)
	}
	m.zones = append(m.zones, z)
	m.zoneByName[z.name] = z
}

// mode reports whether mode is Monitor.
func (m *model) mode(mode v1alpha1.Mode, kind, ns, name, field string) bool {
	switch mode {
	case v1alpha1.ModeMonitor:
		return true
	case v1alpha1.ModeEnforce, "":
		return false
	}
	m.errorf(kind, ns, name, field, "must be Enforce or Monitor, not %q; using Enforce", mode)
	return false
}

// checkCIDRTies reports zones of equal priority whose networks overlap.
func (m *model) checkCIDRTies() {
	for i, a := range m.zones {
		for _, b := range m.zones[i+1:] {
			if a.priority != b.priority {
				continue
			}
			for _, pa := range a.cidrs {
				for _, pb := range b.cidrs {
					if pa.Overlaps(pb) {
						m.errorf("Zone", "", b.name, "spec.priority", "zones %s and %s have the same priority %d and overlapping networks %s and %s; %s wins by name",
							a.name, b.name, a.priority, pa, pb, a.name)
					}
				}
			}
		}
	}
}

func (m *model) addPolicy(in *v1alpha1.ZonePolicy) {
	const kind = "ZonePolicy"
	monitor := m.mode(in.Spec.Mode, kind, "", in.Name, "spec.mode")
	seen := map[string]bool{}
	for i, r := range in.Spec.Rules {
		field := fmt.Sprintf("spec.rules[%d]", i)
		pr := &prule{policy: in.Name, priority: in.Spec.Priority, index: i, name: r.Name, monitor: monitor}
		if seen[r.Name] {
			m.errorf(kind, "", in.Name, field+".name", "duplicate rule name %q", r.Name)
		}
		seen[r.Name] = true
		switch a := action(r.Action); a {
		case segment.Allow, segment.Deny, segment.Delegate:
			pr.action = a
		default:
			m.errorf(kind, "", in.Name, field+".action", "must be Allow, Deny or Delegate, not %q; rule ignored", r.Action)
			pr.broken = true
		}
		pr.from = m.zoneRef(r.From, in.Name, field+".from")
		pr.to = m.zoneRef(r.To, in.Name, field+".to")
		if pr.from.empty() || pr.to.empty() {
			pr.broken = true // names only missing zones: matches nothing
		}
		ports, ok := m.ports(r.Ports, kind, "", in.Name, field+".ports")
		pr.ports = ports
		pr.broken = pr.broken || !ok
		m.rules = append(m.rules, pr)
	}
}

func (m *model) zoneRef(refs []v1alpha1.ZoneRef, policy, field string) zoneRef {
	var r zoneRef
	for i, ref := range refs {
		switch {
		case ref.Zone == "*":
			r.any = true
		case ref.Zone == Unzoned || m.zoneByName[ref.Zone] != nil:
			r.names = append(r.names, ref.Zone)
		default:
			m.errorf("ZonePolicy", "", policy, fmt.Sprintf("%s[%d].zone", field, i), "zone %q does not exist", ref.Zone)
		}
	}
	if r.any {
		r.names = nil
	}
	return r
}

// action and protocol turn the CRDs' words into the shared ones the
// compiler works with; 0 stands for a value the schema does not know.
func action(a v1alpha1.Action) segment.Action {
	switch a {
	case v1alpha1.ActionAllow:
		return segment.Allow
	case v1alpha1.ActionDeny:
		return segment.Deny
	case v1alpha1.ActionDelegate:
		return segment.Delegate
	}
	return 0
}

// protocol: an empty protocol is TCP, the CRDs' default.
func protocol(p v1alpha1.Protocol) segment.Protocol {
	switch p {
	case v1alpha1.ProtocolTCP, "":
		return segment.TCP
	case v1alpha1.ProtocolUDP:
		return segment.UDP
	case v1alpha1.ProtocolSCTP:
		return segment.SCTP
	}
	return 0
}

// ports converts port ranges; ok is false if one is invalid.
func (m *model) ports(in []v1alpha1.PortRange, kind, ns, name, field string) (out []segment.PortRange, ok bool) {
	ok = true
	for i, p := range in {
		f := fmt.Sprintf("%s[%d]", field, i)
		proto := protocol(p.Protocol)
		if proto == 0 {
			m.errorf(kind, ns, name, f+".protocol", "must be TCP, UDP or SCTP, not %q", p.Protocol)
			ok = false
			continue
		}
		if p.Port < 1 || p.Port > 65535 {
			m.errorf(kind, ns, name, f+".port", "must be between 1 and 65535, not %d", p.Port)
			ok = false
			continue
		}
		last := p.Port
		if p.EndPort != nil {
			last = *p.EndPort
			if last < p.Port || last > 65535 {
				m.errorf(kind, ns, name, f+".endPort", "must be >= port (%d) and <= 65535, not %d", p.Port, last)
				ok = false
				continue
			}
		}
		out = append(out, segment.PortRange{Protocol: proto, First: uint16(p.Port), Last: uint16(last)})
	}
	return out, ok
}
