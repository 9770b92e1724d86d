// Package flows reads what the kernel reports about the connections netseg
// decides, inside one network namespace (the node's):
//
//   - NFLOG: the first packets that the table's "allow" and "deny" chains
//     log (log prefix "netseg allow"|"netseg deny" group G), decoded to
//     their 5-tuple and decision mark;
//   - conntrack: NEW and DESTROY events with accounting and timestamps, and
//     dumps of the table for long-lived connections.
//
// Readers decode and hand each event to a callback on their own goroutine;
// the callback must not block (the flow-log pipeline queues and counts
// what it cannot take). Socket overflows (ENOBUFS) are counted and the
// readers keep reading. Nothing here imports a Kubernetes package.
package flows
