package segment

import (
	"fmt"
	"strconv"
	"strings"
)

// Protocol is an IP protocol number, as in the IP header (and as nftables
// matches it with meta l4proto). In JSON and text it is its name.
type Protocol uint8

// Protocols. ICMP carries no ports: a rule with ports never matches it.
// A policy names only ICMP and means the ICMP of the address's family;
// the enforcement mapping turns it into ICMP and ICMPv6.
const (
	ICMP   Protocol = 1
	TCP    Protocol = 6
	UDP    Protocol = 17
	ICMPv6 Protocol = 58
	SCTP   Protocol = 132
)

// String names the protocol: TCP, UDP, SCTP, ICMP, ICMPv6, or the number
// for any other (flow records name protocols so).
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	case ICMP:
		return "ICMP"
	case ICMPv6:
		return "ICMPv6"
	}
	return strconv.Itoa(int(p))
}

// MarshalText writes the protocol as String names it.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText reads what MarshalText writes: a name, case-insensitively,
// or a number 0-255.
func (p *Protocol) UnmarshalText(b []byte) error {
	s := string(b)
	if strings.EqualFold(s, "ICMPv6") {
		*p = ICMPv6
		return nil
	}
	if v, err := ParseProtocol(s); err == nil {
		*p = v
		return nil
	}
	n, err := strconv.ParseUint(s, 10, 8)
	if err != nil {
		return fmt.Errorf("unknown protocol %q (want TCP, UDP, SCTP, ICMP, ICMPv6 or a number)", s)
	}
	*p = Protocol(n)
	return nil
}

// ParseProtocol parses a protocol a policy can name, case-insensitively:
// TCP, UDP, SCTP or ICMP (which covers ICMPv6: see ICMP).
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(s) {
	case "TCP":
		return TCP, nil
	case "UDP":
		return UDP, nil
	case "SCTP":
		return SCTP, nil
	case "ICMP":
		return ICMP, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP, SCTP or ICMP)", s)
}

// PortRange is the destination ports First..Last (inclusive) of one
// protocol.
type PortRange struct {
	Protocol    Protocol
	First, Last uint16
}

// String is "443/TCP" or "8000-8100/TCP".
func (r PortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprintf("%d/%s", r.First, r.Protocol)
	}
	return fmt.Sprintf("%d-%d/%s", r.First, r.Last, r.Protocol)
}
