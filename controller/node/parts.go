package node

import (
	"log/slog"
	"net/netip"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/dataplane"
)

// Parts are what an agent is made of. cmd/netseg-agent, the composition
// root, builds them (the namespace handle, the registry, the dataplane,
// the policy source) and owns their lifetimes; the agent receives them as
// the small interfaces below.
type Parts struct {
	Kernel    Kernel
	Dataplane Dataplane
	Registry  *Registry
	// Source supplies policy; nil only for an agent that is built to
	// Cleanup.
	Source Source
	// OnRecord, when set, receives every flow record the flow log writes
	// (Kubernetes mode: Events for alerts, the last use of dependencies).
	// It must not block.
	OnRecord func(*flow.Record)
	// KeepChained, when set, is run every ChainCheckInterval: it checks
	// that the node's CNI configuration chains netseg and chains it again
	// if the network plugin rewrote it, returning the file it changed ("":
	// none). While it fails, the agent is not ready.
	KeepChained func() (string, error)
	// CheckHost, when set, is run every HostCheckInterval: it checks that
	// bridged traffic reaches the forward chain (br_netfilter), sets what
	// it may, and returns what it set. While it fails, the agent is not
	// ready and refuses ADDs (a container there could not be segmented
	// and reach its peers at once: the bridge guard drops its traffic).
	CheckHost func() ([]string, error)
	// ConntrackFill, when set, is read every HostCheckInterval: how many
	// connections the node's conntrack tracks, of how many it may. Near
	// the limit the agent warns (the kernel drops new connections, allowed
	// ones too, while denied ones stay denied); it stays ready.
	ConntrackFill func() (count, limit int, err error)
	// Remark, when set, decides the node's live connections again after a
	// policy or quarantine change (dataplane.Namespace.Remark): one the
	// policy now denies stops at its next packet.
	Remark func(dataplane.Decider) (dataplane.Remarked, error)
	// NodeAddrs, when set, is read at start and every HostCheckInterval:
	// the node's own addresses (dataplane.Namespace.NodeAddrs). A pod
	// network holds some (a bridge's gateway, a ptp host veth's address);
	// the fail-closed catch-all leaves them alone, so the node keeps
	// reaching itself there. A change is synced at once.
	NodeAddrs func() ([]netip.Addr, error)
	// FailOpenDir, when set, is the plugin's record directory of
	// containers started unsegmented under failurePolicy open
	// (<cni-state-dir>/failopen): the agent adopts each one every
	// FailOpenInterval (registers it, then closes its fail-open addresses).
	FailOpenDir string
	Log         *slog.Logger
	Metrics     *Metrics
}

// ChainCheckInterval is how often KeepChained runs: one small file read.
// A container added between a rewrite and the next check gets no netseg
// rules; its addresses, in the pod network but unregistered, carry
// nothing (fail closed) until the runtime adds it again.
const ChainCheckInterval = time.Second

// HostCheckInterval is how often CheckHost runs and ConntrackFill is
// read: two sysctl reads each.
const HostCheckInterval = time.Second

// FailOpenInterval is how often the agent looks for containers started
// unsegmented (one directory read).
const FailOpenInterval = time.Second

// ConntrackFullRatio is the fill of the conntrack table at which the agent
// warns that new connections are (about to be) dropped.
const ConntrackFullRatio = 0.95

// Kernel is the node's network namespace as the agent uses it: whether a
// host interface exists (an error: the lookup failed, the answer is
// unknown), and a handle to open the flow readers' sockets in.
type Kernel interface {
	LinkExists(name string) (bool, error)
	Fd() int
}

// Dataplane is the node's nftables table as the agent keeps it in step.
type Dataplane interface {
	Sync(*dataplane.Ruleset) error
	// Collect deletes what syncs left behind; Garbage says whether there is any.
	Collect() error
	Garbage() bool
	CheckDrift() (string, error)
	CheckEndpoint(id string) error
	CheckEndpointChains(id string) error
	CounterValues() (map[string]uint64, error)
	// LastSyncParts: the last applied sync's render and commit times.
	LastSyncParts() (render, commit time.Duration)
	Cleanup() error
	// ReleaseFailOpen removes addresses from the plugin's fail-open sets.
	ReleaseFailOpen([]netip.Addr) error
}

var (
	_ Dataplane = (*dataplane.Dataplane)(nil)
	_ Kernel    = (*dataplane.Namespace)(nil)
)
