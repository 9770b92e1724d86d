package dataplane

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// A sync is three steps with explicit values:
//
//	render(cfg, ruleset, memo) -> state      what the table should hold (render.go)
//	plan(applied, state)       -> batch      the messages that get it there, and what the kernel then holds
//	apply(batch)                             one netlink transaction; on success, applied = batch.next (apply.go)
//
// plan reads the kernel's record and the desired state and changes
// neither: what syncs leave behind for Collect is part of the next record,
// not of the desired state.

// applied is what the kernel holds after the last committed batch: the
// rendering it was built from, plus what syncs left there for Collect.
type applied struct {
	st *state
	// staleChains and staleSets are in the kernel but wanted by no one:
	// deleting costs a commit an RCU grace period, so Collect deletes them
	// in a batch of their own, off the path of changes.
	staleChains map[string]*chainSpec
	staleSets   map[string]*setSpec
	// shadowed: dispatch chain -> the tags of the rules after its live
	// one, in kernel order (a change inserts the new live rule in front).
	// Kept for stale chains too: one wanted again still holds them.
	shadowed map[string][]string
}

func newApplied(st *state) *applied {
	return &applied{st: st, staleChains: map[string]*chainSpec{}, staleSets: map[string]*setSpec{}, shadowed: map[string][]string{}}
}

// tags are the tags of a chain's rules in the kernel, in order: the live
// rules, then a dispatch chain's shadowed ones.
func (a *applied) tags(c *chainSpec) []string { return append(liveTags(c), a.shadowed[c.name]...) }

func liveTags(c *chainSpec) []string {
	tags := make([]string, len(c.rules))
	for i := range c.rules {
		tags[i] = ruleTag(c, i)
	}
	return tags
}

// ruleTag is each rule's comment: the chain's content hash and the rule's
// place, so a drift check can tell an edited or reordered rule.
func ruleTag(c *chainSpec, i int) string { return fmt.Sprintf("netseg %s/%d", c.hash, i) }

// garbage reports whether Collect has something to delete.
func (a *applied) garbage() bool {
	return len(a.staleChains) > 0 || len(a.staleSets) > 0 || len(a.shadowed) > 0
}

// opKind is one kind of netlink message a batch queues.
type opKind uint8

const (
	opRebuildTable opKind = iota // add table, delete it, add it again, with the counters
	opDeleteTable                // add table (a no-op if present), delete it
	opAddSet                     // add set, with its elements unless it is a verdict map
	opDeleteSet
	opAddChain
	opDeleteChain
	opFlushChain
	opAddRules   // append the chain's live rules
	opInsertHead // insert the chain's live rules in front of its old ones
	opAddElems   // add keys of set
	opDeleteElems
	opKeepElems // add raw elements read from the kernel (a foreign set across a rebuild)
	// The bridge guard (a table of its own, names.go): rebuilt whole with
	// the managed sets of guard, which are few prefixes.
	opRebuildGuard
	opGuardRules // the guard's chain flushed and given rules (hold.go), created if missing
	opDeleteGuard
)

// op is one step of a batch. It refers to the specs of a rendering; apply
// turns it into netlink messages.
type op struct {
	kind  opKind
	chain *chainSpec
	set   *setSpec
	keys  []elemKey
	raw   []nftables.SetElement
	guard []*setSpec // opRebuildGuard: the guard's sets (state.guard)
	rules []*rb      // opGuardRules; opRebuildGuard: the chain's rules
	// inGuard: opAddElems and opDeleteElems go to the bridge guard's copy
	// of the set (same name, same elements) instead of the inet table's.
	inGuard bool
}

// batch is one transaction: its steps in the order the kernel accepts them
// (sets and chains before what refers to them), and what the kernel holds
// once it commits.
type batch struct {
	ops  []op
	next *applied
	// full batches rebuild the table; Stats counts them apart.
	full bool
	// before and after are steps for transactions of their own, around
	// this one. Before: filling the sets it makes, or stale ones it reads
	// again (nothing live reads them yet, so no decision changes). After:
	// emptying the sets it stops reading. In the same transaction, a set
	// that the rules start reading can miss its members for a moment after
	// the commit, and a packet inside the old rules at the commit would
	// look an emptied set up: a deny rule on either would not match
	// (hold.go).
	before, after []op
}

