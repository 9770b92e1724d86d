package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"

	"github.com/cespare/xxhash/v2"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/netseg/netseg/api/segment"
)

type setKind uint8

const (
	kindAddr     setKind = iota // hash set of addresses
	kindInterval                // interval set of prefixes
	kindVmap                    // address -> verdict (goto chain)
)

// setSpec is one kernel set as desired.
type setSpec struct {
	name  string
	fam   int
	kind  setKind
	elems map[elemKey]elemSpec
	// foreign sets are created by the dataplane but filled by someone else
	// (the CNI plugin's quarantine): their elements are never diffed,
	// checked for drift, or lost by a full resync.
	foreign bool
	// delta, when set, is the difference from delta.from (deriveInterval).
	delta *setDelta
}

// elemKey identifies a set element: an address, or an interval [first,
// end) (end invalid: to the end of the address space). Addresses, not
// their text: a sync at a thousand endpoints formats no address.
type elemKey struct{ first, end netip.Addr }

func (k elemKey) compare(o elemKey) int {
	if c := k.first.Compare(o.first); c != 0 {
		return c
	}
	return k.end.Compare(o.end)
}

type elemSpec struct {
	key, keyEnd netip.Addr // keyEnd: exclusive end for intervals (invalid = to the end of the space)
	chain       string     // vmap target
	comment     string
}

// chainSpec is one kernel chain as desired.
type chainSpec struct {
	name   string
	hook   *nftables.ChainHook // nil: a regular chain
	prio   int32
	device string // ingress hook device
	rules  []*rb
	hash   string // over hook, device and rule texts
	// dispatch chains (one per endpoint and direction) hold one live rule,
	// "goto <policy chain>"; a change inserts the new rule at the head and
	// leaves the old ones, shadowed, for Collect.
	dispatch bool
	// target is the policy chain a dispatch chain goes to.
	target string
}

// state is a rendering: the desired content of the table, and the memo
// the next render starts from. Specs are not modified once rendered
// (render reuses the memo's unchanged ones as they are), with two
// exceptions that belong to the memo: a derived interval set takes over
// its predecessor's element map (deriveIntervals), and a render takes over
// the maps of the rendering before its predecessor (renderMaps). A
// rendering is therefore the memo of one render only (spent marks it; a
// second render from it starts from nothing), and a failed sync starts
// over from none. What the kernel holds is the plan's business (applied),
// which reads a rendering's content, never its memo.
type state struct {
	// The desired content: sets and chains by name, and for each endpoint
	// id the chains it needs (for CHECK).
	sets           map[string]*setSpec
	chains         map[string]*chainSpec
	endpointChains map[string][]string

	// The memo. byKey: policy key -> chain name; made: policy key -> the
	// chains rendered for it (kept for the next render); cache: the
	// previous render's made, reused instead of rendering again.
	byKey       map[policyKey]string
	made, cache map[policyKey][]*chainSpec
	keys        map[policyLists]policyKey // this render's policy keys by lists
	// inputs are the peer sets' prefixes as given, to reuse a set's
	// rendering when they did not change.
	inputs map[string][]netip.Prefix
	// epNames: endpoint id -> its dispatch chains' names (epo_, epi_).
	epNames map[string][2]string
	// peerNames: peer set -> its kernel names by family, taken from the
	// previous render when the peer was already there.
	peerNames map[string][7]string
	// guard are the bridge guard's sets (guardNames order), in a table of
	// their own.
	guard []*setSpec
	// err is the first name collision met while rendering chains.
	err error
	// own are the maps above that a render fills from nothing, and spare
	// the previous rendering's, which the next render reuses.
	own, spare renderMaps
	// cfg is the config the base chains were rendered for.
	cfg Config
	// spent: a render took this rendering's memo; a second render from it
	// starts from nothing rather than from element maps handed on.
	spent bool
}

// renderMaps are the maps a render fills from nothing: the chains, the
// endpoints' names and chains, and the elements of the address maps. A
// render reuses, cleared, those of the rendering before its predecessor:
// nothing reads them once the predecessor is applied (a failed sync
// starts over from no state). They grow with the endpoints, and filling
// new ones on every sync was most of a render's allocation.
type renderMaps struct {
	chains         map[string]*chainSpec
	endpointChains map[string][]string
	epNames        map[string][2]string
	addrMaps       [7][3]map[elemKey]elemSpec // by family: egress, ingress, local
}

