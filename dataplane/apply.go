package dataplane

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// apply sends a batch as one transaction on a connection of its own. If
// turning a step into messages fails, nothing is sent. The set handles
// follow what the kernel holds: reset by a rebuild, forgotten with a
// deleted set, and dropped whole when the kernel refuses the batch (its
// state is unknown then).
func (d *Dataplane) apply(b *batch) error { return d.applyAfter(b, nil) }

// applyAfter is apply, with before run once the batch's messages are
// built, just before they are sent (the hold of a rebuild: hold.go, so
// that containers wait for the kernel's transaction only).
func (d *Dataplane) applyAfter(b *batch, before func()) error {
	d.writes++
	conn, err := d.dial()
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	q := queue{conn: conn, table: d.table, guard: d.guard, cfg: d.cfg, sets: d.sets}
	for _, o := range b.ops {
		q.op(o)
	}
	if err := errors.Join(q.errs...); err != nil {
		d.sets.reset()
		return err
	}
	if before != nil {
		before()
	}
	if err := conn.Flush(); err != nil {
		d.sets.reset()
		return err
	}
	for _, o := range b.ops {
		if o.kind == opDeleteSet {
			d.sets.forget(o.set.name)
		}
	}
	return nil
}

// setHandles owns the library's handles of the table's sets, by name: the
// element messages of later batches refer to the set through them.
type setHandles struct {
	table  *nftables.Table
	byName map[string]*nftables.Set
}

func (h *setHandles) reset()             { h.byName = nil }
func (h *setHandles) forget(name string) { delete(h.byName, name) }

func (h *setHandles) get(s *setSpec) *nftables.Set {
	if ks, ok := h.byName[s.name]; ok {
		return ks
	}
	ks := &nftables.Set{Table: h.table, Name: s.name, KeyType: nftables.TypeIPAddr}
	if s.fam == 6 {
		ks.KeyType = nftables.TypeIP6Addr
	}
	switch s.kind {
	case kindInterval:
		ks.Interval = true
	case kindVmap:
		ks.IsMap, ks.DataType = true, nftables.TypeVerdict
	}
	if h.byName == nil {
		h.byName = map[string]*nftables.Set{}
	}
	h.byName[s.name] = ks
	return ks
}

// queue turns a batch's steps into the messages of one connection.
type queue struct {
	conn  *nftables.Conn
	table *nftables.Table
	guard *nftables.Table // the bridge guard's table
	cfg   Config
	sets  *setHandles
	errs  []error
}

func (q *queue) op(o op) {
	switch o.kind {
	case opRebuildTable:
		q.sets.reset()
		q.conn.AddTable(q.table)
		q.conn.DelTable(q.table)
		q.conn.AddTable(q.table)
		for _, name := range Counters {
			q.conn.AddObj(&nftables.CounterObj{Table: q.table, Name: name})
		}
	case opDeleteTable:
		q.sets.reset()
		q.conn.AddTable(q.table)
		q.conn.DelTable(q.table)
	case opAddSet:
		if err := q.conn.AddSet(q.sets.get(o.set), nil); err != nil {
			q.errs = append(q.errs, fmt.Errorf("set %s: %w", o.set.name, err))
		}
		if o.set.kind != kindVmap { // vmap elements need their chains: added later
			q.elems(q.sets.get(o.set), o.set, sortedElems(o.set.elems), false)
		}
	case opDeleteSet:
		q.conn.DelSet(q.sets.get(o.set))
	case opAddChain:
		q.conn.AddChain(q.kchain(o.chain, true))
	case opDeleteChain:
		q.conn.DelChain(q.kchain(o.chain, false))
	case opFlushChain:
		q.conn.FlushChain(q.kchain(o.chain, false))
	case opAddRules:
		kc := q.kchain(o.chain, false)
		for i, r := range o.chain.rules {
			q.conn.AddRule(&nftables.Rule{Table: q.table, Chain: kc, Exprs: r.exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, ruleTag(o.chain, i))})
		}
	case opInsertHead:
		kc := q.kchain(o.chain, false)
		for i := len(o.chain.rules) - 1; i >= 0; i-- {
			q.conn.InsertRule(&nftables.Rule{Table: q.table, Chain: kc, Exprs: o.chain.rules[i].exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, ruleTag(o.chain, i))})
		}
	case opAddElems, opDeleteElems:
		ks := q.sets.get(o.set)
		if o.inGuard {
			ks = q.guardSet(o.set)
		}
		q.elems(ks, o.set, o.keys, o.kind == opDeleteElems)
	case opKeepElems:
		if err := q.conn.SetAddElements(q.sets.get(o.set), o.raw); err != nil {
			q.errs = append(q.errs, fmt.Errorf("keep elements of %s: %w", o.set.name, err))
		}
	case opRebuildGuard:
		q.rebuildGuard(o.guard, o.rules)
	case opGuardRules:
		q.conn.AddTable(q.guard)
		kc := q.conn.AddChain(q.guardChain())
		q.conn.FlushChain(kc)
		for _, r := range o.rules {
			q.conn.AddRule(&nftables.Rule{Table: q.guard, Chain: kc, Exprs: r.exprs})
		}
	case opDeleteGuard:
		q.conn.AddTable(q.guard)
		q.conn.DelTable(q.guard)
	default:
		q.errs = append(q.errs, fmt.Errorf("unknown batch step %d", o.kind))
	}
}

