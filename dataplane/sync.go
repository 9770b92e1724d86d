package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
)

// Stats counts what the dataplane did since it started.
type Stats struct {
	Syncs        atomic.Uint64 // incremental syncs applied
	FullResyncs  atomic.Uint64 // full rebuilds applied (including repairs)
	DriftRepairs atomic.Uint64 // drift found in the kernel and repaired
	Errors       atomic.Uint64 // batches the kernel refused
	Collections  atomic.Uint64 // Collect batches applied
	// LastSync is the duration of the last applied batch, in nanoseconds;
	// LastRender and LastCommit its parts: rendering the ruleset into
	// chains and sets, and the kernel's transaction.
	LastSync, LastRender, LastCommit atomic.Int64
}

// LinkChecker says whether a host interface exists. The dataplane binds an
// anti-spoofing chain only to interfaces that exist: the kernel refuses a
// chain on a missing device, and that would fail the whole batch.
type LinkChecker func(name string) bool

// Dataplane owns the nftables table "inet <Config.Table>" in one network
// namespace and makes it match a Ruleset, one atomic batch per change.
type Dataplane struct {
	cfg   Config
	dial  Dialer
	conn  *nftables.Conn // the batch being built (one connection per batch)
	errs  []error        // problems met while building the batch
	links LinkChecker
	table *nftables.Table

	mu      sync.Mutex
	applied *state   // what the last successful batch made the kernel hold
	last    *Ruleset // the ruleset behind applied, for drift repairs
	sets    map[string]*nftables.Set
	// writes counts the batches begun (syncs, collections, cleanups,
	// whatever their outcome), so that a drift check can tell whether the
	// dataplane wrote while it read the kernel; driftOvertaken counts the
	// checks in a row that it did.
	writes         uint64
	driftOvertaken int

	Stats Stats
}

// Dialer opens an nftables connection in the node's network namespace,
// with opts added. With nftables.AsLasting, for a caller that reads many
// objects, the connection keeps one netlink socket (otherwise each read
// opens its own, in the namespace: half of a drift check's time at 1,000
// endpoints); the caller then ends it with CloseLasting.
type Dialer func(opts ...nftables.ConnOption) (*nftables.Conn, error)

// New returns a dataplane that programs through connections from dial.
// links may be nil: every device is then assumed to exist.
func New(cfg Config, dial Dialer, links LinkChecker) *Dataplane {
	cfg = cfg.Defaults()
	if links == nil {
		links = func(string) bool { return true }
	}
	return &Dataplane{
		cfg: cfg, dial: dial, links: links,
		table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet},
	}
}

// Config returns the effective configuration.
func (d *Dataplane) Config() Config { return d.cfg }

// Sync makes the kernel match rs, sending only the difference from the last
// applied state in one atomic batch. The first sync, and any sync after a
// refused batch, is a full resync.
func (d *Dataplane) Sync(rs *Ruleset) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sync(rs, false)
}

// Resync rebuilds the whole table from rs in one atomic batch: the old
// table is deleted and the new one created in the same transaction, so no
// packet ever sees a missing or half-built table.
func (d *Dataplane) Resync(rs *Ruleset) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.sync(rs, true)
}

