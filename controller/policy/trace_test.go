package policy_test

import (
	"fmt"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
)

func TestTraceAgreesWithDecideShop(t *testing.T) {
	for _, unzoned := range []segment.Action{segment.Allow, segment.Deny} {
		in := policytest.Shop()
		in.Config.UnzonedDefault = unzoned
		c := policy.Compile(in)
		if bad := append(checkTracer(c, in), checkSetShapes(c)...); len(bad) > 0 {
			t.Errorf("unzoned %s:\n%s", unzoned, strings.Join(bad, "\n"))
		}
	}
}

func TestTraceAgreesWithDecideRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 500 {
		b := make([]byte, 200)
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		in := policytest.Gen(b)
		c := policy.Compile(in)
		if bad := append(checkTracer(c, in), checkSetShapes(c)...); len(bad) > 0 {
			t.Fatalf("input %d (%x):\n%s", i, b, strings.Join(bad, "\n"))
		}
	}
}

// checkTracer holds the rule lists to Decide: every endpoint's egress
// lists to every probe address and endpoint, and its ingress lists from
// them. It reports the first mismatches.
func checkTracer(c *policy.Compiled, in policy.Input) []string {
	var addrs []netip.Addr
	for _, a := range policytest.ProbeAddrs {
		addrs = append(addrs, netip.MustParseAddr(a))
	}
	for _, e := range c.Endpoints {
		addrs = append(addrs, e.IPs...)
	}
	var bad []string
	for _, e := range c.Endpoints {
		self := policy.Peer{Namespace: e.Namespace, Name: e.Name}
		for _, a := range addrs {
			for _, p := range policytest.Probes {
				want := c.Decide(self, policy.AddrPeer(a), p.Port, p.Proto)
				got, err := c.TraceEgress(e.Namespace, e.Name, a, p.Port, p.Proto)
				if err != nil || got != want {
					bad = append(bad, fmt.Sprintf("egress %s/%s -> %s %d/%s: trace %+v, decide %+v (%v)", e.Namespace, e.Name, a, p.Port, p.Proto, got, want, err))
				}
				want = c.Decide(policy.AddrPeer(a), self, p.Port, p.Proto)
				got, err = c.TraceIngress(e.Namespace, e.Name, a, p.Port, p.Proto)
				if err != nil || got != want {
					bad = append(bad, fmt.Sprintf("ingress %s -> %s/%s %d/%s: trace %+v, decide %+v (%v)", a, e.Namespace, e.Name, p.Port, p.Proto, got, want, err))
				}
				if len(bad) > 3 {
					return bad
				}
			}
		}
	}
	return bad
}

// checkSetShapes checks the form of every set: prefixes sorted by address
// and length and pairwise disjoint, an endpoint address in a set listed as
// its own /32 (/128), never inside a wider prefix (the dataplane renders
// such a set as one element per prefix, and a pod's arrival as one more).
func checkSetShapes(c *policy.Compiled) []string {
	endpoint := map[netip.Addr]bool{}
	for _, e := range c.Endpoints {
		for _, a := range e.IPs {
			endpoint[a] = true
		}
	}
	var bad []string
	for _, s := range c.Sets {
		for i, p := range s.Prefixes {
			if i > 0 {
				q := s.Prefixes[i-1]
				if policy.ComparePrefixes(q, p) >= 0 || q.Overlaps(p) {
					bad = append(bad, fmt.Sprintf("set %s: %s then %s: not sorted and disjoint", s.Name, q, p))
				}
			}
			if p.Bits() == p.Addr().BitLen() {
				continue
			}
			for a := range endpoint {
				if p.Contains(a) {
					bad = append(bad, fmt.Sprintf("set %s: endpoint address %s inside %s", s.Name, a, p))
				}
			}
		}
	}
	return bad
}
