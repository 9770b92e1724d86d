// Package explain answers "what happens to a connection from A to B on
// port P, and why?" over a compiled policy. It parses the command-line
// forms of peers and ports and renders the decision as a sentence or as
// JSON, so that netsegctl's file-based and live forms share it.
package explain

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
)

// ParsePeer parses "NAMESPACE/NAME" (with labels "k=v,k2=v2"), or an IP
// address or CIDR (standing for its first address; labels not allowed).
func ParsePeer(ref, labels string) (policy.Peer, error) {
	if ref == "" {
		return policy.Peer{}, fmt.Errorf("missing peer: want NAMESPACE/NAME, an IP address or a CIDR")
	}
	if a, err := netip.ParseAddr(ref); err == nil {
		if labels != "" {
			return policy.Peer{}, fmt.Errorf("peer %s: labels apply to endpoints, not addresses", ref)
		}
		return policy.AddrPeer(a), nil
	}
	if p, err := netip.ParsePrefix(ref); err == nil {
		if labels != "" {
			return policy.Peer{}, fmt.Errorf("peer %s: labels apply to endpoints, not addresses", ref)
		}
		return policy.AddrPeer(p.Masked().Addr()), nil
	}
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return policy.Peer{}, fmt.Errorf("peer %q: want NAMESPACE/NAME, an IP address or a CIDR", ref)
	}
	l, err := ParseLabels(labels)
	if err != nil {
		return policy.Peer{}, fmt.Errorf("peer %s: %w", ref, err)
	}
	return policy.Peer{Namespace: ns, Name: name, Labels: l}, nil
}

// ParseLabels parses "k=v,k2=v2"; empty gives nil.
func ParseLabels(s string) (map[string]string, error) {
	if s == "" {
		return nil, nil
	}
	l := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q: want key=value", kv)
		}
		l[k] = v
	}
	return l, nil
}

// ParsePort parses "443/TCP", "53/udp", "443" (TCP) or "ICMP".
func ParsePort(s string) (uint16, segment.Protocol, error) {
	num, proto, hasProto := strings.Cut(s, "/")
	if !hasProto {
		if p, err := segment.ParseProtocol(s); err == nil && p == segment.ICMP {
			return 0, p, nil
		}
		proto = "TCP"
	}
	p, err := segment.ParseProtocol(proto)
	if err != nil {
		return 0, 0, fmt.Errorf("port %q: %w", s, err)
	}
	if p == segment.ICMP {
		return 0, p, nil
	}
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return 0, 0, fmt.Errorf("port %q: want a port 1-65535 and a protocol, e.g. 443/TCP", s)
	}
	return uint16(n), p, nil
}

// Result is an explained decision.
type Result struct {
	From string `json:"from"`
	To   string `json:"to"`
	Port string `json:"port"`
	policy.Decision
}

// Explain decides a connection.
func Explain(c *policy.Compiled, from, to policy.Peer, port uint16, proto segment.Protocol) Result {
	p := fmt.Sprintf("%d/%s", port, proto)
	if proto == segment.ICMP {
		p = segment.ICMP.String()
	}
	return Result{From: from.String(), To: to.String(), Port: p, Decision: c.Decide(from, to, port, proto)}
}

// Sentence renders r for people, e.g. "shop/checkout -> pay/payments
// 8443/TCP: allowed (expected) by ServiceDependency shop/checkout entry
// payments-api; zones web -> payments".
func (r Result) Sentence() string {
	how := "unexpected"
	switch {
	case r.Expected:
		how = "expected"
	case r.Verdict == segment.WouldDeny:
		how = "unexpected; passes, but a staged rule denies it"
	}
	return fmt.Sprintf("%s -> %s %s: %s (%s) by %s; zones %s -> %s",
		r.From, r.To, r.Port, r.Verdict, how, r.Origin, r.SrcZone, r.DstZone)
}