func (d *Dataplane) sync(rs *Ruleset, full bool) error {
	start := time.Now()
	st, err := render(d.cfg, d.withLinks(rs), d.applied)
	if err != nil {
		return err
	}
	rendered := time.Now()
	var carried map[string][]nftables.SetElement
	if full || d.applied == nil {
		carried = d.readForeign(st)
	}
	if err := d.begin(); err != nil {
		d.applied, d.sets = nil, nil // render may have taken over its sets' elements: the next sync rebuilds
		return err
	}
	if full || d.applied == nil {
		d.buildFull(st)
		for _, name := range sortedKeys(carried) {
			if err := d.conn.SetAddElements(d.kset(st.sets[name]), carried[name]); err != nil {
				d.errs = append(d.errs, fmt.Errorf("keep elements of %s: %w", name, err))
			}
		}
	} else {
		d.buildDiff(d.applied, st)
	}
	built := time.Now()
	if err := d.commit(); err != nil {
		d.Stats.Errors.Add(1)
		incremental := !full && d.applied != nil
		d.applied, d.sets = nil, nil // unknown: the next sync rebuilds
		if incremental {
			// The kernel did not hold what the diff was computed against
			// (someone edited the table): rebuild it whole, now.
			return d.sync(rs, true)
		}
		return fmt.Errorf("apply nftables batch to table inet %s: %w", d.cfg.Table, err)
	}
	d.Stats.LastSync.Store(int64(time.Since(start)))
	d.Stats.LastRender.Store(int64(rendered.Sub(start)))
	d.Stats.LastCommit.Store(int64(time.Since(built)))
	if full || d.applied == nil {
		d.Stats.FullResyncs.Add(1)
	} else {
		d.Stats.Syncs.Add(1)
	}
	for _, s := range st.sets {
		s.delta = nil // applied: holding on to delta.from would keep every earlier rendering
	}
	d.applied, d.last = st, rs
	return nil
}

// readForeign reads the elements of the foreign sets (the CNI plugin's
// quarantine) so that a full rebuild keeps them. A missing table or set
// has none.
func (d *Dataplane) readForeign(st *state) map[string][]nftables.SetElement {
	conn, err := d.dial()
	if err != nil {
		return nil
	}
	out := map[string][]nftables.SetElement{}
	for name, s := range st.sets {
		if !s.foreign {
			continue
		}
		ks := &nftables.Set{Table: d.table, Name: name, KeyType: nftables.TypeIPAddr}
		if s.fam == 6 {
			ks.KeyType = nftables.TypeIP6Addr
		}
		got, err := conn.GetSetElements(ks)
		if err != nil || len(got) == 0 {
			continue
		}
		elems := make([]nftables.SetElement, len(got))
		for i := range got {
			elems[i] = nftables.SetElement{Key: got[i].Key}
		}
		out[name] = elems
	}
	return out
}

// begin opens the connection that collects one batch, and counts the
// batch as a write.
func (d *Dataplane) begin() error {
	d.writes++
	c, err := d.dial()
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	d.conn, d.errs = c, nil
	return nil
}

// commit sends the batch as one transaction, unless building it failed:
// then nothing is sent (the connection and its queued messages are dropped).
func (d *Dataplane) commit() error {
	c, errs := d.conn, d.errs
	d.conn, d.errs = nil, nil
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return c.Flush()
}

// withLinks drops the host interface of endpoints whose device is gone.
func (d *Dataplane) withLinks(rs *Ruleset) *Ruleset {
	missing := false
	for _, ep := range rs.Endpoints {
		if ep.HostIface != "" && !d.links(ep.HostIface) {
			missing = true
			break
		}
	}
	if !missing {
		return rs
	}
	cp := *rs
	cp.Endpoints = append([]Endpoint(nil), rs.Endpoints...)
	for i, ep := range cp.Endpoints {
		if ep.HostIface != "" && !d.links(ep.HostIface) {
			cp.Endpoints[i].HostIface = ""
		}
	}
	return &cp
}

// buildFull queues: add table (a no-op if present), delete it, add it again
// with every object. Deleting first makes the rebuild exact; doing it in one
// transaction makes it atomic.
func (d *Dataplane) buildFull(st *state) {
	d.conn.AddTable(d.table)
	d.conn.DelTable(d.table)
	d.conn.AddTable(d.table)
	for _, name := range Counters {
		d.conn.AddObj(&nftables.CounterObj{Table: d.table, Name: name})
	}
	d.sets = map[string]*nftables.Set{}
	for _, name := range sortedKeys(st.sets) {
		d.addSet(st.sets[name])
	}
	for _, name := range sortedKeys(st.chains) {
		d.addChain(st.chains[name])
	}
	for _, name := range sortedKeys(st.chains) {
		d.addRules(st.chains[name])
	}
	for _, name := range sortedKeys(st.sets) {
		if s := st.sets[name]; s.kind == kindVmap {
			d.addElems(s, sortedElems(s.elems))
		}
	}
}

