package dataplane

import (
	"net/netip"
	"slices"
)

// fillInterval puts prefixes into an interval set as non-overlapping
// [start, end) ranges: the kernel rejects overlapping intervals, and a pod
// address is often also inside a zone's CIDR, so overlapping prefixes are
// merged. Adjacent ones are not: the kernel accepts them, and keeping each
// pod's /32 its own interval makes adding a pod a pure element addition
// (no delete, which costs the commit an RCU grace period).
func fillInterval(s *setSpec, prefixes []netip.Prefix) {
	merged := mergePrefixes(prefixes)
	if len(s.elems) == 0 {
		s.elems = make(map[elemKey]elemSpec, len(merged))
	}
	for _, iv := range merged {
		s.elems[elemKey{iv.key, iv.keyEnd}] = iv
	}
}

func mergePrefixes(prefixes []netip.Prefix) []elemSpec {
	type rng struct {
		first, last netip.Addr
	}
	rs := make([]rng, 0, len(prefixes))
	for _, p := range prefixes {
		p = p.Masked()
		rs = append(rs, rng{p.Addr(), lastAddr(p)})
	}
	slices.SortFunc(rs, func(a, b rng) int { return a.first.Compare(b.first) })
	var merged []rng
	for _, r := range rs {
		if n := len(merged); n > 0 {
			m := &merged[n-1]
			// Overlapping (not merely adjacent) ranges merge.
			if m.last.IsValid() && m.last.Less(r.first) {
				merged = append(merged, r)
				continue
			}
			if m.last.Less(r.last) {
				m.last = r.last
			}
			continue
		}
		merged = append(merged, r)
	}
	out := make([]elemSpec, 0, len(merged))
	for _, m := range merged {
		// Next of the all-ones address is invalid: the range runs to the
		// end of the address space and needs no end element.
		out = append(out, elemSpec{key: m.first, keyEnd: m.last.Next()})
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// setDelta is how a set's rendering differs from the one it was derived
// from: the sync sends these elements instead of comparing the two sets.
type setDelta struct {
	from     *setSpec
	add, del []elemKey // sorted
}

// keyCursor walks the interval keys of one family's prefixes in a list,
// normalized as byFamily does (unmapped, masked), and checks they are
// sorted and pairwise disjoint: each is then one element of the set.
type keyCursor struct {
	ps      []netip.Prefix
	fam     int
	i       int
	prevEnd netip.Addr // exclusive end of the last key (invalid: none yet, or the end of the space)
	started bool
	bad     bool // not sorted and disjoint
}

// next returns the next key; ok is false at the end or when the keys are
// not sorted and disjoint (then c.bad).
func (c *keyCursor) next() (k elemKey, ok bool) {
	for c.i < len(c.ps) {
		p := c.ps[c.i]
		c.i++
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		if famOf(p.Addr()) != c.fam {
			continue
		}
		if c.started && (!c.prevEnd.IsValid() || p.Addr().Less(c.prevEnd)) {
			c.bad = true
			return elemKey{}, false
		}
		k = elemKey{first: p.Addr(), end: lastAddr(p).Next()}
		c.started, c.prevEnd = true, k.end
		return k, true
	}
	return elemKey{}, false
}

// deltaOf compares the keys of family fam in old and now when both are
// sorted and disjoint (one element per prefix); ok false otherwise.
func deltaOf(old, now []netip.Prefix, fam int) (add, del []elemKey, ok bool) {
	o, n := keyCursor{ps: old, fam: fam}, keyCursor{ps: now, fam: fam}
	ok1, ok2 := false, false
	var ko, kn elemKey
	ko, ok1 = o.next()
	kn, ok2 = n.next()
	for ok1 || ok2 {
		switch c := ko.compare(kn); {
		case !ok2 || (ok1 && c < 0):
			del = append(del, ko)
			ko, ok1 = o.next()
		case !ok1 || c > 0:
			add = append(add, kn)
			kn, ok2 = n.next()
		default:
			ko, ok1 = o.next()
			kn, ok2 = n.next()
		}
	}
	return add, del, !o.bad && !n.bad
}

// deriveIntervals renders the interval sets prev[4] and prev[6], rendered
// for the inputs old, for the inputs now, when old and now are sorted and
// disjoint (prev's sets then hold one element per prefix of old, as
// fillInterval merges nothing there): the sets change by
// the prefixes that came and went, and the sync sends only those. A
// zone's set at a thousand endpoints is otherwise sorted, merged and
// compared whole on every pod's arrival. The new sets take over prev's
// element maps (a set's previous rendering is not used once the next is
// derived: a failed sync rebuilds the table). It returns false, changing
// nothing, when the shortcut does not apply.
func deriveIntervals(prev [7]*setSpec, old, now []netip.Prefix) (out [7]*setSpec, ok bool) {
	var deltas [7]setDelta
	for _, fam := range []int{4, 6} {
		if prev[fam] == nil {
			return out, false
		}
		add, del, ok := deltaOf(old, now, fam)
		if !ok {
			return out, false
		}
		deltas[fam] = setDelta{from: prev[fam], add: add, del: del}
	}
	for _, fam := range []int{4, 6} {
		d, p := deltas[fam], prev[fam]
		if len(d.add) == 0 && len(d.del) == 0 {
			out[fam] = p
			continue
		}
		s := &setSpec{name: p.name, fam: p.fam, kind: p.kind, elems: p.elems, delta: &d}
		p.elems = nil
		for _, k := range d.del {
			delete(s.elems, k)
		}
		for _, k := range d.add {
			s.elems[k] = elemSpec{key: k.first, keyEnd: k.end}
		}
		out[fam] = s
	}
	return out, true
}
