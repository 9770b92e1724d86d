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
func (d *Dataplane) CheckDrift() (string, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.applied == nil || d.last == nil {
		return "", nil // nothing applied yet: nothing to drift from
	}
	conn, err := d.dial()
	if err != nil {
		return "", fmt.Errorf("nftables connection: %w", err)
	}
	diff, err := d.diffKernel(conn, d.applied)
	if err != nil || diff == "" {
		return "", err
	}
	d.Stats.DriftRepairs.Add(1)
	if err := d.sync(d.last, true); err != nil {
		return diff, fmt.Errorf("repair drift (%s): %w", diff, err)
	}
	return diff, nil
}

func (d *Dataplane) diffKernel(conn *nftables.Conn, st *state) (string, error) {
	if _, err := conn.ListTableOfFamily(d.cfg.Table, nftables.TableFamilyINet); err != nil {
		return fmt.Sprintf("table inet %s is missing", d.cfg.Table), nil
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
		_, wanted := st.chains[c.Name]
		_, stale := st.staleChains[c.Name]
		if !wanted && !stale {
			return fmt.Sprintf("unexpected chain %s", c.Name), nil
		}
	}
	for _, name := range sortedKeys(st.chains) {
		if !seen[name] {
			return fmt.Sprintf("chain %s is missing", name), nil
		}
		rules, err := conn.GetRules(d.table, &nftables.Chain{Name: name, Table: d.table})
		if err != nil {
			return "", fmt.Errorf("list rules of %s: %w", name, err)
		}
		if err := sameRules(st.chains[name], rules); err != nil {
			return err.Error(), nil
		}
	}
	for _, name := range sortedKeys(st.sets) {
		s := st.sets[name]
		if s.foreign {
			continue // the CNI plugin's quarantine: not ours to compare
		}
		got, err := conn.GetSetElements(d.kset(s))
		if err != nil {
			return fmt.Sprintf("set %s is missing (%v)", name, err), nil
		}
		if msg := diffElems(s, got); msg != "" {
			return msg, nil
		}
	}
	return "", nil
}

// diffElems compares a set's kernel elements with the desired ones.
// Interval sets are compared by their start elements and count.
func diffElems(s *setSpec, got []nftables.SetElement) string {
	want := map[string]string{}
	for _, e := range s.elems {
		want[e.key.String()] = e.chain
	}
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
		chain, ok := want[a.String()]
		if !ok {
			return fmt.Sprintf("set %s holds unexpected element %s", s.name, a)
		}
		if s.kind == kindVmap && vmapTarget(e) != chain {
			return fmt.Sprintf("map %s sends %s to the wrong chain", s.name, a)
		}
	}
	if n != len(want) {
		return fmt.Sprintf("set %s has %d elements, want %d", s.name, n, len(want))
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
