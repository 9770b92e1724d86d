package segment

import "fmt"

// MaxOriginID is the largest origin id: a conntrack mark carries 14 bits
// of origin for each pass of the decision.
const MaxOriginID = 1<<14 - 1

// OriginKind says which kind of object decided.
type OriginKind string

// Origin kinds.
const (
	OriginZonePolicy        OriginKind = "ZonePolicy"
	OriginServiceDependency OriginKind = "ServiceDependency"
	OriginZoneDefault       OriginKind = "ZoneDefault"
	// OriginZonePerimeter is a zone default reached without consulting
	// dependencies, because the destination zone does not admit the
	// source's namespace (Zone spec.admitDependencies). It names the
	// pair only where it denies; where the defaults allow, the origin is
	// the ZoneDefault.
	OriginZonePerimeter OriginKind = "ZonePerimeter"
)

// Origin is what decided a connection: a ZonePolicy rule, a
// ServiceDependency entry, a zone-default pair or a zone perimeter. The
// policy compiler assigns them, the conntrack mark carries their ids, and
// every flow record names one (its JSON is part of the flow log's schema,
// docs/flow-log.md). IDs are assigned in the order of (kind, names, rule
// index), what the cluster shares (ZonePolicy rules, zone defaults and
// perimeters) before the namespaces' dependency entries, so the same input
// always gets the same ids and no tenant's objects push a shared origin
// out of range; a different input may renumber them.
type Origin struct {
	ID   uint16     `json:"id"`
	Kind OriginKind `json:"kind"`
	// Name is the ZonePolicy's or ServiceDependency's name.
	Name      string `json:"name,omitempty"`
	Namespace string `json:"namespace,omitempty"`
	// Rule is the ZonePolicy rule's or the dependency entry's name.
	Rule string `json:"rule,omitempty"`
	// FromZone and ToZone are the zones of a ZoneDefault or ZonePerimeter.
	FromZone string `json:"fromZone,omitempty"`
	ToZone   string `json:"toZone,omitempty"`
}

func (o Origin) String() string {
	switch o.Kind {
	case OriginZonePolicy:
		return fmt.Sprintf("ZonePolicy %s rule %s", o.Name, o.Rule)
	case OriginServiceDependency:
		return fmt.Sprintf("ServiceDependency %s/%s entry %s", o.Namespace, o.Name, o.Rule)
	case OriginZoneDefault:
		return fmt.Sprintf("ZoneDefault %s -> %s", o.FromZone, o.ToZone)
	case OriginZonePerimeter:
		return fmt.Sprintf("ZonePerimeter %s -> %s", o.FromZone, o.ToZone)
	}
	return "none"
}
