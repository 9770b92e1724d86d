package dataplane

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/netseg/netseg/api/segment"
)

// Decider gives the conntrack mark a connection gets under the policy in
// force, from its original direction (ICMP: dport 0); old is its mark now
// (0: netseg did not decide it, such as a connection of a container that
// started unsegmented). ok false leaves the entry as it is.
type Decider func(old Mark, src, dst netip.Addr, proto uint8, dport uint16) (m Mark, ok bool)

// Remarked counts what Remark did.
type Remarked struct {
	Checked  int // entries decided again (the Decider said ok)
	Changed  int // entries whose mark was rewritten
	Revoked  int // of those: allowed before, denied now (their packets are dropped from now on)
	Restored int // of those: denied before, allowed now
	Gone     int // entries that ended between the dump and the update
}

// Remark decides every connection conntrack tracks in the namespace
// again, as decide says, and rewrites the mark of those whose decision
// changed. The forward chain accepts established packets
// only while their mark's enforced verdict is not Deny: a connection the
// policy in force denies (a new Deny, a quarantine) stops at its next
// packet, whichever direction, and that packet is logged with the rule
// that denies it. Would-deny (staged) does not cut.
func (n *Namespace) Remark(decide Decider) (Remarked, error) {
	var r Remarked
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(n.fd)})
	if err != nil {
		return r, fmt.Errorf("remark: dial conntrack: %w", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		return r, fmt.Errorf("remark: dump conntrack: %w", err)
	}
	for _, f := range flows {
		t := f.TupleOrig
		dport := t.Proto.DestinationPort
		if t.Proto.ICMPv4 || t.Proto.ICMPv6 {
			dport = 0
		}
		m, ok := decide(Mark(f.Mark), t.IP.SourceAddress.Unmap(), t.IP.DestinationAddress.Unmap(), t.Proto.Protocol, dport)
		if !ok {
			continue
		}
		r.Checked++
		if uint32(m) == f.Mark {
			continue
		}
		if err := c.Update(conntrack.Flow{TupleOrig: t, Mark: uint32(m)}); err != nil {
			r.Gone++ // it ended meanwhile (ENOENT); nothing to revoke
			continue
		}
		r.Changed++
		was, now := Mark(f.Mark).EnforcedDeny(), m.EnforcedDeny()
		switch {
		case !was && now:
			r.Revoked++
		case was && !now:
			r.Restored++
		}
	}
	return r, nil
}

// EnforcedDeny reports whether the enforced half of the mark says Deny.
func (m Mark) EnforcedDeny() bool { return uint32(m)&enforcedVerdictMask == enforcedDenyBits }

// The enforced half's verdict bits, and their value for Deny.
const (
	enforcedVerdictMask = 3 << 14
	enforcedDenyBits    = uint32(segment.Deny) << 14
)

// ReleaseFailOpen removes addrs from the plugin's fail-open sets (once the
// agent has adopted the container they belong to, its rules decide its
// traffic). Addresses not in the sets are skipped.
func (d *Dataplane) ReleaseFailOpen(addrs []netip.Addr) error {
	if len(addrs) == 0 {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	conn, err := d.dial()
	if err != nil {
		return fmt.Errorf("release fail-open addresses: %w", err)
	}
	d.writes++
	for _, fam := range []int{4, 6} {
		s := &nftables.Set{Table: d.table, Name: setCNIFailOpen.name(fam), KeyType: nftables.TypeIPAddr}
		if fam == 6 {
			s.KeyType = nftables.TypeIP6Addr
		}
		got, err := conn.GetSetElements(s)
		if err != nil {
			return fmt.Errorf("release fail-open addresses: list %s: %w", s.Name, err)
		}
		present := map[netip.Addr]bool{}
		for _, e := range got {
			if a, ok := netip.AddrFromSlice(e.Key); ok {
				present[a.Unmap()] = true
			}
		}
		var del []nftables.SetElement
		for _, a := range addrs {
			if a = a.Unmap(); present[a] && (a.Is4() == (fam == 4)) {
				del = append(del, nftables.SetElement{Key: a.AsSlice()})
			}
		}
		if len(del) > 0 {
			if err := conn.SetDeleteElements(s, del); err != nil {
				return fmt.Errorf("release fail-open addresses: %w", err)
			}
		}
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("release fail-open addresses: %w", err)
	}
	return nil
}