func (b *batch) add(o op) { b.ops = append(b.ops, o) }

// addSet queues a set with its elements; a verdict map's elements need
// their chains and come later.
func (b *batch) addSet(s *setSpec) { b.add(op{kind: opAddSet, set: s}) }

func (b *batch) addElems(s *setSpec, keys []elemKey) {
	if len(keys) > 0 {
		b.add(op{kind: opAddElems, set: s, keys: keys})
	}
}

func (b *batch) delElems(s *setSpec, keys []elemKey) {
	if len(keys) > 0 {
		b.add(op{kind: opDeleteElems, set: s, keys: keys})
	}
}

// planFull rebuilds the whole table: add table (a no-op if present),
// delete it, add it again with every object. Deleting first makes the
// rebuild exact; doing it in one transaction makes it atomic. carried are
// the foreign sets' elements, read from the kernel before, kept.
//
// With h, the hooked base chains and the bridge guard get the hold's
// rules instead of their own: the release batch gives them theirs once
// the kernel holds the sets (hold.go).
func planFull(st *state, carried map[string][]nftables.SetElement, h *hold) *batch {
	b := &batch{full: true, next: newApplied(st)}
	b.add(op{kind: opRebuildTable})
	guard, held := guardRules(st.cfg), map[string]*chainSpec{}
	if h != nil {
		guard = h.guard
		for _, c := range h.chains {
			held[c.name] = c
		}
	}
	b.add(op{kind: opRebuildGuard, guard: st.guard, rules: guard})
	sets, chains := sortedKeys(st.sets), sortedKeys(st.chains)
	for _, name := range sets {
		b.addSet(st.sets[name])
	}
	for _, name := range chains {
		b.add(op{kind: opAddChain, chain: st.chains[name]})
	}
	for _, name := range chains {
		c := st.chains[name]
		if h := held[name]; h != nil {
			c = h
		}
		b.add(op{kind: opAddRules, chain: c})
	}
	for _, name := range sets {
		if s := st.sets[name]; s.kind == kindVmap {
			b.addElems(s, sortedElems(s.elems))
		}
	}
	for _, name := range sortedKeys(carried) {
		if s := st.sets[name]; s != nil {
			b.add(op{kind: opKeepElems, set: s, raw: carried[name]})
		}
	}
	return b
}