// reuse returns m's maps cleared, and new ones (sized for n endpoints and
// perFam addresses) where m has none.
func (m renderMaps) reuse(n int, perFam [7]int) renderMaps {
	if m.chains == nil {
		m.chains = make(map[string]*chainSpec, 2*n+64)
		m.endpointChains = make(map[string][]string, n)
		m.epNames = make(map[string][2]string, n)
	}
	clear(m.chains)
	clear(m.endpointChains)
	clear(m.epNames)
	for _, fam := range []int{4, 6} {
		for i := range m.addrMaps[fam] {
			if m.addrMaps[fam][i] == nil {
				m.addrMaps[fam][i] = make(map[elemKey]elemSpec, perFam[fam])
			}
			clear(m.addrMaps[fam][i])
		}
	}
	return m
}

// Config tunes the rendered ruleset.
type Config struct {
	// Table is the inet table netseg owns. Default "netseg".
	Table string
	// NFLOGGroup receives the first packets of denied connections (and,
	// with LogAccepted, one packet per accepted connection). Default 100.
	NFLOGGroup uint16
	// LogAccepted also sends each accepted connection's first packet to
	// NFLOG. Off by default: accepted and would-deny connections reach the
	// flow log through conntrack events, which carry the same decision
	// (the ct mark) plus counters, and copying every new connection to
	// userspace a second time costs a busy node much of its connection
	// rate (docs/flow-log.md).
	LogAccepted bool
	// LogRate and LogBurst cap NFLOG messages per second per verdict kind;
	// packets over the cap are still decided, not logged, and counted.
	// Defaults 20000 and 10000.
	LogRate  uint64
	LogBurst uint32
	// DenyHostAccess, when true, makes connections from the node itself to
	// its containers pass the containers' ingress rules like any outside
	// source. By default the node may reach its containers (kubelet probes).
	DenyHostAccess bool
	// Priority of the base chains on the forward, input and output hooks.
	// Default 0 (filter).
	Priority int32
	// ForwardMark is the packet mark bit the forward chain sets on every
	// packet it sees, for the bridge guard to tell a bridged packet the
	// forward chain decided from one that bypassed it (br_netfilter off).
	// The guard clears it again; routed packets keep it. Default
	// 0x00400000, a bit kube-proxy and flannel leave free; set another
	// when a component of the node uses that one.
	ForwardMark uint32
}

// Defaults fills unset fields.
func (c Config) Defaults() Config {
	if c.Table == "" {
		c.Table = "netseg"
	}
	if c.NFLOGGroup == 0 {
		c.NFLOGGroup = 100
	}
	if c.LogRate == 0 {
		c.LogRate = 20000
	}
	if c.ForwardMark == 0 {
		c.ForwardMark = 0x00400000
	}
	if c.LogBurst == 0 {
		c.LogBurst = 10000
	}
	return c
}