// buildDiff queues only what changed from old to st, in an order the kernel
// accepts inside one transaction: new sets and chains first, then rules and
// elements. It deletes only what must go now (map and set elements: a
// member that left a set must lose its access at once); chains and sets
// nothing refers to any more stay, unreachable, until Collect, because a
// transaction that deletes them waits an RCU grace period.
func (d *Dataplane) buildDiff(old, st *state) {
	// Carry over what is still in the kernel but unwanted.
	for name, c := range old.staleChains {
		if _, wanted := st.chains[name]; !wanted {
			st.staleChains[name] = c
		}
	}
	for name, s := range old.staleSets {
		if _, wanted := st.sets[name]; !wanted {
			st.staleSets[name] = s
		}
	}
	for name, c := range old.chains {
		if _, wanted := st.chains[name]; !wanted {
			st.staleChains[name] = c
		}
	}
	for _, name := range sortedKeys(old.sets) {
		if _, wanted := st.sets[name]; !wanted {
			st.staleSets[name] = d.emptied(old.sets[name])
		}
	}
	present := func(name string) *setSpec {
		if s, ok := old.sets[name]; ok {
			return s
		}
		return old.staleSets[name]
	}
	for _, name := range sortedKeys(st.sets) {
		if present(name) == nil {
			d.addSet(st.sets[name])
		}
	}
	// New chains first, all of them: their rules may jump to each other.
	// A stale chain wanted again is still there, with the same content
	// (policy chains are named after it).
	for name, c := range st.chains {
		if old.chains[name] == nil && old.staleChains[name] == nil {
			d.addChain(c)
		}
	}
	for name, c := range st.chains {
		prev := old.chains[name]
		if prev == nil {
			if revived := old.staleChains[name]; revived != nil {
				if revived.hash == c.hash && !c.dispatch {
					continue
				}
				prev = revived
			} else {
				d.addRules(c)
				continue
			}
		}
		switch {
		case prev.hash == c.hash:
			c.stale = prev.stale
		case c.dispatch:
			// The new live rule goes in front; the old ones are shadowed.
			d.insertHead(c)
			c.stale = ruleTags(prev)
		case prev.device != c.device || prev.hook != c.hook:
			d.conn.DelChain(&nftables.Chain{Name: name, Table: d.table})
			d.addChain(c)
			d.addRules(c)
		default:
			d.conn.FlushChain(&nftables.Chain{Name: name, Table: d.table})
			d.addRules(c)
		}
	}
	for _, name := range sortedKeys(st.sets) {
		s, prev := st.sets[name], present(name)
		if s.foreign {
			continue // created above if missing; its elements are not ours
		}
		if prev == nil {
			if s.kind == kindVmap {
				d.addElems(s, sortedElems(s.elems))
			}
			continue
		}
		if prev == s {
			continue // carried over unchanged by render
		}
		if s.delta != nil && s.delta.from == prev {
			d.delElems(prev, s.delta.del)
			d.addElems(s, s.delta.add)
			continue
		}
		var del, add []elemKey
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
		d.delElems(prev, del)
		d.addElems(s, add)
	}
	// Map elements of endpoints that are gone were removed above; their
	// dispatch chains are stale now, but a stale set may still hold
	// members: empty the maps' stale entries is enough, the rest waits.
}

