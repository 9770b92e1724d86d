// Package plugin is the logic of netseg's chained CNI plugin: it parses the
// network configuration, finds the container's veth from the previous
// plugin's result and the kernel, and registers, checks and removes the
// endpoint with the node agent over the agent's socket protocol
// (api/agent). When the agent cannot program an interface it applies the
// configured failure policy: "closed" fails ADD and quarantines the
// interface's addresses in table inet netseg; "open" lets the container
// start, warns and counts. docs/cni-plugin.md describes the behaviour.
//
// The plugin is exec'd once per container: it imports no Kubernetes package
// and speaks only the agent's protocol, netlink and nftables.
package plugin
