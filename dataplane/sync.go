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
	"github.com/google/nftables/userdata"
)

// Stats counts what the dataplane did since it started.
type Stats struct {
	Syncs        atomic.Uint64 // incremental syncs applied
	FullResyncs  atomic.Uint64 // full rebuilds applied (including repairs)
	DriftRepairs atomic.Uint64 // drift found in the kernel and repaired
	Errors       atomic.Uint64 // batches the kernel refused
	Collections  atomic.Uint64 // Collect batches applied
	Adoptions    atomic.Uint64 // first syncs that found the kernel holding their table already (no write)
	// LastSync is the duration of the last applied batch, in nanoseconds;
	// LastRender and LastCommit its parts: rendering the ruleset into
	// chains and sets, and the kernel's transaction.
	LastSync, LastRender, LastCommit atomic.Int64
	// LastHold is how long the last rebuild held the base chains (hold.go):
	// containers' new connections waited that long, in nanoseconds.
	LastHold atomic.Int64
}

// LinkChecker says whether a host interface exists; an error means it
// could not tell. The dataplane binds an anti-spoofing chain only to
// interfaces that exist: the kernel refuses a chain on a missing device,
// and that would fail the whole batch. A failed lookup keeps the chain (a
// container must not lose its anti-spoofing to a netlink hiccup).
type LinkChecker func(name string) (bool, error)

// Dataplane owns the nftables table "inet <Config.Table>" in one network
// namespace and makes it match a Ruleset, one atomic batch per change.
type Dataplane struct {
	cfg   Config
	dial  Dialer
	links LinkChecker
	table *nftables.Table
	guard *nftables.Table // the bridge guard (names.go)

	mu      sync.Mutex
	applied *applied    // what the last committed batch made the kernel hold
	last    *Ruleset    // the ruleset behind applied, for drift repairs
	sets    *setHandles // the library's handles of the kernel's sets
	// writes counts the batches begun (syncs, collections, cleanups,
	// whatever their outcome), so that a drift check can tell whether the
	// dataplane wrote while it read the kernel; driftOvertaken counts the
	// checks in a row that it did.
	writes         uint64
	driftOvertaken int
	// beforeDriftRead runs as a drift check starts reading the kernel; a
	// test orders a sync against the read with it.
	beforeDriftRead func()

	Stats Stats
}

// Dialer opens an nftables connection in the node's network namespace,
// with opts added. With nftables.AsLasting, for a caller that reads many
// objects, the connection keeps one netlink socket (otherwise each read
// opens its own, entering the namespace each time); the caller then ends
// it with CloseLasting.
type Dialer func(opts ...nftables.ConnOption) (*nftables.Conn, error)

// New returns a dataplane that programs through connections from dial.
// links may be nil: every device is then assumed to exist.
func New(cfg Config, dial Dialer, links LinkChecker) *Dataplane {
	cfg = cfg.Defaults()
	if links == nil {
		links = func(string) (bool, error) { return true, nil }
	}
	table := &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}
	guard := &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyBridge}
	return &Dataplane{cfg: cfg, dial: dial, links: links, table: table, guard: guard, sets: &setHandles{table: table}, beforeDriftRead: func() {}}
}

// LastSyncParts returns the last applied sync's render and commit times.
func (d *Dataplane) LastSyncParts() (render, commit time.Duration) {
	return time.Duration(d.Stats.LastRender.Load()), time.Duration(d.Stats.LastCommit.Load())
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
	var memo *state
	if d.applied != nil {
		memo = d.applied.st
	}
	st, err := render(d.cfg, d.withLinks(rs), memo)
	if err != nil {
		return err
	}
	rendered := time.Now()
	if d.applied == nil && !full && d.adopt(st) {
		// A restarted agent whose kernel already holds what it would
		// write: nothing is written, and no container's new connection
		// waits for a rebuild.
		d.Stats.Adoptions.Add(1)
		d.Stats.LastSync.Store(int64(time.Since(start)))
		d.Stats.LastRender.Store(int64(rendered.Sub(start)))
		d.Stats.LastCommit.Store(0)
		d.applied, d.last = newApplied(st), rs
		return nil
	}
	var b *batch
	var holding func() // commits the hold (step 1), once the rebuild's messages are built
	var held time.Time
	if full || d.applied == nil {
		// Three transactions (hold.go): hold, rebuild holding, release.
		h := newHold(d.cfg, rs)
		b = planFull(st, d.readForeign(st), h)
		if d.tableExists() {
			holding = func() {
				if err := d.apply(h.batch()); err != nil {
					// Base chains someone changed: the rebuild
					// that repairs them goes on.
					d.Stats.Errors.Add(1)
				}
				held = time.Now()
			}
		}
	} else {
		b = plan(d.applied, st)
		if len(b.before) > 0 {
			if err := d.completing(&batch{ops: b.before}, "fill the sets a sync reads"); err != nil {
				return d.sync(rs, true) // as for a refused batch
			}
		}
	}
	built := time.Now()
	if err := d.applyAfter(b, holding); err != nil {
		d.Stats.Errors.Add(1)
		// Unknown now, and render may have taken over the applied sets'
		// elements: the next sync rebuilds.
		d.applied = nil
		if !b.full {
			// The kernel did not hold what the plan was computed against
			// (someone edited the table): rebuild it whole, now.
			return d.sync(rs, true)
		}
		return fmt.Errorf("apply nftables batch to table inet %s: %w", d.cfg.Table, err)
	}
	if len(b.after) > 0 {
		if err := d.completing(&batch{ops: b.after}, "empty the sets a sync stopped reading"); err != nil {
			return err
		}
	}
	if b.full {
		// Until released, containers' new connections are dropped.
		if err := d.completing(releaseBatch(st), "release the base chains after a rebuild"); err != nil {
			return err
		}
		if !held.IsZero() {
			d.Stats.LastHold.Store(int64(time.Since(held)))
		}
	}
	d.Stats.LastSync.Store(int64(time.Since(start)))
	d.Stats.LastRender.Store(int64(rendered.Sub(start)))
	d.Stats.LastCommit.Store(int64(time.Since(built)))
	if b.full {
		d.Stats.FullResyncs.Add(1)
	} else {
		d.Stats.Syncs.Add(1)
	}
	for _, s := range st.sets {
		s.delta = nil // applied: holding on to delta.from would keep every earlier rendering
	}
	for _, s := range st.guard {
		s.delta = nil
	}
	d.applied, d.last = b.next, rs
	return nil
}