// emptied removes the elements of a set that nothing wants any more, in
// the batch that stops wanting it, and returns its stale spec: empty. The
// batch that stops using a set is a removal (a DEL, a policy change) and
// pays an RCU grace period anyway; left full, the set's old members would
// be deleted by the batch that wants it again, most often a CNI ADD
// (measured: the first pod on a node waited 4-24 ms in that commit).
func (d *Dataplane) emptied(s *setSpec) *setSpec {
	if s.foreign || len(s.elems) == 0 {
		return s
	}
	d.delElems(s, sortedElems(s.elems))
	return &setSpec{name: s.name, fam: s.fam, kind: s.kind, elems: map[elemKey]elemSpec{}}
}

// insertHead puts a dispatch chain's live rule in front of its old ones.
func (d *Dataplane) insertHead(c *chainSpec) {
	kc := &nftables.Chain{Name: c.name, Table: d.table}
	for i := len(c.rules) - 1; i >= 0; i-- {
		d.conn.InsertRule(&nftables.Rule{Table: d.table, Chain: kc, Exprs: c.rules[i].exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, ruleTag(c, i))})
	}
}

// ruleTags are the tags of a chain's rules in the kernel, in order: the
// live rules, then a dispatch chain's shadowed ones.
func ruleTags(c *chainSpec) []string { return append(liveTags(c), c.stale...) }

func liveTags(c *chainSpec) []string {
	tags := make([]string, len(c.rules))
	for i := range c.rules {
		tags[i] = ruleTag(c, i)
	}
	return tags
}

// Garbage reports whether Collect has something to delete.
func (d *Dataplane) Garbage() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil {
		return false
	}
	if len(d.applied.staleChains) > 0 || len(d.applied.staleSets) > 0 {
		return true
	}
	for _, c := range d.applied.chains {
		if len(c.stale) > 0 {
			return true
		}
	}
	return false
}

// Collect deletes, in one batch, what syncs left behind: shadowed rules of
// dispatch chains, chains and sets nothing refers to. Such a batch waits an
// RCU grace period in the kernel (milliseconds), which is why syncs leave
// it for later. Nothing reachable changes.
func (d *Dataplane) Collect() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.applied
	if st == nil {
		return nil
	}
	var compact []*chainSpec
	for _, name := range sortedKeys(st.chains) {
		if c := st.chains[name]; len(c.stale) > 0 {
			compact = append(compact, c)
		}
	}
	if len(compact) == 0 && len(st.staleChains) == 0 && len(st.staleSets) == 0 {
		return nil
	}
	if err := d.begin(); err != nil {
		return err
	}
	for _, c := range compact {
		d.conn.FlushChain(&nftables.Chain{Name: c.name, Table: d.table})
		d.addRules(c)
	}
	stale := sortedKeys(st.staleChains)
	for _, name := range stale {
		d.conn.FlushChain(&nftables.Chain{Name: name, Table: d.table})
	}
	for _, name := range stale {
		d.conn.DelChain(&nftables.Chain{Name: name, Table: d.table})
	}
	for _, name := range sortedKeys(st.staleSets) {
		d.conn.DelSet(d.kset(st.staleSets[name]))
	}
	if err := d.commit(); err != nil {
		d.Stats.Errors.Add(1)
		d.applied, d.sets = nil, nil // unknown: the next sync rebuilds
		return fmt.Errorf("collect stale objects of inet %s: %w", d.cfg.Table, err)
	}
	for _, c := range compact {
		// A fresh spec: chain specs may be shared with earlier states.
		cp := *c
		cp.stale = nil
		st.chains[c.name] = &cp
	}
	for name := range st.staleSets {
		delete(d.sets, name)
	}
	st.staleChains, st.staleSets = map[string]*chainSpec{}, map[string]*setSpec{}
	d.Stats.Collections.Add(1)
	return nil
}

