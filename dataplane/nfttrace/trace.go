package nfttrace

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/netseg/netseg/api/segment"
)

// Packet is the first packet of a connection, or a later one.
type Packet struct {
	Src, Dst netip.Addr       // of one family
	Proto    segment.Protocol // what meta l4proto matches
	DPort    uint16           // tcp, udp, sctp
	ICMPType uint8            // icmp, ipv6-icmp
	// CtState is the conntrack state: "new" (the default), "established",
	// "related" or "invalid".
	CtState string
	// CtMark is the connection's mark before this packet.
	CtMark uint32
	// Hook is "forward" (the default), "input" or "output".
	Hook string
	// Iif is the device the packet came in on: the ingress chains bound
	// to it run first. Empty for output, or for a packet from elsewhere.
	Iif string
}

// Result is what became of a packet.
type Result struct {
	Verdict  string // "accept" or "drop"
	CtMark   uint32 // the connection's mark after it
	Mark     uint32 // the packet's mark
	Counters []string
	Logs     []string // log prefixes
	// Path lists the rules that matched, "chain: rule", for messages.
	Path []string
}

func (r Result) String() string {
	return fmt.Sprintf("%s ct mark 0x%08x via\n\t%s", r.Verdict, r.CtMark, strings.Join(r.Path, "\n\t"))
}

// baseChains sorts the base chains of each hook by priority (then name).
func (t *Table) baseChains() {
	t.bases = map[string][]*Chain{}
	for _, c := range t.Chains {
		if c.Hook != "" {
			t.bases[c.Hook] = append(t.bases[c.Hook], c)
		}
	}
	for _, cs := range t.bases {
		slices.SortFunc(cs, func(a, b *Chain) int {
			if a.Priority != b.Priority {
				return a.Priority - b.Priority
			}
			return strings.Compare(a.Name, b.Name)
		})
	}
}

// maxJumps is the kernel's jump stack (NFT_JUMP_STACK_SIZE).
const maxJumps = 16

// Trace runs p through the base chains its path meets: the ingress chains
// of p.Iif, then those of p.Hook, each in priority order, and returns
// the verdict. A malformed packet or a rule the tracer cannot evaluate is
// an error.
func (t *Table) Trace(p Packet) (Result, error) {
	if p.CtState == "" {
		p.CtState = "new"
	}
	if p.Hook == "" {
		p.Hook = "forward"
	}
	if !p.Src.IsValid() || !p.Dst.IsValid() || p.Src.Is4() != p.Dst.Is4() || p.Src.Is4In6() || p.Dst.Is4In6() {
		return Result{}, fmt.Errorf("packet %s -> %s: addresses must be valid and of one family", p.Src, p.Dst)
	}
	if p.Hook == "output" && p.Iif != "" {
		return Result{}, fmt.Errorf("an output packet has no input device")
	}
	if p.Hook != "forward" && p.Hook != "input" && p.Hook != "output" {
		return Result{}, fmt.Errorf("unknown hook %q", p.Hook)
	}
	res := &Result{CtMark: p.CtMark}
	var bases []*Chain
	for _, c := range t.bases["ingress"] {
		if c.Device == p.Iif && p.Iif != "" {
			bases = append(bases, c)
		}
	}
	bases = append(bases, t.bases[p.Hook]...)
	for _, c := range bases {
		accepted, err := t.run(c, &p, res)
		if err != nil {
			return Result{}, err
		}
		if !accepted {
			res.Verdict = "drop"
			return *res, nil
		}
	}
	res.Verdict = "accept"
	return *res, nil
}

