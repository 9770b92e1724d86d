package flows

import (
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane"
)

// Log prefixes of the table's allow and deny chains.
const (
	PrefixAllow = "netseg allow"
	PrefixDeny  = "netseg deny"
)

// Packet is one NFLOG message: a logged first packet.
type Packet struct {
	// Time is the kernel's timestamp when the message has one, else the
	// time the message was read.
	Time   time.Time
	Prefix string
	// Mark is the decision: the conntrack mark from the message's
	// conntrack attribute when the kernel attaches it, else the packet mark
	// (the deny chain copies the ct mark there). MarkFromCt tells which.
	Mark       dataplane.Mark
	MarkFromCt bool
	Proto      segment.Protocol
	// Src and Dst carry ports for TCP, UDP and SCTP, 0 otherwise.
	Src, Dst netip.AddrPort
	// ICMPType and ICMPCode are set for ICMP and ICMPv6.
	ICMPType, ICMPCode uint8
	// Length is the IP packet's length as its header says.
	Length int
}

// ConnType says what a ConnEvent reports.
type ConnType uint8

// Conntrack event types.
const (
	ConnNew ConnType = iota + 1
	ConnDestroy
	// ConnDump is an entry read by a dump of the table (a snapshot).
	ConnDump
)

func (t ConnType) String() string {
	switch t {
	case ConnNew:
		return "new"
	case ConnDestroy:
		return "destroy"
	case ConnDump:
		return "dump"
	}
	return "unknown"
}

// Counters are the packets and bytes of one direction of a connection.
type Counters struct {
	Packets, Bytes uint64
}

// ConnEvent is a conntrack entry as an event or a dump reported it.
type ConnEvent struct {
	Type ConnType
	// ID is the kernel's conntrack id; with the tuple it identifies the
	// connection (ids are reused).
	ID uint32
	// Time is when the event was read.
	Time  time.Time
	Proto segment.Protocol
	// Src and Dst are the original direction's addresses and ports.
	Src, Dst           netip.AddrPort
	ICMPType, ICMPCode uint8
	Mark               dataplane.Mark
	// Start and Stop come from the conntrack timestamp extension
	// (nf_conntrack_timestamp=1 when the connection began); zero otherwise.
	Start, Stop time.Time
	// Orig is the original direction (src -> dst), Reply the other; zero
	// without nf_conntrack_acct=1 when the connection began.
	Orig, Reply Counters
}

// Stats are a reader's counters.
type Stats struct {
	// Messages decoded and handed on.
	Messages uint64
	// Overflows: receive errors ENOBUFS, each one or more messages the
	// kernel dropped because the socket buffer was full.
	Overflows uint64
	// Errors: messages that could not be decoded.
	Errors uint64
}