// render computes the desired table content: the same ruleset gives the
// same content, whatever prev. prev, the previous rendering, is a memo:
// what did not change is reused from it instead of rendered again, and
// render consumes it (see state).
func render(cfg Config, rs *Ruleset, prev *state) (*state, error) {
	if err := rs.Validate(); err != nil {
		return nil, fmt.Errorf("invalid ruleset: %w", err)
	}
	if prev != nil && prev.spent {
		prev = nil // its memo went to an earlier render: start from nothing
	}
	var perFam [7]int // maps sized up front: growing them was a tenth of a sync
	for _, ep := range rs.Endpoints {
		for _, ip := range ep.IPs {
			perFam[famOf(ip.Unmap())]++
		}
	}
	var reused renderMaps
	if prev != nil {
		reused, prev.spare = prev.spare, renderMaps{} // taken once: a second render from prev gets new maps
	}
	own := reused.reuse(len(rs.Endpoints), perFam)
	st := &state{sets: map[string]*setSpec{}, chains: own.chains, endpointChains: own.endpointChains,
		inputs: map[string][]netip.Prefix{}, epNames: own.epNames,
		peerNames: make(map[string][7]string, len(rs.Sets)), byKey: map[policyKey]string{}, made: map[policyKey][]*chainSpec{}, keys: map[policyLists]policyKey{}, own: own}
	if prev != nil {
		st.cache = prev.made
		st.spare = prev.own
		prev.spent = true
	}
	for _, fs := range fixedSets {
		for _, fam := range []int{4, 6} {
			st.addSet(fs.name(fam), fam, fs.kind).foreign = fs.foreign
		}
	}
	st.addrElems(setQuarantine, rs.Quarantine)
	st.addrElems(setNode, rs.Node)
	st.intervalSets(prev, managedInputs, rs.Managed, setManaged.names)
	st.guardSets(prev, rs.Managed)
	for _, s := range rs.Sets {
		names, ok := [7]string{}, false
		if prev != nil {
			names, ok = prev.peerNames[s.Name]
		}
		if !ok {
			names = peerSetNames(s.Name)
		}
		for _, fam := range []int{4, 6} {
			if _, taken := st.sets[names[fam]]; taken {
				return nil, errNameCollision("set", names[fam], "peer "+s.Name, "another set")
			}
		}
		st.peerNames[s.Name] = names
		st.intervalSets(prev, s.Name, s.Prefixes, names)
	}
	st.cfg = cfg
	if prev != nil && prev.cfg == cfg {
		for _, bc := range baseChains { // specs are not modified once applied
			st.chains[bc.name] = prev.chains[bc.name]
		}
	} else {
		for _, c := range renderBaseChains(cfg) {
			st.addChain(c)
		}
	}
	maps := [7][3]*setSpec{}
	for _, fam := range []int{4, 6} {
		maps[fam] = [3]*setSpec{st.sets[setEgress.name(fam)], st.sets[setIngress.name(fam)], st.sets[setLocal.name(fam)]}
		for i, m := range maps[fam] {
			m.elems = own.addrMaps[fam][i]
		}
	}
	for _, ep := range rs.Endpoints {
		out := st.policyChain(dirOut, ep.Egress, false)
		in := st.policyChain(dirIn, ep.Ingress, true)
		// Each endpoint dispatches through its own chains, whose one live
		// rule goes to the (shared) policy chain: a policy change inserts a
		// new head rule instead of re-pointing the map element.
		names := st.dispatchNames(prev, ep.ID)
		epo, epi := names[0], names[1]
		if _, taken := st.chains[epo]; taken {
			return nil, errNameCollision("chain", epo, "endpoint "+ep.ID, "another endpoint")
		}
		st.addChain(st.dispatchChain(prev, epo, out))
		st.addChain(st.dispatchChain(prev, epi, in))
		st.endpointChains[ep.ID] = append(st.endpointChains[ep.ID], epo, epi, out, in)
		for _, ip := range ep.IPs {
			ip = ip.Unmap()
			fam := famOf(ip)
			k := elemKey{first: ip}
			maps[fam][0].elems[k] = elemSpec{key: ip, chain: epo, comment: ep.ID}
			maps[fam][1].elems[k] = elemSpec{key: ip, chain: epi, comment: ep.ID}
			maps[fam][2].elems[k] = elemSpec{key: ip}
		}
		if ep.HostIface != "" {
			name := st.antiSpoofChain(ep)
			st.endpointChains[ep.ID] = append(st.endpointChains[ep.ID], name)
		}
	}
	if st.err != nil {
		return nil, st.err
	}
	for _, c := range st.chains {
		if c.hash == "" {
			c.hash = chainHash(c)
		}
	}
	return st, nil
}

// managedInputs keys the managed prefixes in state.inputs (peer set names
// are never empty).
const managedInputs = ""

// intervalSets renders the interval sets names[4] and names[6] holding
// prefixes (input: their key in state.inputs). Sets whose prefixes did not
// change since prev are reused (specs are not modified once applied);
// sets whose prefixes changed by a few are derived from prev's.
func (st *state) intervalSets(prev *state, input string, prefixes []netip.Prefix, names [7]string) {
	st.inputs[input] = prefixes
	if old, known := prevInputs(prev, input); known {
		before := [7]*setSpec{4: prev.sets[names[4]], 6: prev.sets[names[6]]}
		if before[4] != nil && before[6] != nil && slices.Equal(old, prefixes) {
			st.sets[names[4]], st.sets[names[6]] = before[4], before[6]
			return
		}
		if sets, ok := deriveIntervals(before, old, prefixes); ok {
			st.sets[names[4]], st.sets[names[6]] = sets[4], sets[6]
			return
		}
	}
	byFam := byFamily(prefixes)
	for _, fam := range []int{4, 6} {
		fillInterval(st.addSet(names[fam], fam, kindInterval), byFam[fam])
	}
}

