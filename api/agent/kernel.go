package agent

// The kernel objects the plugin shares with the agent. The agent owns the
// nftables table and creates these sets in it; the plugin owns their
// elements (see docs/cni-plugin.md):
//
//	table inet netseg {
//	  set cniquarantine4 { type ipv4_addr; }
//	  set cniquarantine6 { type ipv6_addr; }
//	  chain forward { ... ip saddr @cniquarantine4 drop; ip daddr @cniquarantine4 drop ... }
//	}
const (
	// Table is the name of the nftables table (family inet) the agent
	// programs by default.
	Table = "netseg"
	// CNIQuarantineSet4 and CNIQuarantineSet6 hold the addresses of
	// interfaces whose ADD failed while the agent could not record it:
	// the base chains drop every packet from or to them.
	CNIQuarantineSet4 = "cniquarantine4"
	CNIQuarantineSet6 = "cniquarantine6"
)
