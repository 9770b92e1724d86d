// Package nfttrace reads the nft text of dataplane.RenderText and traces
// packets through it, as the kernel would evaluate the rules, so tests
// can ask "is this connection accepted, and with which conntrack mark?"
// without a kernel (after kube-proxy's nftables tracer).
//
// It is test support: only tests import it (production binaries must not
// link it). It understands exactly the subset of nft that netseg emits;
// anything else is an error, never skipped, so a new kind of statement
// cannot pass a test unread.
package nfttrace

import (
	"bufio"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Table is a parsed table.
type Table struct {
	Name     string
	Counters map[string]bool
	Sets     map[string]*Set
	Chains   map[string]*Chain

	bases map[string][]*Chain // hook -> its base chains in priority order
}

// Set is a set or verdict map of addresses.
type Set struct {
	Name     string
	Family   int // 4 or 6
	Map      bool
	Interval bool
	Elems    []Elem
}

// Elem is one element: the addresses First..Last, and a map's verdict.
type Elem struct {
	First, Last netip.Addr
	Verdict     Verdict
}

// Chain is a chain; Hook is "" for a regular chain.
type Chain struct {
	Name     string
	Hook     string
	Device   string
	Priority int
	Rules    []*Rule
}

// Rule is one rule: its matches and statements in order, the last one
// possibly a verdict.
type Rule struct {
	Text  string
	Stmts []stmt
}

// Verdict is accept, drop, return, or jump/goto Chain.
type Verdict struct {
	Kind  string // "accept", "drop", "return", "jump", "goto"
	Chain string
}

func (v Verdict) String() string {
	if v.Chain != "" {
		return v.Kind + " " + v.Chain
	}
	return v.Kind
}

// Parse reads the text of a table. Every line must be understood.
func Parse(text string) (*Table, error) {
	t := &Table{Counters: map[string]bool{}, Sets: map[string]*Set{}, Chains: map[string]*Chain{}}
	sc := bufio.NewScanner(strings.NewReader(text))
	n := 0
	next := func() (string, bool) {
		for sc.Scan() {
			n++
			line := strings.TrimSpace(sc.Text())
			if line != "" && !strings.HasPrefix(line, "#") {
				return line, true
			}
		}
		return "", false
	}
	line, ok := next()
	if !ok {
		return nil, fmt.Errorf("empty text")
	}
	f := strings.Fields(line)
	if len(f) != 4 || f[0] != "table" || f[1] != "inet" || f[3] != "{" {
		return nil, fmt.Errorf("line %d: want \"table inet NAME {\", got %q", n, line)
	}
	t.Name = f[2]
	for {
		line, ok := next()
		if !ok {
			return nil, fmt.Errorf("table %s: no closing brace", t.Name)
		}
		if line == "}" {
			break
		}
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "{" {
			return nil, fmt.Errorf("line %d: want \"KIND NAME {\", got %q", n, line)
		}
		var body []string
		for {
			l, ok := next()
			if !ok {
				return nil, fmt.Errorf("%s %s: no closing brace", f[0], f[1])
			}
			if l == "}" {
				break
			}
			body = append(body, l)
		}
		var err error
		switch f[0] {
		case "counter":
			err = t.parseCounter(f[1], body)
		case "set", "map":
			err = t.parseSet(f[1], f[0] == "map", body)
		case "chain":
			err = t.parseChain(f[1], body)
		default:
			err = fmt.Errorf("unknown object kind %q", f[0])
		}
		if err != nil {
			return nil, fmt.Errorf("line %d: %s %s: %w", n, f[0], f[1], err)
		}
	}
	if _, ok := next(); ok {
		return nil, fmt.Errorf("line %d: text after the table", n)
	}
	if err := t.check(); err != nil {
		return nil, err
	}
	t.baseChains()
	return t, nil
}

func (t *Table) parseCounter(name string, body []string) error {
	if t.Counters[name] {
		return fmt.Errorf("defined twice")
	}
	if len(body) != 1 || body[0] != "packets 0 bytes 0" {
		return fmt.Errorf("unexpected body %q", body)
	}
	t.Counters[name] = true
	return nil
}

func (t *Table) parseSet(name string, isMap bool, body []string) error {
	if t.Sets[name] != nil {
		return fmt.Errorf("defined twice")
	}
	s := &Set{Name: name, Map: isMap}
	typ := "ipv4_addr"
	if isMap {
		typ += " : verdict"
	}
	var elems string
	for i := 0; i < len(body); i++ {
		l := body[i]
		switch {
		case l == "type "+typ:
			s.Family = 4
		case l == "type "+strings.Replace(typ, "ipv4", "ipv6", 1):
			s.Family = 6
		case l == "flags interval" && !isMap:
			s.Interval = true
		case strings.HasPrefix(l, "elements = { "):
			// Elements run on to the line that closes the brace.
			elems = strings.TrimPrefix(l, "elements = { ")
			for !strings.HasSuffix(elems, " }") {
				i++
				if i == len(body) {
					return fmt.Errorf("elements: no closing brace")
				}
				elems += " " + body[i]
			}
			elems = strings.TrimSuffix(elems, " }")
		default:
			return fmt.Errorf("unknown line %q", l)
		}
	}
	if s.Family == 0 {
		return fmt.Errorf("no type %q", typ)
	}
	if elems != "" {
		for _, e := range splitOutsideQuotes(elems, ',') {
			el, err := s.parseElem(strings.TrimSpace(e))
			if err != nil {
				return err
			}
			s.Elems = append(s.Elems, el)
		}
	}
	t.Sets[name] = s
	return nil
}

func (s *Set) parseElem(text string) (Elem, error) {
	key := text
	var e Elem
	if s.Map {
		// 10.0.0.1 comment "id" : goto chain
		k, v, ok := strings.Cut(text, " : ")
		if !ok {
			return e, fmt.Errorf("map element %q has no verdict", text)
		}
		if i := strings.Index(k, " comment \""); i >= 0 && strings.HasSuffix(k, "\"") {
			k = k[:i]
		}
		key = k
		f := strings.Fields(v)
		if len(f) != 2 || (f[0] != "goto" && f[0] != "jump") {
			return e, fmt.Errorf("map element %q: verdict %q is no jump or goto", text, v)
		}
		e.Verdict = Verdict{Kind: f[0], Chain: f[1]}
	}
	switch {
	case strings.Contains(key, "/"):
		if !s.Interval {
			return e, fmt.Errorf("prefix %q in a set without interval flag", key)
		}
		p, err := netip.ParsePrefix(key)
		if err != nil || p.Masked() != p {
			return e, fmt.Errorf("element %q: not a masked prefix", key)
		}
		e.First, e.Last = p.Addr(), lastAddr(p)
	case strings.Contains(key, "-"):
		if !s.Interval {
			return e, fmt.Errorf("range %q in a set without interval flag", key)
		}
		a, b, _ := strings.Cut(key, "-")
		first, err1 := netip.ParseAddr(a)
		last, err2 := netip.ParseAddr(b)
		if err1 != nil || err2 != nil || last.Less(first) {
			return e, fmt.Errorf("element %q: bad range", key)
		}
		e.First, e.Last = first, last
	default:
		a, err := netip.ParseAddr(key)
		if err != nil {
			return e, fmt.Errorf("element %q: %w", key, err)
		}
		e.First, e.Last = a, a
	}
	if addrFam(e.First) != s.Family || addrFam(e.Last) != s.Family {
		return e, fmt.Errorf("element %q is not of the set's family ipv%d", key, s.Family)
	}
	return e, nil
}

func (t *Table) parseChain(name string, body []string) error {
	if t.Chains[name] != nil {
		return fmt.Errorf("defined twice")
	}
	c := &Chain{Name: name}
	if len(body) > 0 && strings.HasPrefix(body[0], "type ") {
		// type filter hook forward [device "x"] priority filter; policy accept;
		f := tokens(body[0])
		if len(f) < 8 || f[1] != "filter" || f[2] != "hook" {
			return fmt.Errorf("bad hook line %q", body[0])
		}
		c.Hook = f[3]
		f = f[4:]
		if f[0] == "device" {
			d, err := strconv.Unquote(f[1])
			if err != nil {
				return fmt.Errorf("device %s: %w", f[1], err)
			}
			c.Device, f = d, f[2:]
		}
		if len(f) != 4 || f[0] != "priority" || f[2] != "policy" || f[3] != "accept;" || !strings.HasSuffix(f[1], ";") {
			return fmt.Errorf("bad hook line %q (want priority P; policy accept;)", body[0])
		}
		switch p := strings.TrimSuffix(f[1], ";"); p {
		case "filter":
			c.Priority = 0
		default:
			v, err := strconv.Atoi(p)
			if err != nil {
				return fmt.Errorf("priority %q: %w", p, err)
			}
			c.Priority = v
		}
		switch {
		case c.Hook == "ingress" && c.Device == "":
			return fmt.Errorf("ingress hook without device")
		case c.Hook != "ingress" && c.Device != "":
			return fmt.Errorf("device on hook %s", c.Hook)
		case !slices.Contains([]string{"ingress", "forward", "input", "output"}, c.Hook):
			return fmt.Errorf("unknown hook %q", c.Hook)
		}
		body = body[1:]
	}
	for _, l := range body {
		r, err := parseRule(l)
		if err != nil {
			return err
		}
		c.Rules = append(c.Rules, r)
	}
	t.Chains[name] = c
	return nil
}

// check resolves references: every set, map, chain and counter a rule or
// element names exists, and a rule's address matches have the set's
// family (the kernel refuses a mismatch).
func (t *Table) check() error {
	chain := func(v Verdict) error {
		if (v.Kind == "jump" || v.Kind == "goto") && t.Chains[v.Chain] == nil {
			return fmt.Errorf("%s to missing chain %q", v.Kind, v.Chain)
		}
		if (v.Kind == "jump" || v.Kind == "goto") && t.Chains[v.Chain].Hook != "" {
			return fmt.Errorf("%s to base chain %q", v.Kind, v.Chain)
		}
		return nil
	}
	for _, s := range t.Sets {
		for _, e := range s.Elems {
			if err := chain(e.Verdict); err != nil {
				return fmt.Errorf("map %s: %w", s.Name, err)
			}
		}
	}
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			for _, s := range r.Stmts {
				var err error
				switch s := s.(type) {
				case verdictStmt:
					err = chain(Verdict(s))
				case lookupStmt:
					set := t.Sets[s.set]
					switch {
					case set == nil:
						err = fmt.Errorf("missing set @%s", s.set)
					case set.Family != s.fam:
						err = fmt.Errorf("ipv%d address looked up in ipv%d set @%s", s.fam, set.Family, s.set)
					case set.Map != s.vmap:
						err = fmt.Errorf("@%s: set/map kind mismatch", s.set)
					}
				case counterStmt:
					if !t.Counters[string(s)] {
						err = fmt.Errorf("missing counter %q", string(s))
					}
				}
				if err != nil {
					return fmt.Errorf("chain %s rule %q: %w", c.Name, r.Text, err)
				}
			}
		}
	}
	return nil
}

func addrFam(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// tokens splits on blanks, keeping quoted strings whole.
func tokens(s string) []string {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return append(out, s) // unterminated: the parser refuses it
			}
			out = append(out, s[:end+2])
			s = s[end+2:]
			continue
		}
		end := strings.IndexAny(s, " \t")
		if end < 0 {
			end = len(s)
		}
		out = append(out, s[:end])
		s = s[end:]
	}
	return out
}

// splitOutsideQuotes splits s at sep where it is not inside a quoted
// string (an element's comment).
func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	quoted, start := false, 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '"':
			quoted = !quoted
		case s[i] == sep && !quoted:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}