// guardNames are the bridge guard's sets, in the order of state.guard.
var guardNames = [4]struct {
	fs  famSet
	fam int
}{{setGuardNets, 4}, {setGuardNets, 6}, {setGuardHosts, 4}, {setGuardHosts, 6}}

// guardSets renders the bridge guard's copy of the pod networks: taken
// over from prev when the managed sets were, else split into networks
// and single addresses.
func (st *state) guardSets(prev *state, managed []netip.Prefix) {
	m4, m6 := setManaged.name(4), setManaged.name(6)
	if prev != nil && prev.guard != nil && st.sets[m4] == prev.sets[m4] && st.sets[m6] == prev.sets[m6] {
		st.guard = prev.guard
		return
	}
	if st.deriveGuard(prev) {
		return
	}
	st.guard = make([]*setSpec, len(guardNames))
	for i, g := range guardNames {
		st.guard[i] = &setSpec{name: g.fs.name(g.fam), fam: g.fam, kind: g.fs.kind, elems: map[elemKey]elemSpec{}}
	}
	byFam := byFamily(managed)
	for i, fam := range []int{4, 6} {
		var nets []netip.Prefix
		hosts := st.guard[2+i]
		for _, p := range byFam[fam] {
			if p.IsSingleIP() {
				hosts.elems[elemKey{first: p.Addr()}] = elemSpec{key: p.Addr()}
			} else {
				nets = append(nets, p)
			}
		}
		fillInterval(st.guard[i], nets)
	}
}

// deriveGuard renders the guard's sets from prev's by the delta of the
// managed sets, when render derived those (deriveIntervals: one element
// per prefix): a pod's arrival is then one element, not a copy of every
// pod's. The new sets take over prev's element maps, as deriveIntervals
// does. It returns false, changing nothing, when there is no such delta.
func (st *state) deriveGuard(prev *state) bool {
	if prev == nil || len(prev.guard) != len(guardNames) {
		return false
	}
	var deltas [7]*setDelta
	for _, fam := range []int{4, 6} {
		name := setManaged.name(fam)
		now, before := st.sets[name], prev.sets[name]
		switch {
		case now == before:
			deltas[fam] = &setDelta{from: before}
		case now.delta != nil && now.delta.from == before:
			deltas[fam] = now.delta
		default:
			return false
		}
	}
	// One element per prefix: a key one address wide is a host.
	host := func(k elemKey) bool { return k.first.Next() == k.end }
	st.guard = make([]*setSpec, len(guardNames))
	for i, g := range guardNames {
		p, d := prev.guard[i], deltas[g.fam]
		var add, del []elemKey
		for _, k := range d.add {
			if host(k) == (g.fs.kind == kindAddr) {
				add = append(add, g.fs.key(k))
			}
		}
		for _, k := range d.del {
			if host(k) == (g.fs.kind == kindAddr) {
				del = append(del, g.fs.key(k))
			}
		}
		if len(add) == 0 && len(del) == 0 {
			st.guard[i] = p
			continue
		}
		s := &setSpec{name: p.name, fam: p.fam, kind: p.kind, elems: p.elems, delta: &setDelta{from: p, add: add, del: del}}
		p.elems = nil
		for _, k := range del {
			delete(s.elems, k)
		}
		for _, k := range add {
			s.elems[k] = elemSpec{key: k.first, keyEnd: k.end}
		}
		st.guard[i] = s
	}
	return true
}

// addrElems puts each address into its family's set of fs.
func (st *state) addrElems(fs famSet, addrs []netip.Addr) {
	for _, a := range addrs {
		a = a.Unmap()
		st.sets[fs.name(famOf(a))].elems[elemKey{first: a}] = elemSpec{key: a}
	}
}

func (st *state) addSet(name string, fam int, kind setKind) *setSpec {
	s := &setSpec{name: name, fam: fam, kind: kind, elems: map[elemKey]elemSpec{}}
	st.sets[name] = s
	return s
}

func (st *state) addChain(c *chainSpec) { st.chains[c.name] = c }

func prevInputs(prev *state, name string) ([]netip.Prefix, bool) {
	if prev == nil || prev.inputs == nil {
		return nil, false
	}
	p, ok := prev.inputs[name]
	return p, ok
}

