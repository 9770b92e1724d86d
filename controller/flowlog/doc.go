// Package flowlog is the flow-log pipeline stage: it turns the kernel's
// connection events (dataplane/flows) into flow records for security
// analysts, folds the unexpected ones into alerts, counts every loss, and
// writes JSON lines (schema netseg.flow/v1, docs/flow-log.md). The records
// are api/flow's; this package builds and writes them, with an encoder of
// its own for the agent's rate (encode.go), and readers of the logs need
// only api/flow. It needs no kernel: events come in through Packet and
// Conn, names through a Resolver, counters and dumps through Sources.
package flowlog
