package policy_test

import (
	"strings"
	"testing"

	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policy/policytest"
)

// TestParseCIDR: one meaning for every CIDR. An IPv4-mapped network
// (which the kernel would take as 0.0.0.0/0 for ::ffff:0:0/96) and host
// bits are refused, as the API server's isCIDR does.
func TestParseCIDR(t *testing.T) {
	for s, want := range map[string]string{
		"10.0.0.0/8": "", "203.0.113.0/24": "", "0.0.0.0/0": "", "2001:db8::/32": "", "10.0.0.5/32": "",
		"::ffff:0:0/96": "IPv4-mapped", "::ffff:10.0.0.0/104": "IPv4-mapped", "10.0.0.5/8": "host bits",
		"2001:db8::1/32": "host bits", "10.0.0.0": "must be a CIDR", "fe80::/10%eth0": "must be a CIDR", "": "must be a CIDR",
	} {
		_, err := policy.ParseCIDR(s)
		switch {
		case want == "" && err != nil:
			t.Errorf("%q: %v, want accepted", s, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%q: %v, want an error saying %q", s, err, want)
		}
	}
}

// TestCompileRefusesMappedCIDR: a Zone whose CIDR is IPv4-mapped is an
// error of the compile, and the zone holds no network (it would otherwise
// hold all of IPv4 in the kernel while explain said otherwise).
func TestCompileRefusesMappedCIDR(t *testing.T) {
	in := policytest.Shop()
	in.Zones = append(in.Zones, policytest.Zone("mapped", 500, "Deny", "", nil, "::ffff:0:0/96"))
	c := policy.Compile(in)
	found := false
	for _, p := range c.Errors {
		if strings.Contains(p.String(), "IPv4-mapped") && strings.Contains(p.String(), "mapped") {
			found = true
		}
	}
	if !found {
		t.Fatalf("no compile error for the IPv4-mapped CIDR: %v", c.Errors)
	}
	if s, ok := c.Set(policy.ZoneSet("mapped")); ok && len(s) > 0 {
		t.Fatalf("the zone holds %v", s)
	}
}
