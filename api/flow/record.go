// Package flow is the schema of netseg's flow and alert logs (netseg.flow/v1,
// docs/flow-log.md): one JSON object per line, written by the agent's
// flow-log pipeline (controller/flowlog) and read back by netsegctl flows,
// alerts and recommend (controller/flowquery). It imports nothing but the
// standard library and api/segment (the decision's origin), so a reader of
// the logs links no kernel, nftables or metrics code.
package flow

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/netseg/netseg/api/segment"
)

// Schema versions the records; a reader refuses other major versions.
const Schema = "netseg.flow/v1"

// Record kinds.
const (
	KindFlow  = "flow"
	KindLost  = "lost"
	KindAlert = "alert"
)

// Report says which part of a connection a flow record covers.
const (
	// ReportFinal: the connection ended (conntrack DESTROY); the counters
	// cover start..end (after interim records, the rest since the last one).
	ReportFinal = "final"
	// ReportInterim: a long connection still open; counters cover start..end.
	ReportInterim = "interim"
	// ReportAggregate: denied first packets of one 5-tuple in one interval.
	ReportAggregate = "aggregate"
)

// Record is one line of the flow log or the alert log. Kind says which
// fields are set (docs/flow-log.md lists them).
type Record struct {
	Schema string    `json:"schema"`
	Kind   string    `json:"kind"`
	Start  time.Time `json:"start"`
	End    time.Time `json:"end"`
	Node   string    `json:"node,omitempty"`

	// flow and alert
	Report    string          `json:"report,omitempty"`
	ConnStart *time.Time      `json:"connStart,omitempty"`
	Protocol  string          `json:"protocol,omitempty"`
	Src       *Endpoint       `json:"src,omitempty"`
	Dst       *Endpoint       `json:"dst,omitempty"`
	ICMPType  *uint8          `json:"icmpType,omitempty"`
	Direction string          `json:"direction,omitempty"`
	Verdict   string          `json:"verdict,omitempty"`
	Origin    *segment.Origin `json:"origin,omitempty"`
	Expected  *bool           `json:"expected,omitempty"`

	PacketsToDst uint64 `json:"packetsToDst,omitempty"`
	BytesToDst   uint64 `json:"bytesToDst,omitempty"`
	PacketsToSrc uint64 `json:"packetsToSrc,omitempty"`
	BytesToSrc   uint64 `json:"bytesToSrc,omitempty"`

	// Scan: an alert of a source that went past its share of alert keys
	// (the alert log's scan alert): its destinations and ports vary.
	Scan *Scan `json:"scan,omitempty"`

	// lost and alert
	Count uint64 `json:"count,omitempty"`
	// lost
	Cause string `json:"cause,omitempty"`
	Unit  string `json:"unit,omitempty"`
}

// Scan counts what a scan alert folded.
type Scan struct {
	// Keys counts the flow records folded whose (destination, port,
	// protocol) had no alert of its own, the source's share of keys
	// taken (a destination met twice counts twice).
	Keys uint64 `json:"keys"`
}

// Endpoint is one side of a connection. IP and Port are the connection's;
// the other fields name the workload when the address is one.
type Endpoint struct {
	IP        string            `json:"ip,omitempty"`
	Port      uint16            `json:"port,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	Name      string            `json:"name,omitempty"`
	Zone      string            `json:"zone,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// Workload names the endpoint: "namespace/name", or the IP for an
// address that is no workload.
func (e *Endpoint) Workload() string {
	if e == nil {
		return ""
	}
	if e.Name != "" {
		return e.Namespace + "/" + e.Name
	}
	return e.IP
}

// IsExpected reports the record's expected flag (false when absent).
func (r *Record) IsExpected() bool { return r.Expected != nil && *r.Expected }

// Decode parses one line of a log. It refuses a line that is not a JSON
// object or whose schema does not start with netseg.flow/v1: v1 may gain
// fields, a change of meaning makes v2 (docs/flow-log.md).
func Decode(line []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(line, &r); err != nil {
		return Record{}, fmt.Errorf("not a flow record: %w", err)
	}
	if !strings.HasPrefix(r.Schema, Schema) {
		return Record{}, fmt.Errorf("not a %s record: schema %q", Schema, r.Schema)
	}
	return r, nil
}

// Loss causes (Record.Cause) and their units (Record.Unit).
const (
	CauseQueueFull       = "queue-full"         // events the pipeline's queue could not take
	CauseNFLOGOverflow   = "nflog-overflow"     // ENOBUFS on the NFLOG socket
	CauseCtOverflow      = "conntrack-overflow" // ENOBUFS on a conntrack event socket
	CauseRateLimitAllow  = "rate-limit-allow"   // accepted first packets the kernel did not log
	CauseRateLimitDeny   = "rate-limit-deny"    // denied first packets the kernel did not log
	CauseDeniedTableFull = "denied-table-full"  // denied packets of 5-tuples past MaxDenied
	CauseOpenTableFull   = "open-table-full"    // interim records skipped: connections past MaxOpenFlows
	CauseAlertTableFull  = "alert-table-full"   // unexpected connections not folded: keys past MaxAlerts
	CauseWriteError      = "write-error"        // records a log could not write (a full disk), dropped with its buffer

	UnitConnections = "connections" // flow records of ended connections that are missing
	UnitPackets     = "packets"     // denied packets not counted in any record
	UnitOverflows   = "overflows"   // socket overflows, each one or more kernel messages
	UnitRecords     = "records"     // interim records not written
)
