package agent

// The kernel objects the plugin shares with the agent. The agent owns the
// nftables table and creates these sets in it; the plugin owns their
// elements (see docs/cni-plugin.md):
//
//	table inet netseg {
//	  set cniquarantine4 { type ipv4_addr; }
//	  set cniquarantine6 { type ipv6_addr; }
//	  set cnifailopen4 { type ipv4_addr; }
//	  set cnifailopen6 { type ipv6_addr; }
//	  chain forward { ... ip saddr @cniquarantine4 drop; ip daddr @cniquarantine4 drop ...
//	                  ip saddr @cnifailopen4 accept; ip daddr @cnifailopen4 accept ... }
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
	// CNIFailOpenSet4 and CNIFailOpenSet6 hold the addresses of
	// interfaces whose ADD succeeded under failurePolicy "open" while the
	// agent could not program them: the base chains accept every packet
	// from or to them (after the quarantine, before the fail-closed
	// catch-all), so the container has a working, unsegmented network
	// until the agent adopts it.
	CNIFailOpenSet4 = "cnifailopen4"
	CNIFailOpenSet6 = "cnifailopen6"
	// FailOpenDir, in the plugin's stateDir, holds one record per
	// attachment started unsegmented: "<containerID>_<ifName>.json", the
	// Endpoint as ADD would have sent it. The agent (--cni-state-dir)
	// registers each one it finds, then removes the record and the set
	// elements.
	FailOpenDir = "failopen"
)