// plan queues only what changed from old to st, in an order the kernel
// accepts inside one transaction: new sets and chains first, then rules and
// elements. It deletes only what must go now (map and set elements: a
// member that left a set must lose its access at once); chains and sets
// nothing refers to any more stay, unreachable, until Collect.
func plan(old *applied, st *state) *batch {
	next := newApplied(st)
	b := &batch{next: next}
	o := old.st
	keepShadowed := func(name string) {
		if sh := old.shadowed[name]; len(sh) > 0 {
			next.shadowed[name] = sh
		}
	}
	// What is in the kernel and no longer wanted stays until Collect.
	for name, c := range old.staleChains {
		if _, wanted := st.chains[name]; !wanted {
			next.staleChains[name] = c
			keepShadowed(name)
		}
	}
	for name, s := range old.staleSets {
		if _, wanted := st.sets[name]; !wanted {
			next.staleSets[name] = s
		}
	}
	for name, c := range o.chains {
		if _, wanted := st.chains[name]; !wanted {
			next.staleChains[name] = c
			keepShadowed(name)
		}
	}
	for _, name := range sortedKeys(o.sets) {
		if _, wanted := st.sets[name]; !wanted {
			next.staleSets[name] = b.emptied(o.sets[name])
		}
	}
	present := func(name string) *setSpec {
		if s, ok := o.sets[name]; ok {
			return s
		}
		return old.staleSets[name]
	}
	for _, name := range sortedKeys(st.sets) {
		if s := st.sets[name]; present(name) == nil {
			if s.kind == kindVmap { // its elements need their chains: in this batch
				b.addSet(s)
			} else {
				b.before = append(b.before, op{kind: opAddSet, set: s})
			}
		}
	}
	// The bridge guard's sets follow the pod networks element by element:
	// rebuilding its table would re-register its hook (2 ms of an ADD
	// that changes the pod networks) and zero its counters.
	if len(o.guard) != len(st.guard) {
		b.add(op{kind: opRebuildGuard, guard: st.guard, rules: guardRules(st.cfg)})
	} else {
		for i, s := range st.guard {
			if prev := o.guard[i]; prev != s {
				del, add := elemDelta(prev, s)
				b.guardElems(prev, del, true)
				b.guardElems(s, add, false)
			}
		}
	}
	// New chains first, all of them: their rules may jump to each other.
	// A stale chain wanted again is still there, with the same content
	// (policy chains are named after it).
	for name, c := range st.chains {
		if o.chains[name] == nil && old.staleChains[name] == nil {
			b.add(op{kind: opAddChain, chain: c})
		}
	}
	for name, c := range st.chains {
		prev := o.chains[name]
		if prev == nil {
			prev = old.staleChains[name]
			if prev == nil {
				b.add(op{kind: opAddRules, chain: c})
				continue
			}
		}
		switch {
		case prev.hash == c.hash:
			keepShadowed(name)
		case c.dispatch:
			// The new live rule goes in front; the old ones are shadowed.
			b.add(op{kind: opInsertHead, chain: c})
			next.shadowed[name] = old.tags(prev)
		case prev.device != c.device || prev.hook != c.hook:
			b.add(op{kind: opDeleteChain, chain: prev})
			b.add(op{kind: opAddChain, chain: c})
			b.add(op{kind: opAddRules, chain: c})
		default:
			b.add(op{kind: opFlushChain, chain: prev})
			b.add(op{kind: opAddRules, chain: c})
		}
	}
	for _, name := range sortedKeys(st.sets) {
		s, prev := st.sets[name], present(name)
		if s.foreign {
			continue // created above if missing; its elements are not ours
		}
		if prev == nil {
			if s.kind == kindVmap {
				b.addElems(s, sortedElems(s.elems))
			}
			continue
		}
		if prev == s {
			continue // carried over unchanged by render
		}
		del, add := elemDelta(prev, s)
		b.delElems(prev, del)
		if _, live := o.sets[name]; !live && len(add) > 0 {
			// A stale set read again: refilled before the rules that
			// read it arrive, as a new set is.
			b.before = append(b.before, op{kind: opAddElems, set: s, keys: add})
			continue
		}
		b.addElems(s, add)
	}
	return b
}

// elemDelta is what changes from set prev to set s: the elements to
// delete, then those to add.
func elemDelta(prev, s *setSpec) (del, add []elemKey) {
	if s.delta != nil && s.delta.from == prev {
		return s.delta.del, s.delta.add
	}
	for k, e := range prev.elems {
		if n, ok := s.elems[k]; !ok || n != e {
			del = append(del, k)
		}
	}
	for k, e := range s.elems {
		if p, ok := prev.elems[k]; !ok || p != e {
			add = append(add, k)
		}
	}
	slices.SortFunc(del, elemKey.compare)
	slices.SortFunc(add, elemKey.compare)
	return del, add
}

// guardElems queues a change of the bridge guard's copy of a managed set.
func (b *batch) guardElems(s *setSpec, keys []elemKey, del bool) {
	if len(keys) == 0 {
		return
	}
	kind := opAddElems
	if del {
		kind = opDeleteElems
	}
	b.add(op{kind: kind, set: s, keys: keys, inGuard: true})
}