// run evaluates a base chain: jump pushes the place after it, goto does
// not, return (or the end of a chain) pops, and with nothing to pop the
// base chain's policy (accept) applies.
func (t *Table) run(base *Chain, p *Packet, res *Result) (bool, error) {
	type frame struct {
		c *Chain
		i int
	}
	var stack []frame
	c, i := base, 0
	for steps := 0; ; steps++ {
		if steps > 100000 {
			return false, fmt.Errorf("chain %s: evaluation does not end", base.Name)
		}
		if i == len(c.Rules) {
			if len(stack) == 0 {
				return true, nil
			}
			c, i = stack[len(stack)-1].c, stack[len(stack)-1].i
			stack = stack[:len(stack)-1]
			continue
		}
		r := c.Rules[i]
		i++
		v, matched, err := t.eval(r, p, res)
		if err != nil {
			return false, fmt.Errorf("chain %s: %w", c.Name, err)
		}
		if !matched {
			continue
		}
		res.Path = append(res.Path, c.Name+": "+r.Text)
		switch v.Kind {
		case "":
		case "accept":
			return true, nil
		case "drop":
			return false, nil
		case "return":
			if len(stack) == 0 {
				return true, nil
			}
			c, i = stack[len(stack)-1].c, stack[len(stack)-1].i
			stack = stack[:len(stack)-1]
		case "jump", "goto":
			if v.Kind == "jump" {
				if len(stack) == maxJumps {
					return false, fmt.Errorf("chain %s: more than %d nested jumps", c.Name, maxJumps)
				}
				stack = append(stack, frame{c, i})
			}
			c, i = t.Chains[v.Chain], 0
		default:
			return false, fmt.Errorf("chain %s: unknown verdict %q", c.Name, v.Kind)
		}
	}
}

// eval runs one rule's statements in order and returns its verdict, if
// it matched and has one.
func (t *Table) eval(r *Rule, p *Packet, res *Result) (Verdict, bool, error) {
	addr := func(src bool) netip.Addr {
		if src {
			return p.Src
		}
		return p.Dst
	}
	fam := 4
	if p.Src.Is6() {
		fam = 6
	}
	for _, s := range r.Stmts {
		switch s := s.(type) {
		case familyStmt:
			if int(s) != fam {
				return Verdict{}, false, nil
			}
		case l4Stmt:
			if segment.Protocol(s) != p.Proto {
				return Verdict{}, false, nil
			}
		case dportStmt:
			if p.DPort < s.first || p.DPort > s.last {
				return Verdict{}, false, nil
			}
		case icmpTypeStmt:
			if p.ICMPType < s.first || p.ICMPType > s.last {
				return Verdict{}, false, nil
			}
		case ctStateStmt:
			if !slices.Contains(s, p.CtState) {
				return Verdict{}, false, nil
			}
		case ctMarkMatchStmt:
			if (res.CtMark&s.mask != s.value) != s.neq {
				return Verdict{}, false, nil
			}
		case addrNotStmt:
			if s.p.Contains(addr(s.src)) != s.in {
				return Verdict{}, false, nil
			}
		case lookupStmt:
			e, found := t.Sets[s.set].lookup(addr(s.src))
			if s.vmap {
				if !found {
					return Verdict{}, false, nil
				}
				return e.Verdict, true, nil
			}
			if found == s.not {
				return Verdict{}, false, nil
			}
		case ctMarkStmt:
			m := uint32(0)
			if s.keep {
				m = res.CtMark & s.and
			}
			res.CtMark = m | s.or
		case metaMarkFromCtStmt:
			res.Mark = res.CtMark
		case metaMarkOrStmt:
			res.Mark |= uint32(s)
		case counterStmt:
			res.Counters = append(res.Counters, string(s))
		case limitOverStmt:
			// One traced packet never exceeds a rate limit.
			return Verdict{}, false, nil
		case logStmt:
			res.Logs = append(res.Logs, string(s))
		case verdictStmt:
			return Verdict(s), true, nil
		default:
			return Verdict{}, false, fmt.Errorf("rule %q: cannot evaluate %T", r.Text, s)
		}
	}
	return Verdict{}, true, nil
}

func (s *Set) lookup(a netip.Addr) (Elem, bool) {
	for _, e := range s.Elems {
		if !a.Less(e.First) && !e.Last.Less(a) {
			return e, true
		}
	}
	return Elem{}, false
}
