package node

import (
	"maps"
	"slices"

	"github.com/netseg/netseg/controller/policy"
)

// compileModel keeps the compiler's model between syncs. A sync after a
// CNI ADD or DEL changes one endpoint of the node's thousand: the model is
// updated with that one instead of being rebuilt from a copy of every
// endpoint, work that grows with the node. A new policy generation
// rebuilds it.
type compileModel struct {
	m   *policy.Model
	gen int64
	// local: the node's endpoints in m, as last upserted; fixed: the
	// snapshot's own endpoints (other nodes'), by namespace/name.
	local, fixed map[[2]string]policy.Endpoint
}

// compile returns the compiled policy of snap's objects (cfg its config)
// plus the node's endpoints local (a local endpoint replaces a snapshot
// endpoint of the same name, as the later input does in policy.Compile).
// snap.Generation must change whenever snap.Input does.
func (c *compileModel) compile(snap Snapshot, cfg policy.Config, local []policy.Endpoint) *policy.Compiled {
	if c.m == nil || snap.Generation != c.gen {
		in := snap.Input
		in.Config = cfg
		c.m, c.gen = policy.NewModelOf(in), snap.Generation
		c.local = make(map[[2]string]policy.Endpoint, len(local))
		c.fixed = make(map[[2]string]policy.Endpoint, len(in.Endpoints))
		for _, e := range in.Endpoints {
			c.fixed[[2]string{e.Namespace, e.Name}] = e
		}
	}
	seen := make(map[[2]string]bool, len(local))
	for _, e := range local {
		k := [2]string{e.Namespace, e.Name}
		seen[k] = true
		if old, ok := c.local[k]; ok && sameEndpoint(old, e) {
			continue
		}
		c.m.UpsertEndpoint(e)
		c.local[k] = e
	}
	for k := range c.local {
		if seen[k] {
			continue
		}
		delete(c.local, k)
		if e, ok := c.fixed[k]; ok {
			c.m.UpsertEndpoint(e) // the snapshot's endpoint of that name is back
		} else {
			c.m.DeleteEndpoint(k[0], k[1])
		}
	}
	return c.m.Compile()
}

func sameEndpoint(a, b policy.Endpoint) bool {
	return a.Namespace == b.Namespace && a.Name == b.Name && maps.Equal(a.Labels, b.Labels) && slices.Equal(a.IPs, b.IPs)
}