// dispatchChain renders "goto target" in the named dispatch chain, reusing
// the previous sync's spec when it already went there.
func (st *state) dispatchChain(prev *state, name, target string) *chainSpec {
	if prev != nil {
		if c, ok := prev.chains[name]; ok && c.dispatch && c.target == target {
			return c // unchanged: specs are not modified once applied
		}
	}
	c := &chainSpec{name: name, dispatch: true, target: target, rules: []*rb{rule().verdict(expr.VerdictGoto, target)}}
	c.hash = chainHash(c)
	return c
}

// dispatchNames names an endpoint's dispatch chains after a short hash
// of its id, taken from the previous sync when the endpoint was already
// there (a memo that lives as long as the endpoints it covers).
func (st *state) dispatchNames(prev *state, id string) [2]string {
	names, ok := [2]string{}, false
	if prev != nil {
		names, ok = prev.epNames[id]
	}
	if !ok {
		names = dispatchChainNames(id)
	}
	st.epNames[id] = names
	return names
}

// policyChain renders an endpoint's rule lists into chains named after
// their content, so endpoints with the same compiled policy share them and
// endpoint churn changes only vmap elements. It returns the entry chain.
//
// Without a staged pass each rule stamps both halves of the mark:
//
//	ip daddr @p_zone_web_4 meta l4proto tcp th dport 443 ct mark set 0x40054005 goto allow
//
// With one, the entry chain first jumps to the staged chain, whose rules
// write the staged half and return, then each enforced rule writes its half:
//
//	jump out_3f2a..._s
//	ip daddr @p_zone_db_4 ct mark set ct mark and 0xffff0000 or 0x00004007 goto allow
//
// A Delegate rule is "goto <tail chain>"; a list that runs out continues
// with its tail, and a tail that runs out denies (fail closed).
func (st *state) policyChain(dir string, p Policy, ingress bool) string {
	id := policyListsOf(dir, p)
	key, ok := st.keys[id]
	if !ok {
		key = makePolicyKey(dir, p)
		st.keys[id] = key
	}
	if name, ok := st.byKey[key]; ok {
		return name
	}
	name := policyChainName(dir, key)
	if _, taken := st.chains[name]; taken && st.err == nil {
		st.err = errNameCollision("chain", name, "one policy", "another")
	}
	st.byKey[key] = name
	if cached, ok := st.cache[key]; ok { // rendered by an earlier sync
		for _, c := range cached {
			st.addChain(c)
		}
		st.made[key] = cached
		return name
	}
	var made []*chainSpec
	staged := p.Staged != nil
	var pre []*rb
	if staged {
		sName := name + suffixStaged
		sTail := ""
		if len(p.StagedTail) > 0 {
			sTail = sName + suffixTail
			made = append(made, &chainSpec{name: sTail, rules: passRules(st.peerNames, p.StagedTail, "", true, false, ingress)})
		}
		made = append(made, &chainSpec{name: sName, rules: passRules(st.peerNames, p.Staged, sTail, true, false, ingress)})
		pre = []*rb{rule().verdict(expr.VerdictJump, sName)}
	}
	tail := ""
	if len(p.EnforcedTail) > 0 {
		tail = name + suffixTail
		made = append(made, &chainSpec{name: tail, rules: passRules(st.peerNames, p.EnforcedTail, "", false, staged, ingress)})
	}
	made = append(made, &chainSpec{name: name, rules: append(pre, passRules(st.peerNames, p.Enforced, tail, false, staged, ingress)...)})
	for _, c := range made {
		c.hash = chainHash(c)
		st.addChain(c)
	}
	st.made[key] = made
	return name
}

