package segment

import (
	"encoding/json"
	"testing"
)

func TestText(t *testing.T) {
	type all struct {
		A Action    `json:"a"`
		P Protocol  `json:"p"`
		V Verdict   `json:"v"`
		R PortRange `json:"-"`
	}
	for _, tc := range []struct {
		in   all
		json string
	}{
		{all{Allow, TCP, Allowed, PortRange{}}, `{"a":"Allow","p":"TCP","v":"allowed"}`},
		{all{Deny, ICMPv6, WouldDeny, PortRange{}}, `{"a":"Deny","p":"ICMPv6","v":"would-deny"}`},
		{all{Delegate, 47, Denied, PortRange{}}, `{"a":"Delegate","p":"47","v":"denied"}`},
		{all{0, SCTP, None, PortRange{}}, `{"a":"","p":"SCTP","v":"none"}`},
	} {
		b, err := json.Marshal(tc.in)
		if err != nil || string(b) != tc.json {
			t.Errorf("json.Marshal(%+v) = %s, %v; want %s", tc.in, b, err, tc.json)
			continue
		}
		var back all
		if err := json.Unmarshal(b, &back); err != nil || back != tc.in {
			t.Errorf("json.Unmarshal(%s) = %+v, %v", b, back, err)
		}
	}
	for _, bad := range []string{`{"a":"allow"}`, `{"a":"Reject"}`, `{"p":"GRE"}`, `{"p":"256"}`, `{"v":"Allowed"}`} {
		var x all
		if err := json.Unmarshal([]byte(bad), &x); err == nil {
			t.Errorf("json.Unmarshal(%s) = %+v, want an error", bad, x)
		}
	}
	if _, err := json.Marshal(all{A: 4}); err == nil {
		t.Errorf("json.Marshal of Action(4) succeeded")
	}
}

func TestStrings(t *testing.T) {
	for _, tc := range []struct {
		s    interface{ String() string }
		want string
	}{
		{Allow, "Allow"}, {Deny, "Deny"}, {Delegate, "Delegate"}, {Action(9), "Action(9)"},
		{TCP, "TCP"}, {UDP, "UDP"}, {SCTP, "SCTP"}, {ICMP, "ICMP"}, {ICMPv6, "ICMPv6"}, {Protocol(47), "47"},
		{None, "none"}, {Allowed, "allowed"}, {Denied, "denied"}, {WouldDeny, "would-deny"},
		{PortRange{TCP, 443, 443}, "443/TCP"}, {PortRange{TCP, 8000, 8100}, "8000-8100/TCP"},
		{PortRange{Protocol: ICMP}, "0/ICMP"},
	} {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.s, got, tc.want)
		}
	}
}

func TestParseProtocol(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Protocol
		err  string
	}{
		{"TCP", TCP, ""}, {"udp", UDP, ""}, {"Sctp", SCTP, ""}, {"icmp", ICMP, ""},
		// A policy names ICMP for both families.
		{"ICMPv6", 0, `unknown protocol "ICMPv6" (want TCP, UDP, SCTP or ICMP)`},
		{"GRE", 0, `unknown protocol "GRE" (want TCP, UDP, SCTP or ICMP)`},
		{"", 0, `unknown protocol "" (want TCP, UDP, SCTP or ICMP)`},
	} {
		got, err := ParseProtocol(tc.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if got != tc.want || gotErr != tc.err {
			t.Errorf("ParseProtocol(%q) = %v, %q; want %v, %q", tc.in, got, gotErr, tc.want, tc.err)
		}
	}
}

func TestOriginString(t *testing.T) {
	for _, tc := range []struct {
		o    Origin
		want string
	}{
		{Origin{Kind: OriginZonePolicy, Name: "perimeter", Rule: "deny-rest"}, "ZonePolicy perimeter rule deny-rest"},
		{Origin{Kind: OriginServiceDependency, Namespace: "shop", Name: "checkout", Rule: "payments"}, "ServiceDependency shop/checkout entry payments"},
		{Origin{Kind: OriginZoneDefault, FromZone: "ops", ToZone: "web"}, "ZoneDefault ops -> web"},
		{Origin{ID: 7}, "none"},
	} {
		if got := tc.o.String(); got != tc.want {
			t.Errorf("%+v: %q, want %q", tc.o, got, tc.want)
		}
	}
}
