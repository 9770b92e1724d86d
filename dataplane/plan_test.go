package dataplane

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/netseg/netseg/api/segment"
)

// planWorld is a small ruleset: n endpoints of one workload whose egress
// allows TCP port to the workload's set.
func planWorld(n int, port uint16) *Ruleset {
	rs := &Ruleset{Managed: []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16")}}
	var ps []netip.Prefix
	for i := range n {
		ps = append(ps, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 88, 0, byte(2 + i)}), 32))
	}
	rs.Sets = []Set{{Name: "zone/web", Prefixes: ps}}
	for i := range n {
		rs.Endpoints = append(rs.Endpoints, Endpoint{
			ID: "c" + string(rune('a'+i)) + "/eth0", HostIface: "veth" + string(rune('a'+i)),
			IPs:     []netip.Addr{ps[i].Addr()},
			Egress:  Policy{Enforced: []Rule{{Peer: "zone/web", Ports: []segment.PortRange{{Protocol: segment.TCP, First: port, Last: port}}, Action: segment.Allow, Origin: 3}}},
			Ingress: Policy{Enforced: []Rule{{Action: segment.Allow, Origin: 4}}},
		})
	}
	return rs
}

// applyPlan renders rs on top of a (nil: a full rebuild) and returns the
// batch; the batch's next record stands for a committed batch.
func applyPlan(t *testing.T, a *applied, rs *Ruleset) *batch {
	t.Helper()
	var memo *state
	if a != nil {
		memo = a.st
	}
	st, err := render(Config{}.Defaults(), rs, memo)
	if err != nil {
		t.Fatal(err)
	}
	if a == nil {
		return planFull(st, nil, nil)
	}
	b := plan(a, st)
	for _, s := range st.sets {
		s.delta = nil
	}
	return b
}

func opsOf(b *batch, verb string) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if strings.HasPrefix(line, verb) {
			out = append(out, line)
		}
	}
	return out
}

// TestPlanNothingChanged: the same ruleset again plans an empty batch.
func TestPlanNothingChanged(t *testing.T) {
	a := applyPlan(t, nil, planWorld(3, 80)).next
	if b := applyPlan(t, a, planWorld(3, 80)); len(b.ops) != 0 {
		t.Errorf("same ruleset planned:\n%s", b)
	}
}

// TestPlanAddIsAdditionsOnly: a new endpoint only adds (a deletion would
// make its commit wait an RCU grace period), and it gets its own chains,
// map entries and set member.
func TestPlanAddIsAdditionsOnly(t *testing.T) {
	a := applyPlan(t, nil, planWorld(2, 80)).next
	b := applyPlan(t, a, planWorld(3, 80))
	for _, verb := range []string{"delete", "flush", "rebuild"} {
		if got := opsOf(b, verb); len(got) > 0 {
			t.Errorf("an ADD planned %s:\n%s", verb, b)
		}
	}
	text := b.String()
	names := dispatchChainNames("cc/eth0")
	for _, want := range []string{"add chain " + names[0], "add chain " + names[1], "add chain " + spoofChainName("vethc"),
		"add elements egress4 { 10.88.0.4 }", "add elements ingress4 { 10.88.0.4 }", "add elements local4 { 10.88.0.4 }",
		"add elements p_zone_web_"} {
		if !strings.Contains(text, want) {
			t.Errorf("plan lacks %q:\n%s", want, text)
		}
	}
}

// TestPlanPolicyChangeLeavesGarbageForCollect: a policy change inserts a
// new live rule in each dispatch chain and leaves the old policy chain
// and the shadowed rules for Collect, whose plan removes exactly those.
func TestPlanPolicyChangeLeavesGarbageForCollect(t *testing.T) {
	a := applyPlan(t, nil, planWorld(2, 80)).next
	oldChain := a.st.endpointChains["ca/eth0"][2]
	b := applyPlan(t, a, planWorld(2, 443))
	if got := opsOf(b, "insert rules"); len(got) != 2 {
		t.Errorf("want the two egress dispatch chains' head rules, got %q", got)
	}
	if got := opsOf(b, "delete"); len(got) > 0 {
		t.Errorf("a policy change deleted: %q", got)
	}
	next := b.next
	if next.staleChains[oldChain] == nil {
		t.Fatalf("old policy chain %s not left stale; stale: %v", oldChain, sortedKeys(next.staleChains))
	}
	epo := dispatchChainNames("ca/eth0")[0]
	if tags := next.tags(next.st.chains[epo]); len(tags) != 2 {
		t.Errorf("dispatch chain %s: want the live and one shadowed rule, got %q", epo, tags)
	}
	if !next.garbage() {
		t.Fatal("no garbage after a policy change")
	}
	c := planCollect(next)
	text := c.String()
	for _, want := range []string{"flush chain " + epo, "add rules " + epo + " (1)", "delete chain " + oldChain} {
		if !strings.Contains(text, want) {
			t.Errorf("collect lacks %q:\n%s", want, text)
		}
	}
	if c.next.garbage() {
		t.Error("garbage left after Collect")
	}
	// The record Collect leaves expects one rule per dispatch chain.
	if tags := c.next.tags(c.next.st.chains[epo]); len(tags) != 1 {
		t.Errorf("after Collect, %s: %q", epo, tags)
	}
}