// completing applies a batch that belongs to a sync's change but goes in
// a transaction of its own. Refused, it leaves the kernel in a state the
// dataplane cannot name: the next sync rebuilds.
func (d *Dataplane) completing(b *batch, what string) error {
	if err := d.apply(b); err != nil {
		d.Stats.Errors.Add(1)
		d.applied = nil
		return fmt.Errorf("%s of table inet %s: %w", what, d.cfg.Table, err)
	}
	return nil
}

// adopt reports whether the kernel's table is exactly st, as the drift
// check compares it plus the sets nothing wants (the previous agent's,
// not collected yet: taken over, they would never be) and the base chains'
// hooks. Then the first sync of a restarted agent takes it over instead
// of rebuilding it.
func (d *Dataplane) adopt(st *state) bool {
	diff, err := d.diffKernel(d.expect(newApplied(st), true))
	return err == nil && diff == ""
}

// tableExists reports whether the kernel holds the table (an error reads
// as yes: a hold on a missing table only creates what the rebuild
// replaces).
func (d *Dataplane) tableExists() bool {
	conn, err := d.dial()
	if err != nil {
		return true
	}
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return true
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == d.cfg.Table })
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

// withLinks drops the host interface of endpoints whose device is gone.
func (d *Dataplane) withLinks(rs *Ruleset) *Ruleset {
	gone := func(name string) bool {
		ok, err := d.links(name)
		return err == nil && !ok
	}
	missing := false
	for _, ep := range rs.Endpoints {
		if ep.HostIface != "" && gone(ep.HostIface) {
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
		if ep.HostIface != "" && gone(ep.HostIface) {
			cp.Endpoints[i].HostIface = ""
		}
	}
	return &cp
}

// Garbage reports whether Collect has something to delete.
func (d *Dataplane) Garbage() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.applied != nil && d.applied.garbage()
}

// Collect deletes, in one batch, what syncs left behind: shadowed rules of
// dispatch chains, chains and sets nothing refers to. Such a batch waits an
// RCU grace period in the kernel (milliseconds), which is why syncs leave
// it for later. Nothing reachable changes.
func (d *Dataplane) Collect() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil {
		return nil
	}
	b := planCollect(d.applied)
	if b == nil {
		return nil
	}
	if err := d.apply(b); err != nil {
		d.Stats.Errors.Add(1)
		d.applied = nil // unknown: the next sync rebuilds
		return fmt.Errorf("collect stale objects of inet %s: %w", d.cfg.Table, err)
	}
	d.applied = b.next
	d.Stats.Collections.Add(1)
	return nil
}

// Cleanup deletes the table and everything in it. Deleting a table that
// does not exist is not an error.
func (d *Dataplane) Cleanup() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.applied, d.last = nil, nil
	if err := d.apply(&batch{ops: []op{{kind: opDeleteTable}, {kind: opDeleteGuard}}}); err != nil {
		return fmt.Errorf("delete tables inet and bridge %s: %w", d.cfg.Table, err)
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
// not the verdict maps (a read of every endpoint's element) nor the policy
// chains other endpoints share: those came in
// the same atomic transaction or an earlier one, and the kernel refuses a
// goto to a chain that does not exist.
func (d *Dataplane) CheckEndpointChains(id string) error { return d.checkEndpoint(id, false) }

func (d *Dataplane) checkEndpoint(id string, full bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil {
		return fmt.Errorf("endpoint %s: %w: no ruleset applied", id, ErrNotProgrammed)
	}
	st := d.applied.st
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
		if err := sameRules(name, d.applied.tags(c), rules); err != nil {
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
			got, err := conn.GetSetElements(d.sets.get(s))
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