// rebuildGuard replaces the bridge guard's table: its counter, its copies
// of the managed sets and its forward chain (names.go, guardRules).
func (q *queue) rebuildGuard(sets []*setSpec, rules []*rb) {
	if len(rules) == 0 {
		q.errs = append(q.errs, errors.New("bridge guard rebuilt without rules"))
		return
	}
	q.conn.AddTable(q.guard)
	q.conn.DelTable(q.guard)
	q.conn.AddTable(q.guard)
	q.conn.AddObj(&nftables.CounterObj{Table: q.guard, Name: CounterBridgeUnchecked})
	q.conn.AddObj(&nftables.CounterObj{Table: q.guard, Name: CounterBridgeMulticast})
	for _, s := range sets {
		if err := q.conn.AddSet(q.guardSet(s), elements(s, sortedElems(s.elems))); err != nil {
			q.errs = append(q.errs, fmt.Errorf("bridge guard set %s: %w", s.name, err))
		}
	}
	kc := q.conn.AddChain(q.guardChain())
	for _, r := range rules {
		q.conn.AddRule(&nftables.Rule{Table: q.guard, Chain: kc, Exprs: r.exprs})
	}
}

// guardChain is the library's chain for the bridge guard's forward chain.
func (q *queue) guardChain() *nftables.Chain {
	prio := nftables.ChainPriority(guardPriority)
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: guardChain, Table: q.guard, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: &prio, Policy: &accept}
}

// guardSet is the library's set for the bridge guard's set s.
func (q *queue) guardSet(s *setSpec) *nftables.Set {
	ks := &nftables.Set{Table: q.guard, Name: s.name, KeyType: nftables.TypeIPAddr, Interval: s.kind == kindInterval}
	if s.fam == 6 {
		ks.KeyType = nftables.TypeIP6Addr
	}
	return ks
}

// kchain is the library's chain for c; with hook, a base chain's type,
// hook, priority and policy (for adding it).
func (q *queue) kchain(c *chainSpec, hook bool) *nftables.Chain {
	kc := &nftables.Chain{Name: c.name, Table: q.table}
	if hook && c.hook != nil {
		prio := nftables.ChainPriority(c.prio)
		accept := nftables.ChainPolicyAccept
		kc.Hooknum, kc.Priority, kc.Type, kc.Policy, kc.Device = c.hook, &prio, nftables.ChainTypeFilter, &accept, c.device
	}
	return kc
}

// elemChunk bounds the elements per netlink message: the element list is
// one attribute, and a netlink attribute's length is 16 bits (64 KiB).
const elemChunk = 256

func (q *queue) elems(ks *nftables.Set, s *setSpec, keys []elemKey, del bool) {
	for len(keys) > 0 {
		n := min(len(keys), elemChunk)
		var err error
		if del {
			if err = q.conn.SetDeleteElements(ks, elements(s, keys[:n])); err != nil {
				err = fmt.Errorf("delete elements from %s: %w", s.name, err)
			}
		} else if err = q.conn.SetAddElements(ks, elements(s, keys[:n])); err != nil {
			err = fmt.Errorf("add elements to %s: %w", s.name, err)
		}
		if err != nil {
			q.errs = append(q.errs, err)
		}
		keys = keys[n:]
	}
}

// elements are the library's elements of keys of s.
func elements(s *setSpec, keys []elemKey) []nftables.SetElement {
	var out []nftables.SetElement
	for _, k := range keys {
		switch s.kind {
		case kindInterval: // the key is the element (a derived set's predecessor has no map)
			out = append(out, nftables.SetElement{Key: k.first.AsSlice()})
			if k.end.IsValid() {
				out = append(out, nftables.SetElement{Key: k.end.AsSlice(), IntervalEnd: true})
			}
		case kindVmap:
			e := s.elems[k]
			out = append(out, nftables.SetElement{Key: e.key.AsSlice(), Comment: e.comment,
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.chain}})
		default:
			out = append(out, nftables.SetElement{Key: k.first.AsSlice()})
		}
	}
	return out
}