// passRules renders one pass's first-match list. stagedPass: the rules
// write the staged half of the mark and return. halfOnly (enforced pass
// with a staged pass): the rules write only the enforced half. tail: the
// chain a Delegate rule or the end of the list goes to ("" = deny).
func passRules(peers map[string][7]string, rules []Rule, tail string, stagedPass, halfOnly, ingress bool) []*rb {
	var out []*rb
	for _, r := range rules {
		for _, b := range expand(peers, r, ingress) {
			switch {
			case r.Action == segment.Delegate:
				out = append(out, b.verdict(expr.VerdictGoto, tail))
			case stagedPass:
				out = append(out, b.ctMarkSet(half(r.Action, r.Origin)<<16).verdict(expr.VerdictReturn, ""))
			default:
				if halfOnly {
					b.ctMarkSetLow(half(r.Action, r.Origin))
				} else {
					b.ctMarkSet(uint32(MakeMark(r.Action, r.Action, r.Origin, r.Origin)))
				}
				verdictTail := chainAllow
				if r.Action == segment.Deny {
					verdictTail = chainDeny
				}
				out = append(out, b.verdict(expr.VerdictGoto, verdictTail))
			}
		}
	}
	switch {
	case tail != "":
		out = append(out, rule().verdict(expr.VerdictGoto, tail))
	case stagedPass:
		// The staged list ran out: staged deny, no origin.
		out = append(out, rule().ctMarkSet(half(segment.Deny, 0)<<16).verdict(expr.VerdictReturn, ""))
	default:
		out = append(out, rule().counter(counterNoMatch).ctMarkSet(uint32(MakeMark(segment.Deny, segment.Deny, 0, 0))).verdict(expr.VerdictGoto, chainDeny))
	}
	return out
}

// listID identifies a rule list by its backing array: the endpoints of a
// workload share their lists, so work done once per list (validating it,
// keying its policy) is not repeated per endpoint.
type listID struct {
	first *Rule
	n     int
}

func idOfList(l []Rule) listID {
	if len(l) == 0 {
		return listID{}
	}
	return listID{&l[0], len(l)}
}

// policyLists identifies a policy by its lists: its key is computed once
// per workload rather than once per endpoint.
type policyLists struct {
	dir    string
	lists  [4]listID
	staged bool
}

func policyListsOf(dir string, p Policy) policyLists {
	return policyLists{dir: dir, staged: p.Staged != nil,
		lists: [4]listID{idOfList(p.Enforced), idOfList(p.EnforcedTail), idOfList(p.Staged), idOfList(p.StagedTail)}}
}

// policyKey identifies a policy's rendering: equal keys give equal chains,
// so it names the chain without rendering it. It is 128 bits of two
// xxhash64 sums over a compact encoding of the rules: cheap enough to
// compute for every endpoint on every sync, and stable across restarts (a
// restarted agent makes the same names).
type policyKey [2]uint64

func makePolicyKey(dir string, p Policy) policyKey {
	buf := make([]byte, 0, 512)
	buf = append(buf, dir...)
	write := func(tag byte, rules []Rule) {
		for _, r := range rules {
			buf = append(buf, tag)
			if r.PeerNot {
				buf = append(buf, '!')
			}
			buf = append(buf, r.Peer...)
			buf = append(buf, 0, byte(r.Action), byte(r.Origin>>8), byte(r.Origin), byte(len(r.Ports)))
			for _, pr := range r.Ports {
				buf = append(buf, byte(pr.Protocol), byte(pr.First>>8), byte(pr.First), byte(pr.Last>>8), byte(pr.Last))
			}
		}
	}
	if p.Staged != nil {
		buf = append(buf, "|staged"...)
		write('s', p.Staged)
		write('S', p.StagedTail)
	}
	write('e', p.Enforced)
	write('E', p.EnforcedTail)
	h1 := xxhash.Sum64(buf)
	buf = append(buf, "netseg"...)
	return policyKey{h1, xxhash.Sum64(buf)}
}

func (k policyKey) String() string {
	return fmt.Sprintf("%016x", k[0])
}

// expand turns one rule into kernel rules: one per address family of its
// peer and per port range. The peer is the destination for egress and the
// source for ingress.
func expand(peers map[string][7]string, r Rule, ingress bool) []*rb {
	var fams []int
	if r.Peer != "" {
		fams = []int{4, 6}
	} else {
		fams = []int{0}
	}
	var out []*rb
	for _, fam := range fams {
		ports := r.Ports
		if len(ports) == 0 {
			ports = []segment.PortRange{{}}
		}
		for _, pr := range ports {
			if (fam == 4 && pr.Protocol == segment.ICMPv6) || (fam == 6 && pr.Protocol == segment.ICMP) {
				continue // cannot match: ICMP lives in IPv4, ICMPv6 in IPv6
			}
			b := rule()
			if fam != 0 {
				b.family(fam).addrIn(ingress, peers[r.Peer][fam], r.PeerNot)
			}
			if pr.Protocol != 0 {
				b.l4(pr.Protocol)
				if pr.First != 0 {
					b.dport(pr.First, pr.Last)
				}
			}
			out = append(out, b)
		}
	}
	return out
}

