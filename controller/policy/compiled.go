package policy

import (
	"net/netip"
	"sort"

	"github.com/netseg/netseg/api/segment"
)

// Compiled is the output of the compiler. Treat it as read-only: rule
// lists may share backing arrays between endpoints.
type Compiled struct {
	Config Config
	// Origins is indexed by origin id; Origins[0] is the reserved "none".
	Origins []segment.Origin
	// Zones are the declared zones by name, then the implicit "unzoned".
	Zones []ZoneInfo
	// Endpoints are sorted by namespace and name.
	Endpoints []EndpointRules
	// Sets are the named peer sets that rules refer to, sorted by name.
	Sets []Set
	// Errors and Warnings are sorted; errors mean the input is not what
	// its authors meant, but the output is still complete and usable.
	Errors, Warnings []Problem

	m *model
}

// ZoneInfo is a zone as compiled.
type ZoneInfo struct {
	Name          string
	Priority      int32
	DefaultAction segment.Action
	Monitor       bool
	Endpoints     int
}

// EndpointRules are an endpoint's zone and its rule lists.
type EndpointRules struct {
	Namespace, Name string
	IPs             []netip.Addr
	Zone            string
	// Egress decides connections from this endpoint to any address.
	Egress Direction
	// Ingress decides connections to this endpoint from an address that is
	// not a local endpoint (whose egress lists decide instead).
	Ingress Direction
}

// Direction holds the two passes of the decision for one direction.
type Direction struct {
	// Enforced ignores Monitor-mode ZonePolicies and treats Monitor-mode
	// zone defaults as Allow; Staged takes everything as written.
	Enforced, Staged RuleList
}

// RuleList is a first-match list. Evaluate Policy first; a Delegate rule,
// or no match, continues with Tail, whose last rule matches everything.
// In nftables: Policy and Tail are two chains, Delegate is "goto tail".
type RuleList struct {
	Policy []Rule // from ZonePolicies: Allow, Deny or Delegate
	Tail   []Rule // ServiceDependency allows, then the zone defaults
}

// Rule matches the peer address (the destination for egress, the source
// for ingress) and the port.
type Rule struct {
	Peer PeerMatch
	// Ports: any may match; none means every protocol and port, ICMP
	// included. A rule with ports never matches ICMP.
	Ports  []segment.PortRange
	Action segment.Action
	Origin uint16
}

// PeerMatch matches the peer address against a named set: "ip daddr
// @set", or with Not "ip daddr != @set". The zero value matches any.
type PeerMatch struct {
	Set string
	Not bool
}

// Any reports whether m matches every address.
func (m PeerMatch) Any() bool { return m.Set == "" }

func (m PeerMatch) String() string {
	switch {
	case m.Set == "":
		return "any"
	case m.Not:
		return "!" + m.Set
	}
	return m.Set
}

// Set is a named set of address prefixes: endpoint addresses as /32 or
// /128, and networks. Names are stable ("zone/<zone>", "zoned",
// "dep/<ns>/<sd>/<entry>", "workload/<ns>/<sd>"), so endpoint churn
// changes members, not rules.
type Set struct {
	Name     string
	Prefixes []netip.Prefix
}

// Set names.
const ZonedSet = "zoned" // every address in some declared zone

// ZoneSet names the set of a zone's members.
func ZoneSet(zone string) string { return "zone/" + zone }

// DependencySet names the destinations of a dependency entry.
func DependencySet(ns, sd, entry string) string { return "dep/" + ns + "/" + sd + "/" + entry }

// WorkloadSet names the client endpoints of a ServiceDependency.
func WorkloadSet(ns, sd string) string { return "workload/" + ns + "/" + sd }

// PerimeterSet names the endpoints of zone from whose namespace the
// perimeter zone refuses (spec.admitDependencies).
func PerimeterSet(perimeter, from string) string { return "perimeter/" + perimeter + "/" + from }

// Origin returns the origin with the given id.
func (c *Compiled) Origin(id uint16) (segment.Origin, bool) {
	if int(id) >= len(c.Origins) || id == 0 {
		return segment.Origin{}, false
	}
	return c.Origins[id], true
}

// Set returns the members of the named set.
func (c *Compiled) Set(name string) ([]netip.Prefix, bool) {
	i := sort.Search(len(c.Sets), func(i int) bool { return c.Sets[i].Name >= name })
	if i < len(c.Sets) && c.Sets[i].Name == name {
		return c.Sets[i].Prefixes, true
	}
	return nil, false
}

// Endpoint returns an endpoint's rules.
func (c *Compiled) Endpoint(ns, name string) (*EndpointRules, bool) {
	i := sort.Search(len(c.Endpoints), func(i int) bool {
		e := c.Endpoints[i]
		return e.Namespace > ns || e.Namespace == ns && e.Name >= name
	})
	if i < len(c.Endpoints) && c.Endpoints[i].Namespace == ns && c.Endpoints[i].Name == name {
		return &c.Endpoints[i], true
	}
	return nil, false
}
