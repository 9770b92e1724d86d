package dataplane

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// CheckDrift compares the kernel's table with what the dataplane last
// applied: every chain with its rules (by their tags), no foreign chain,
// every set with its elements. On a difference it rebuilds the table from
// the last ruleset in one batch, counts a drift repair, and returns what it
// found. It returns "" when the kernel matches.
//
// The kernel is read without the dataplane's lock, since reading a large
// table back takes long (it grows with the endpoints), so that syncs and
// endpoint checks do not wait for it: only the expectation is copied
// under the lock. A check
// during which the dataplane wrote to the kernel compares nothing and
// returns "" (what it read may be part of that write); after
// driftOvertakenMax such checks in a row, the next one holds the lock
// throughout, so that drift is found even on a node whose syncs never
// pause that long.
func (d *Dataplane) CheckDrift() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil || d.last == nil {
		return "", nil // nothing applied yet: nothing to drift from
	}
	want, writes := d.expect(d.applied, false), d.writes
	var diff string
	var err error
	if d.driftOvertaken < driftOvertakenMax {
		d.mu.Unlock()
		d.beforeDriftRead()
		diff, err = d.diffKernel(want)
		d.mu.Lock()
		if d.writes != writes {
			d.driftOvertaken++
			return "", nil
		}
	} else {
		d.beforeDriftRead()
		diff, err = d.diffKernel(want)
	}
	d.driftOvertaken = 0
	if err != nil || diff == "" {
		return "", err
	}
	d.Stats.DriftRepairs.Add(1)
	if err := d.sync(d.last, true); err != nil {
		return diff, fmt.Errorf("repair drift (%s): %w", diff, err)
	}
	return diff, nil
}

// driftOvertakenMax is how many drift checks in a row may be overtaken by
// writes before one holds the dataplane's lock throughout.
const driftOvertakenMax = 3

// expectation is what a drift check compares the kernel's table with,
// copied from an applied state so that the kernel can be read without the
// dataplane's lock.
type expectation struct {
	chains map[string][]string // wanted chain -> its rules' tags, in kernel order
	stale  map[string]bool     // chains still in the kernel, no longer wanted
	sets   []setExpectation    // by name; the CNI plugin's sets are not ours to compare
	// strict also wants no set but these, and the base chains' hooks as
	// rendered (adopt; a drift check leaves stale sets to Collect).
	strict bool
	names  map[string]bool       // strict: every set the table may hold, the plugin's too
	hooks  map[string]*chainSpec // strict: the hooked chains
}

type setExpectation struct {
	name  string
	set   nftables.Set
	vmap  bool
	elems map[netip.Addr]string // address -> the chain a verdict map sends it to
}

// expect copies what the kernel holds according to a. Call with d.mu held.
func (d *Dataplane) expect(a *applied, strict bool) *expectation {
	st := a.st
	e := &expectation{chains: make(map[string][]string, len(st.chains)), stale: make(map[string]bool, len(a.staleChains))}
	for name, c := range st.chains {
		e.chains[name] = a.tags(c)
	}
	for name := range a.staleChains {
		e.stale[name] = true
	}
	if strict {
		e.strict, e.names, e.hooks = true, make(map[string]bool, len(st.sets)), map[string]*chainSpec{}
		for name := range st.sets {
			e.names[name] = true
		}
		for name, c := range st.chains {
			if c.hook != nil {
				e.hooks[name] = c
			}
		}
	}
	for _, name := range sortedKeys(st.sets) {
		s := st.sets[name]
		if s.foreign {
			continue
		}
		elems := make(map[netip.Addr]string, len(s.elems))
		for _, el := range s.elems {
			elems[el.key] = el.chain
		}
		e.sets = append(e.sets, setExpectation{name: name, set: *d.sets.get(s), vmap: s.kind == kindVmap, elems: elems})
	}
	return e
}