func (d *Dataplane) kset(s *setSpec) *nftables.Set {
	if ks, ok := d.sets[s.name]; ok {
		return ks
	}
	ks := &nftables.Set{Table: d.table, Name: s.name, KeyType: nftables.TypeIPAddr}
	if s.fam == 6 {
		ks.KeyType = nftables.TypeIP6Addr
	}
	switch s.kind {
	case kindInterval:
		ks.Interval = true
	case kindVmap:
		ks.IsMap, ks.DataType = true, nftables.TypeVerdict
	}
	d.sets[s.name] = ks
	return ks
}

func (d *Dataplane) addSet(s *setSpec) {
	if err := d.conn.AddSet(d.kset(s), nil); err != nil {
		d.errs = append(d.errs, fmt.Errorf("set %s: %w", s.name, err))
	}
	if s.kind != kindVmap { // vmap elements need their chains: added later
		d.addElems(s, sortedElems(s.elems))
	}
}

// elemChunk bounds the elements per netlink message: the element list is
// one attribute, and a netlink attribute's length is 16 bits (64 KiB).
const elemChunk = 256

func (d *Dataplane) elements(s *setSpec, keys []elemKey) []nftables.SetElement {
	var out []nftables.SetElement
	for _, k := range keys {
		e := s.elems[k]
		switch s.kind {
		case kindInterval: // the key is the element (a derived set's predecessor has no map)
			out = append(out, nftables.SetElement{Key: k.first.AsSlice()})
			if k.end.IsValid() {
				out = append(out, nftables.SetElement{Key: k.end.AsSlice(), IntervalEnd: true})
			}
		case kindVmap:
			out = append(out, nftables.SetElement{Key: e.key.AsSlice(), Comment: e.comment,
				VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: e.chain}})
		default:
			out = append(out, nftables.SetElement{Key: e.key.AsSlice()})
		}
	}
	return out
}

func (d *Dataplane) addElems(s *setSpec, keys []elemKey) {
	if len(keys) == 0 {
		return
	}
	for len(keys) > 0 {
		n := min(len(keys), elemChunk)
		if err := d.conn.SetAddElements(d.kset(s), d.elements(s, keys[:n])); err != nil {
			d.errs = append(d.errs, fmt.Errorf("add elements to %s: %w", s.name, err))
		}
		keys = keys[n:]
	}
}

func (d *Dataplane) delElems(s *setSpec, keys []elemKey) {
	if len(keys) == 0 {
		return
	}
	for len(keys) > 0 {
		n := min(len(keys), elemChunk)
		if err := d.conn.SetDeleteElements(d.kset(s), d.elements(s, keys[:n])); err != nil {
			d.errs = append(d.errs, fmt.Errorf("delete elements from %s: %w", s.name, err))
		}
		keys = keys[n:]
	}
}

func (d *Dataplane) addChain(c *chainSpec) {
	kc := &nftables.Chain{Name: c.name, Table: d.table}
	if c.hook != nil {
		prio := nftables.ChainPriority(c.prio)
		accept := nftables.ChainPolicyAccept
		kc.Hooknum, kc.Priority, kc.Type, kc.Policy, kc.Device = c.hook, &prio, nftables.ChainTypeFilter, &accept, c.device
	}
	d.conn.AddChain(kc)
}

func (d *Dataplane) addRules(c *chainSpec) {
	kc := &nftables.Chain{Name: c.name, Table: d.table}
	for i, r := range c.rules {
		d.conn.AddRule(&nftables.Rule{Table: d.table, Chain: kc, Exprs: r.exprs,
			UserData: userdata.AppendString(nil, userdata.TypeComment, ruleTag(c, i))})
	}
}

// ruleTag is each rule's comment: the chain's content hash and the rule's
// place, so a drift check can tell an edited or reordered rule.
func ruleTag(c *chainSpec, i int) string { return fmt.Sprintf("netseg %s/%d", c.hash, i) }

