package explain

import (
	"encoding/json"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
)

func TestParsePort(t *testing.T) {
	for _, tc := range []struct {
		in    string
		port  uint16
		proto segment.Protocol
		err   bool
	}{
		{"443/TCP", 443, segment.TCP, false},
		{"53/udp", 53, segment.UDP, false},
		{"3868/SCTP", 3868, segment.SCTP, false},
		{"8080", 8080, segment.TCP, false},
		{"ICMP", 0, segment.ICMP, false},
		{"0/TCP", 0, 0, true},
		{"70000/TCP", 0, 0, true},
		{"80/GRE", 0, 0, true},
	} {
		port, proto, err := ParsePort(tc.in)
		if port != tc.port || proto != tc.proto || (err != nil) != tc.err {
			t.Errorf("ParsePort(%q) = %d, %q, %v", tc.in, port, proto, err)
		}
	}
}

func TestParsePeer(t *testing.T) {
	for _, tc := range []struct {
		ref, labels string
		want        policy.Peer
		err         bool
	}{
		{"shop/checkout", "app=checkout,tier=web", policy.Peer{Namespace: "shop", Name: "checkout",
			Labels: map[string]string{"app": "checkout", "tier": "web"}}, false},
		{"203.0.113.7", "", policy.AddrPeer(netip.MustParseAddr("203.0.113.7")), false},
		{"203.0.113.7/24", "", policy.AddrPeer(netip.MustParseAddr("203.0.113.0")), false},
		{"2001:db8::1", "", policy.AddrPeer(netip.MustParseAddr("2001:db8::1")), false},
		{"203.0.113.7", "app=x", policy.Peer{}, true},
		{"checkout", "", policy.Peer{}, true},
		{"a/b/c", "", policy.Peer{}, true},
		{"a/b", "novalue", policy.Peer{}, true},
		{"", "", policy.Peer{}, true},
	} {
		got, err := ParsePeer(tc.ref, tc.labels)
		if (err != nil) != tc.err {
			t.Errorf("ParsePeer(%q, %q) error %v", tc.ref, tc.labels, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
			t.Errorf("ParsePeer(%q, %q) (-want +got):\n%s", tc.ref, tc.labels, diff)
		}
	}
}

// TestResultJSON pins the bytes of an explained decision: the agent's
// OpExplain answer is json.Marshal of a Result, and netsegctl explain -o
// json prints one (and reads the agent's back).
func TestResultJSON(t *testing.T) {
	r := Result{From: "ops/monitoring", To: "pay/payments", Port: "22/TCP", Decision: policy.Decision{
		Verdict: segment.WouldDeny, Origin: segment.Origin{ID: 4, Kind: segment.OriginZonePolicy, Name: "lockdown", Rule: "no-ssh"},
		SrcZone: "ops", DstZone: "payments",
		Enforced: policy.PassResult{Action: segment.Allow, Origin: segment.Origin{ID: 1, Kind: segment.OriginZoneDefault, FromZone: "ops", ToZone: "payments"}},
		Staged:   policy.PassResult{Action: segment.Deny, Origin: segment.Origin{ID: 4, Kind: segment.OriginZonePolicy, Name: "lockdown", Rule: "no-ssh"}}}}
	const want = `{"from":"ops/monitoring","to":"pay/payments","port":"22/TCP","verdict":"would-deny","expected":false,` +
		`"origin":{"id":4,"kind":"ZonePolicy","name":"lockdown","rule":"no-ssh"},"srcZone":"ops","dstZone":"payments",` +
		`"enforced":{"action":"Allow","origin":{"id":1,"kind":"ZoneDefault","fromZone":"ops","toZone":"payments"}},` +
		`"staged":{"action":"Deny","origin":{"id":4,"kind":"ZonePolicy","name":"lockdown","rule":"no-ssh"}}}`
	got, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("json.Marshal:\n got: %s\nwant: %s", got, want)
	}
	var back Result
	if err := json.Unmarshal(got, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(r, back); diff != "" {
		t.Errorf("decoded (-want +got):\n%s", diff)
	}
}
