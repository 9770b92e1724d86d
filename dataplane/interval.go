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