// antiSpoofChain binds a chain to the host-side veth's ingress hook, which
// sees every packet the container sends whatever the bridge's settings:
// it must come from the container's own addresses (IPv6 link-local and
// the unspecified address are allowed for neighbour discovery), and
// IPv6 link-local addresses carry only neighbour discovery and MLD.
// Anything else to or from fe80::/10 would pass by every rule, which
// dispatches on the container's global addresses; a router advertisement
// from a container would take over its neighbours' routes.
//
//	chain spoof_<iface> { type filter hook ingress device "<iface>" priority -500; policy accept;
//	  meta protocol ip ip saddr != 10.88.0.5 counter name "spoofed" drop
//	  meta protocol ip accept
//	  meta protocol ip6 ip6 saddr != fd00::5 ip6 saddr != fe80::/10 ip6 saddr != :: counter name "spoofed" drop
//	  meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type 134 counter name "iface_guard" drop
//	  meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type 130-136 accept
//	  meta protocol ip6 meta l4proto ipv6-icmp icmpv6 type 143 accept
//	  meta protocol ip6 ip6 saddr fe80::/10 counter name "iface_guard" drop
//	  meta protocol ip6 ip6 daddr fe80::/10 counter name "iface_guard" drop
//	}
func (st *state) antiSpoofChain(ep Endpoint) string {
	var rules []*rb
	for _, fam := range []int{4, 6} {
		b := rule().metaProtocol(fam)
		for _, ip := range ep.IPs {
			ip = ip.Unmap()
			if famOf(ip) == fam {
				b.addrNotPrefix(true, netip.PrefixFrom(ip, ip.BitLen()))
			}
		}
		if fam == 6 {
			b.addrNotPrefix(true, netip.MustParsePrefix("fe80::/10")).addrNotPrefix(true, netip.MustParsePrefix("::/128"))
		}
		rules = append(rules, b.counter(counterSpoof).verdict(expr.VerdictDrop, ""))
		if fam == 4 {
			// IPv4 is done: every packet the container sends comes through
			// this chain, and the IPv6 rules below would each be tried.
			rules = append(rules, rule().metaProtocol(4).verdict(expr.VerdictAccept, ""))
		}
	}
	linkLocal := netip.MustParsePrefix("fe80::/10")
	rules = append(rules,
		rule().metaProtocol(6).l4(segment.ICMPv6).icmpType(134, 134).counter(counterIfaceGuard).verdict(expr.VerdictDrop, ""),
		rule().metaProtocol(6).l4(segment.ICMPv6).icmpType(130, 136).verdict(expr.VerdictAccept, ""),
		rule().metaProtocol(6).l4(segment.ICMPv6).icmpType(143, 143).verdict(expr.VerdictAccept, ""),
		rule().metaProtocol(6).addrInPrefix(true, linkLocal).counter(counterIfaceGuard).verdict(expr.VerdictDrop, ""),
		rule().metaProtocol(6).addrInPrefix(false, linkLocal).counter(counterIfaceGuard).verdict(expr.VerdictDrop, ""))
	name := spoofChainName(ep.HostIface)
	if other, taken := st.chains[name]; taken && other.device != ep.HostIface && st.err == nil {
		st.err = errNameCollision("chain", name, "device "+ep.HostIface, "device "+other.device)
	}
	st.addChain(&chainSpec{name: name, hook: hookInetIngress, prio: -500, device: ep.HostIface, rules: rules})
	return name
}

func chainHash(c *chainSpec) string {
	sum := sha256.New()
	if c.hook != nil {
		fmt.Fprintln(sum, *c.hook, c.prio, c.device)
	}
	for _, r := range c.rules {
		fmt.Fprintln(sum, r)
	}
	return hex.EncodeToString(sum.Sum(nil)[:8])
}

func famOf(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

func byFamily(prefixes []netip.Prefix) map[int][]netip.Prefix {
	out := map[int][]netip.Prefix{}
	for _, p := range prefixes {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-unmapBits(p)).Masked()
		out[famOf(p.Addr())] = append(out[famOf(p.Addr())], p)
	}
	return out
}

func unmapBits(p netip.Prefix) int {
	if p.Addr().Is4In6() {
		return 96
	}
	return 0
}
