package policy_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

// FuzzCompile builds a world from the fuzz bytes and checks that compiling
// does not panic, that the rule lists agree with Decide, and that the
// reversed input compiles to the same output.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("\x04\x01\x02\x03\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		in := policytest.Gen(b)
		c := policy.Compile(in)
		if bad := checkTracer(c, in); len(bad) > 0 {
			t.Fatalf("trace and decide disagree:\n%s", strings.Join(bad, "\n"))
		}
		rev := in
		rev.Zones = slices.Clone(in.Zones)
		slices.Reverse(rev.Zones)
		rev.ZonePolicies = slices.Clone(in.ZonePolicies)
		slices.Reverse(rev.ZonePolicies)
		rev.ServiceDependencies = slices.Clone(in.ServiceDependencies)
		slices.Reverse(rev.ServiceDependencies)
		rev.Endpoints = slices.Clone(in.Endpoints)
		slices.Reverse(rev.Endpoints)
		opt := cmp.Options{cmpopts.IgnoreUnexported(policy.Compiled{}), cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})}
		if diff := cmp.Diff(c, policy.Compile(rev), opt); diff != "" {
			t.Fatalf("reversed input compiles differently (-want +got):\n%s", diff)
		}
	})
}
