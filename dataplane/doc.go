// Package dataplane is the only netseg code that touches the kernel: it
// programs the nftables table "inet netseg" through netlink
// (github.com/google/nftables), finds interfaces with
// github.com/vishvananda/netlink, and reads NFLOG and conntrack events.
// It imports no Kubernetes package and, of netseg's, only api/agent, for
// the names of the kernel objects it shares with the CNI plugin, and
// api/segment, whose actions, protocols, port ranges and verdicts its
// rules and conntrack marks are made of. names.go declares every object's
// name and the base chains as data.
package dataplane
