// Package dataplane is the only netseg code that touches the kernel: it
// programs the nftables table "inet netseg" through netlink
// (github.com/google/nftables), finds interfaces with
// github.com/vishvananda/netlink, and reads NFLOG and conntrack events.
// It imports no Kubernetes package and no other netseg package but its own.
package dataplane