// emptied queues the removal of the elements of a set that nothing wants
// any more, in the batch that stops wanting it, and returns its stale
// spec: empty. The batch that stops using a set is a removal (a DEL, a
// policy change) and pays an RCU grace period anyway; left full, the set's
// old members would be deleted by the batch that wants it again, most
// often a CNI ADD, which would then wait for the grace period.
func (b *batch) emptied(s *setSpec) *setSpec {
	if s.foreign || len(s.elems) == 0 {
		return s
	}
	b.after = append(b.after, op{kind: opDeleteElems, set: s, keys: sortedElems(s.elems)})
	return &setSpec{name: s.name, fam: s.fam, kind: s.kind, elems: map[elemKey]elemSpec{}}
}

// planCollect deletes what syncs left behind: shadowed rules of dispatch
// chains, chains and sets nothing refers to. Nothing reachable changes.
// It returns nil when there is nothing to delete.
func planCollect(a *applied) *batch {
	if !a.garbage() {
		return nil
	}
	b := &batch{next: newApplied(a.st)}
	for _, name := range sortedKeys(a.shadowed) {
		if c := a.st.chains[name]; c != nil {
			b.add(op{kind: opFlushChain, chain: c})
			b.add(op{kind: opAddRules, chain: c})
		}
	}
	stale := sortedKeys(a.staleChains)
	for _, name := range stale {
		b.add(op{kind: opFlushChain, chain: a.staleChains[name]})
	}
	for _, name := range stale {
		b.add(op{kind: opDeleteChain, chain: a.staleChains[name]})
	}
	for _, name := range sortedKeys(a.staleSets) {
		b.add(op{kind: opDeleteSet, set: a.staleSets[name]})
	}
	return b
}

// String is the batch as a list of steps, one a line, for tests and logs:
//
//	add chain epo_1c9a0e4f7b2d
//	add elements egress4 { 10.88.0.5 }
func (b *batch) String() string {
	var sb strings.Builder
	for _, o := range b.before {
		sb.WriteString("first " + o.String())
		sb.WriteByte('\n')
	}
	for _, o := range b.ops {
		sb.WriteString(o.String())
		sb.WriteByte('\n')
	}
	for _, o := range b.after {
		sb.WriteString("then " + o.String())
		sb.WriteByte('\n')
	}
	return sb.String()
}

func (o op) String() string {
	switch o.kind {
	case opRebuildTable:
		return "rebuild table"
	case opDeleteTable:
		return "delete table"
	case opAddSet:
		return "add set " + o.set.name
	case opDeleteSet:
		return "delete set " + o.set.name
	case opAddChain:
		return "add chain " + o.chain.name
	case opDeleteChain:
		return "delete chain " + o.chain.name
	case opFlushChain:
		return "flush chain " + o.chain.name
	case opAddRules:
		return fmt.Sprintf("add rules %s (%d)", o.chain.name, len(o.chain.rules))
	case opInsertHead:
		return fmt.Sprintf("insert rules %s (%d)", o.chain.name, len(o.chain.rules))
	case opAddElems, opDeleteElems:
		verb := "add"
		if o.kind == opDeleteElems {
			verb = "delete"
		}
		keys := make([]string, len(o.keys))
		for i, k := range o.keys {
			keys[i] = o.set.keyText(k)
		}
		table := ""
		if o.inGuard {
			table = "bridge guard "
		}
		return fmt.Sprintf("%s elements %s%s { %s }", verb, table, o.set.name, strings.Join(keys, ", "))
	case opKeepElems:
		return fmt.Sprintf("keep elements %s (%d)", o.set.name, len(o.raw))
	case opRebuildGuard:
		return "rebuild bridge guard"
	case opGuardRules:
		return fmt.Sprintf("bridge guard rules (%d)", len(o.rules))
	case opDeleteGuard:
		return "delete bridge guard"
	}
	return fmt.Sprintf("op(%d)", o.kind)
}

// keyText is an element as nft writes it.
func (s *setSpec) keyText(k elemKey) string {
	if s.kind == kindInterval {
		return intervalText(k)
	}
	return k.first.String()
}