// TestPlanRemovalCutsAccessAtOnce: a removed endpoint loses its map
// entries and set membership in the same batch; its chains wait.
func TestPlanRemovalCutsAccessAtOnce(t *testing.T) {
	a := applyPlan(t, nil, planWorld(3, 80)).next
	b := applyPlan(t, a, planWorld(2, 80))
	text := b.String()
	for _, want := range []string{"delete elements egress4 { 10.88.0.4 }", "delete elements ingress4 { 10.88.0.4 }", "delete elements local4 { 10.88.0.4 }"} {
		if !strings.Contains(text, want) {
			t.Errorf("plan lacks %q:\n%s", want, text)
		}
	}
	if got := opsOf(b, "delete chain"); len(got) > 0 {
		t.Errorf("chains deleted in the removal's batch: %q", got)
	}
	for _, name := range dispatchChainNames("cc/eth0") {
		if b.next.staleChains[name] == nil {
			t.Errorf("chain %s not left for Collect", name)
		}
	}
}

// TestPlanEmptiesStaleSetsAfterwards: a set the policy stops reading is
// emptied in a transaction after the one that stops reading it, never in
// it (a packet inside the old rules at the commit would miss its members),
// and a set read again is refilled in a transaction before it.
func TestPlanEmptiesStaleSetsAfterwards(t *testing.T) {
	with := planWorld(2, 80)
	with.Sets = append(with.Sets, Set{Name: "old", Prefixes: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}})
	with.Endpoints[0].Egress.Enforced = append([]Rule{{Peer: "old", Action: segment.Deny, Origin: 5}}, with.Endpoints[0].Egress.Enforced...)
	a := applyPlan(t, nil, with).next
	b := applyPlan(t, a, planWorld(2, 80))
	old := peerSetNames("old")[4]
	if got := opsOf(b, "delete elements "+old); len(got) > 0 {
		t.Errorf("the stale set is emptied in the batch that stops reading it: %q", got)
	}
	if !strings.Contains(b.String(), "then delete elements "+old) {
		t.Errorf("the stale set is not emptied afterwards:\n%s", b)
	}
	c := applyPlan(t, b.next, with) // the set is read again: it is refilled before the rules that read it
	pre := &batch{ops: c.before}
	if !strings.Contains(pre.String(), "add elements "+old) || strings.Contains((&batch{ops: c.ops}).String(), "elements "+old) {
		t.Errorf("the returning set is not created in a transaction of its own:\nbefore:\n%v\nbatch:\n%s", pre, c)
	}
}

// TestPlanRevivedChainKeepsShadowedRules: a dispatch chain that went stale
// with shadowed rules and is wanted again is expected with them.
func TestPlanRevivedChainKeepsShadowedRules(t *testing.T) {
	a := applyPlan(t, nil, planWorld(2, 80)).next
	a = applyPlan(t, a, planWorld(2, 443)).next // shadowed rules in ca's and cb's dispatch
	a = applyPlan(t, a, planWorld(1, 443)).next // cb goes away: its chains are stale
	epo := dispatchChainNames("cb/eth0")[0]
	if a.staleChains[epo] == nil || len(a.shadowed[epo]) != 1 {
		t.Fatalf("cb's dispatch chain: stale %v, shadowed %q", a.staleChains[epo] != nil, a.shadowed[epo])
	}
	b := applyPlan(t, a, planWorld(2, 443)) // cb is back, same policy
	if tags := b.next.tags(b.next.st.chains[epo]); len(tags) != 2 {
		t.Errorf("revived %s expected with %d rules (%q), the kernel holds 2", epo, len(tags), tags)
	}
}

// TestSpentMemoRendersFromNothing: a rendering's memo serves one render; a
// second render from it gives the same content as a fresh one (it once
// panicked on element maps handed on to the first).
func TestSpentMemoRendersFromNothing(t *testing.T) {
	cfg := Config{}.Defaults()
	prev, err := render(cfg, planWorld(3, 80), nil)
	if err != nil {
		t.Fatal(err)
	}
	for round := range 2 {
		st, err := render(cfg, planWorld(4, 80), prev)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		fresh, _ := render(cfg, planWorld(4, 80), nil)
		for name, want := range fresh.sets {
			got := st.sets[name]
			if got == nil || len(got.elems) != len(want.elems) {
				t.Fatalf("round %d: set %s differs from a fresh render", round, name)
			}
		}
	}
}
