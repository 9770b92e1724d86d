package policy

import (
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
)

// Input is everything the compiler reads. Order does not matter; of two
// objects with the same key, the later one wins, as with Model updates.
type Input struct {
	Config              Config
	Zones               []v1alpha1.Zone
	ZonePolicies        []v1alpha1.ZonePolicy
	ServiceDependencies []v1alpha1.ServiceDependency
	Namespaces          []Namespace
	Endpoints           []Endpoint
	Services            []Service
}

// Compile compiles in.
func Compile(in Input) *Compiled { return NewModelOf(in).Compile() }

// NewModelOf returns a model holding in's objects.
func NewModelOf(in Input) *Model {
	m := NewModel(in.Config)
	for _, z := range in.Zones {
		m.UpsertZone(z)
	}
	for _, p := range in.ZonePolicies {
		m.UpsertZonePolicy(p)
	}
	for _, d := range in.ServiceDependencies {
		m.UpsertServiceDependency(d)
	}
	for _, n := range in.Namespaces {
		m.UpsertNamespace(n)
	}
	for _, e := range in.Endpoints {
		m.UpsertEndpoint(e)
	}
	for _, s := range in.Services {
		m.UpsertService(s)
	}
	return m
}

type key struct{ ns, name string }

// Model holds the current objects and takes them as incremental updates.
// It keeps its own deep copies. It is not safe for concurrent use.
type Model struct {
	cfg        Config
	zones      map[string]*v1alpha1.Zone
	policies   map[string]*v1alpha1.ZonePolicy
	deps       map[key]*v1alpha1.ServiceDependency
	namespaces map[string]Namespace
	endpoints  map[key]Endpoint
	services   map[key]Service
	// epKeys are the endpoints' keys in order, kept across updates (a node
	// agent upserts one endpoint of many between compiles, and sorting
	// them all again would cost every compile); nil: not computed.
	epKeys []key
}

// NewModel returns an empty model.
func NewModel(cfg Config) *Model {
	return &Model{
		cfg:        cfg,
		zones:      map[string]*v1alpha1.Zone{},
		policies:   map[string]*v1alpha1.ZonePolicy{},
		deps:       map[key]*v1alpha1.ServiceDependency{},
		namespaces: map[string]Namespace{},
		endpoints:  map[key]Endpoint{},
		services:   map[key]Service{},
	}
}

// UpsertZone adds or replaces a Zone.
func (m *Model) UpsertZone(z v1alpha1.Zone) { m.zones[z.Name] = z.DeepCopy() }

// DeleteZone removes a Zone.
func (m *Model) DeleteZone(name string) { delete(m.zones, name) }

// UpsertZonePolicy adds or replaces a ZonePolicy.
func (m *Model) UpsertZonePolicy(p v1alpha1.ZonePolicy) { m.policies[p.Name] = p.DeepCopy() }

// DeleteZonePolicy removes a ZonePolicy.
func (m *Model) DeleteZonePolicy(name string) { delete(m.policies, name) }

// UpsertServiceDependency adds or replaces a ServiceDependency.
func (m *Model) UpsertServiceDependency(d v1alpha1.ServiceDependency) {
	m.deps[key{d.Namespace, d.Name}] = d.DeepCopy()
}

// DeleteServiceDependency removes a ServiceDependency.
func (m *Model) DeleteServiceDependency(ns, name string) { delete(m.deps, key{ns, name}) }

// UpsertNamespace adds or replaces a Namespace's labels.
func (m *Model) UpsertNamespace(n Namespace) {
	n.Labels = copyLabels(n.Labels)
	m.namespaces[n.Name] = n
}

// DeleteNamespace removes a Namespace's labels; it keeps its name label.
func (m *Model) DeleteNamespace(name string) { delete(m.namespaces, name) }

// UpsertEndpoint adds or replaces an Endpoint.
func (m *Model) UpsertEndpoint(e Endpoint) {
	e.Labels = copyLabels(e.Labels)
	e.IPs = normAddrs(e.IPs)
	k := key{e.Namespace, e.Name}
	if _, ok := m.endpoints[k]; !ok && m.epKeys != nil {
		i, _ := slices.BinarySearchFunc(m.epKeys, k, compareKeys)
		m.epKeys = slices.Insert(m.epKeys, i, k)
	}
	m.endpoints[k] = e
}

// DeleteEndpoint removes an Endpoint.
func (m *Model) DeleteEndpoint(ns, name string) {
	k := key{ns, name}
	if _, ok := m.endpoints[k]; ok && m.epKeys != nil {
		if i, found := slices.BinarySearchFunc(m.epKeys, k, compareKeys); found {
			m.epKeys = slices.Delete(m.epKeys, i, i+1)
		}
	}
	delete(m.endpoints, k)
}

// endpointKeys returns the endpoints' keys in order.
func (m *Model) endpointKeys() []key {
	if m.epKeys == nil {
		m.epKeys = sortedKeys(m.endpoints, keyLess)
	}
	return m.epKeys
}

// UpsertService adds or replaces a Service.
func (m *Model) UpsertService(s Service) {
	s.Selector = copyLabels(s.Selector)
	s.Ports = append([]segment.PortRange(nil), s.Ports...)
	m.services[key{s.Namespace, s.Name}] = s
}

// DeleteService removes a Service.
func (m *Model) DeleteService(ns, name string) { delete(m.services, key{ns, name}) }

// Compile compiles the model's current objects.
func (m *Model) Compile() *Compiled {
	return build(m).compile()
}

func copyLabels(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	c := make(map[string]string, len(l))
	for k, v := range l {
		c[k] = v
	}
	return c
}

// normAddrs unmaps IPv4-in-IPv6 addresses, drops invalid ones, sorts and
// deduplicates.
func normAddrs(in []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(in))
	for _, a := range in {
		if a.IsValid() {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j]) })
	n := 0
	for i, a := range out {
		if i == 0 || a != out[n-1] {
			out[n] = a
			n++
		}
	}
	if n == 0 {
		return nil
	}
	return out[:n]
}

func sortedKeys[K comparable, V any](m map[K]V, less func(a, b K) bool) []K {
	ks := make([]K, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return less(ks[i], ks[j]) })
	return ks
}

func keyLess(a, b key) bool { return compareKeys(a, b) < 0 }

func compareKeys(a, b key) int {
	if c := strings.Compare(a.ns, b.ns); c != 0 {
		return c
	}
	return strings.Compare(a.name, b.name)
}