// Cleanup deletes the table and everything in it. Deleting a table that
// does not exist is not an error.
func (d *Dataplane) Cleanup() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.begin(); err != nil {
		return err
	}
	d.conn.AddTable(d.table)
	d.conn.DelTable(d.table)
	d.applied, d.sets, d.last = nil, nil, nil
	if err := d.commit(); err != nil {
		return fmt.Errorf("delete table inet %s: %w", d.cfg.Table, err)
	}
	return nil
}

// ErrNotProgrammed means an endpoint's rules are not in the kernel.
var ErrNotProgrammed = errors.New("not programmed")

// CheckEndpoint verifies in the kernel (not in memory) that the endpoint's
// chains exist with their rules and that its addresses dispatch to them.
func (d *Dataplane) CheckEndpoint(id string) error { return d.checkEndpoint(id, true) }

// CheckEndpointChains is what the agent checks after a sync that
// committed: it reads back the endpoint's own chains (its dispatch chains,
// whose live rule goes to its policy chains, and its anti-spoofing chain),
// not the verdict maps (a read of every element: about 1 ms at 1,000
// endpoints) nor the policy chains other endpoints share: those came in
// the same atomic transaction or an earlier one, and the kernel refuses a
// goto to a chain that does not exist.
func (d *Dataplane) CheckEndpointChains(id string) error { return d.checkEndpoint(id, false) }

func (d *Dataplane) checkEndpoint(id string, full bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.applied
	if st == nil {
		return fmt.Errorf("endpoint %s: %w: no ruleset applied", id, ErrNotProgrammed)
	}
	chains, ok := st.endpointChains[id]
	if !ok {
		return fmt.Errorf("endpoint %s: %w: unknown endpoint", id, ErrNotProgrammed)
	}
	conn, err := d.dial(nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("nftables connection: %w", err)
	}
	defer conn.CloseLasting()
	for _, name := range chains {
		c := st.chains[name]
		if !full && !c.dispatch && c.device == "" {
			continue // a shared policy chain
		}
		rules, err := conn.GetRules(d.table, &nftables.Chain{Name: name, Table: d.table})
		if err != nil {
			return fmt.Errorf("endpoint %s: %w: chain %s: %v", id, ErrNotProgrammed, name, err)
		}
		if err := sameRules(name, ruleTags(c), rules); err != nil {
			return fmt.Errorf("endpoint %s: %w: %v", id, ErrNotProgrammed, err)
		}
	}
	if !full {
		return nil
	}
	for _, fam := range []int{4, 6} {
		for _, dir := range []string{"egress", "ingress"} {
			s := st.sets[fmt.Sprintf("%s%d", dir, fam)]
			want := map[netip.Addr]string{}
			for _, e := range s.elems {
				if e.comment == id {
					want[e.key] = e.chain
				}
			}
			if len(want) == 0 {
				continue
			}
			got, err := conn.GetSetElements(d.kset(s))
			if err != nil {
				return fmt.Errorf("endpoint %s: %w: map %s: %v", id, ErrNotProgrammed, s.name, err)
			}
			for _, e := range got {
				a, _ := netip.AddrFromSlice(e.Key)
				if want[a] != "" && want[a] == vmapTarget(e) {
					delete(want, a)
				}
			}
			for a := range want {
				return fmt.Errorf("endpoint %s: %w: %s has no entry for %s", id, ErrNotProgrammed, s.name, a)
			}
		}
	}
	return nil
}

// sameRules checks a chain's kernel rules against the tags they should
// carry (ruleTags).
func sameRules(chain string, want []string, rules []*nftables.Rule) error {
	if len(rules) != len(want) {
		return fmt.Errorf("chain %s has %d rules, want %d", chain, len(rules), len(want))
	}
	for i, r := range rules {
		tag, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if tag != want[i] {
			return fmt.Errorf("chain %s rule %d is %q, want %q", chain, i, tag, want[i])
		}
	}
	return nil
}

// sortedElems lists a set's elements in address order.
func sortedElems(m map[elemKey]elemSpec) []elemKey {
	keys := make([]elemKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, elemKey.compare)
	return keys
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