func (d *Dataplane) diffKernel(want *expectation) (string, error) {
	conn, err := d.dial(nftables.AsLasting())
	if err != nil {
		return "", fmt.Errorf("nftables connection: %w", err)
	}
	defer conn.CloseLasting()
	if _, err := conn.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet); err != nil {
		return fmt.Sprintf("table inet %s is missing", d.cfg.Table), nil
	}
	if rules, err := conn.GetRules(d.guard, &nftables.Chain{Name: guardChain, Table: d.guard}); err != nil {
		return fmt.Sprintf("bridge guard (table bridge %s) is missing", d.cfg.Table), nil
	} else if n := len(guardRules(d.cfg)); len(rules) != n {
		return fmt.Sprintf("bridge guard has %d rules, want %d", len(rules), n), nil
	}
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return "", fmt.Errorf("list chains: %w", err)
	}
	seen := map[string]bool{}
	for _, c := range chains {
		if c.Table.Name != d.cfg.Table {
			continue
		}
		seen[c.Name] = true
		if _, wanted := want.chains[c.Name]; !wanted && !want.stale[c.Name] {
			return fmt.Sprintf("unexpected chain %s", c.Name), nil
		}
		if want.strict {
			if msg := diffHook(c, want.hooks[c.Name]); msg != "" {
				return msg, nil
			}
		}
	}
	if want.strict {
		sets, err := conn.GetSets(d.table)
		if err != nil {
			return "", fmt.Errorf("list sets: %w", err)
		}
		for _, ks := range sets {
			if !want.names[ks.Name] {
				return fmt.Sprintf("unexpected set %s", ks.Name), nil
			}
		}
	}
	for _, name := range sortedKeys(want.chains) {
		if !seen[name] {
			return fmt.Sprintf("chain %s is missing", name), nil
		}
		rules, err := conn.GetRules(d.table, &nftables.Chain{Name: name, Table: d.table})
		if err != nil {
			return "", fmt.Errorf("list rules of %s: %w", name, err)
		}
		if err := sameRules(name, want.chains[name], rules); err != nil {
			return err.Error(), nil
		}
	}
	for i := range want.sets {
		s := &want.sets[i]
		got, err := conn.GetSetElements(&s.set)
		if err != nil {
			return fmt.Sprintf("set %s is missing (%v)", s.name, err), nil
		}
		if msg := diffElems(s, got); msg != "" {
			return msg, nil
		}
	}
	return "", nil
}

// diffHook compares a kernel chain's hook with the rendered one's (want
// nil: a regular chain). An ingress chain's device is named in the
// chain's name, and the library does not read it back.
func diffHook(kc *nftables.Chain, want *chainSpec) string {
	switch {
	case want == nil && kc.Hooknum == nil:
		return ""
	case want == nil || kc.Hooknum == nil:
		return fmt.Sprintf("chain %s: hooked differently", kc.Name)
	case *kc.Hooknum != *want.hook || kc.Priority == nil || *kc.Priority != nftables.ChainPriority(want.prio) ||
		kc.Policy == nil || *kc.Policy != nftables.ChainPolicyAccept || (kc.Device != "" && kc.Device != want.device):
		return fmt.Sprintf("chain %s: hook, priority or policy differ", kc.Name)
	}
	return ""
}

// diffElems compares a set's kernel elements with the desired ones.
// Interval sets are compared by their start elements and count.
func diffElems(s *setExpectation, got []nftables.SetElement) string {
	n := 0
	for _, e := range got {
		if e.IntervalEnd {
			continue
		}
		n++
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			return fmt.Sprintf("set %s holds a malformed element", s.name)
		}
		chain, ok := s.elems[a]
		if !ok {
			return fmt.Sprintf("set %s holds unexpected element %s", s.name, a)
		}
		if s.vmap && vmapTarget(e) != chain {
			return fmt.Sprintf("map %s sends %s to the wrong chain", s.name, a)
		}
	}
	if n != len(s.elems) {
		return fmt.Sprintf("set %s has %d elements, want %d", s.name, n, len(s.elems))
	}
	return ""
}

// CounterValues reads the table's named counters (packets), by name.
func (d *Dataplane) CounterValues() (map[string]uint64, error) {
	conn, err := d.dial()
	if err != nil {
		return nil, fmt.Errorf("nftables connection: %w", err)
	}
	objs, err := conn.GetNamedObjects(d.table)
	if err != nil {
		return nil, fmt.Errorf("read counters of inet %s: %w", d.cfg.Table, err)
	}
	// The bridge guard's counter; its table is missing only before the
	// first sync or after a drift the drift check reports.
	if gobjs, err := conn.GetNamedObjects(d.guard); err == nil {
		objs = append(objs, gobjs...)
	}
	out := map[string]uint64{}
	for _, o := range objs {
		if no, ok := o.(*nftables.NamedObj); ok {
			if c, ok := no.Obj.(*expr.Counter); ok {
				out[no.Name] = c.Packets
			}
		}
	}
	return out, nil
}

// vmapTarget returns the chain a vmap element jumps or goes to. The
// library hands a read element's verdict back as the raw nested
// NFTA_DATA_VERDICT attributes (code, chain) in Val.
func vmapTarget(e nftables.SetElement) string {
	if e.VerdictData != nil {
		return e.VerdictData.Chain
	}
	ad, err := netlink.NewAttributeDecoder(e.Val)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(ad.Bytes()), "\x00")
		}
	}
	return ""
}
