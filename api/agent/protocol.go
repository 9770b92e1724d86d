// Package agent is the versioned protocol between the netseg CNI plugin and
// the node agent: one JSON request and one JSON response per connection on
// the agent's unix socket (default /run/netseg/agent.sock, mode 0600, owned
// by root). It imports nothing but the standard library, so the plugin,
// exec'd once per container, stays small. docs/cni-protocol.md documents it.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"
)

// Version is the protocol version this package speaks. An agent answers a
// request of another version with an error naming both.
const Version = 1

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/run/netseg/agent.sock"

// Op is what a request asks.
type Op string

const (
	// OpAdd registers an endpoint; the answer comes once its rules are in
	// the kernel (or with an error, and the interface stays quarantined).
	OpAdd Op = "add"
	// OpDel forgets an endpoint and removes its rules; unknown is fine.
	OpDel Op = "del"
	// OpCheck verifies the endpoint is registered and its rules are in the
	// kernel.
	OpCheck Op = "check"
	// OpList returns every registered endpoint.
	OpList Op = "list"
	// OpGC removes every endpoint not in Request.Keep.
	OpGC Op = "gc"
	// OpStatus reports whether the agent is ready to program endpoints.
	OpStatus Op = "status"
	// OpQuarantine records an interface whose ADD failed: its addresses
	// carry no traffic until a later ADD succeeds or DEL removes it.
	OpQuarantine Op = "quarantine"
	// OpExplain decides one connection with the agent's live policy and
	// endpoints (netsegctl explain without --policy-dir).
	OpExplain Op = "explain"
)

// Attachment identifies one container interface, as CNI does.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// Endpoint is one container interface and its identity.
type Endpoint struct {
	Attachment
	// Network is the CNI network name (the conflist's "name"): GC of one
	// network leaves the endpoints of the others alone.
	Network   string            `json:"network,omitempty"`
	Netns     string            `json:"netns,omitempty"`
	Namespace string            `json:"namespace"`        // K8S_POD_NAMESPACE
	Name      string            `json:"name"`             // K8S_POD_NAME
	UID       string            `json:"uid,omitempty"`    // K8S_POD_UID
	Labels    map[string]string `json:"labels,omitempty"` // runtimeConfig "labels"
	HostIface string            `json:"hostIface"`        // the host side of the veth
	// IPs are the interface's addresses with their prefix length
	// ("10.88.0.5/24"): the prefix tells the agent the pod network.
	IPs []string `json:"ips"`
	// Zone is filled in by the agent in answers.
	Zone string `json:"zone,omitempty"`
}

// Request is what the plugin (or netsegctl) sends.
type Request struct {
	Version  int          `json:"version"`
	Op       Op           `json:"op"`
	Endpoint *Endpoint    `json:"endpoint,omitempty"`
	Keep     []Attachment `json:"keep,omitempty"`    // OpGC: cni.dev/valid-attachments
	Network  string       `json:"network,omitempty"` // OpGC: the network Keep is for
	Explain  *Explain     `json:"explain,omitempty"`
}

// Explain names one connection: From and To are "namespace/name" of a
// registered endpoint, or an IP address; Port is "443/TCP" or "ICMP".
type Explain struct {
	From string `json:"from"`
	To   string `json:"to"`
	Port string `json:"port"`
}

// Status is the agent's state (OpStatus).
type Status struct {
	Mode             string    `json:"mode"` // standalone | kubernetes
	Ready            bool      `json:"ready"`
	PolicyGeneration int64     `json:"policyGeneration"` // bumps on every applied policy change
	PolicySource     string    `json:"policySource"`
	LastError        string    `json:"lastError,omitempty"` // the policy error in effect, if any
	Endpoints        int       `json:"endpoints"`
	LastSync         time.Time `json:"lastSync"`
	LastSyncError    string    `json:"lastSyncError,omitempty"`
	Warnings         []string  `json:"warnings,omitempty"`
	// Loops is the state of each of the agent's background loops, in a
	// fixed order.
	Loops []Loop `json:"loops,omitempty"`
}

// Loop states.
const (
	LoopOK       = "ok"       // running, its last round worked
	LoopRetrying = "retrying" // its last round failed; it retries on its own
	LoopFailing  = "failing"  // a check: its last round found a fault; it checks again
	LoopStopped  = "stopped"  // it ended; only a restart brings it back
	LoopOff      = "off"      // not configured
)

// Loop is one background loop of the agent: the socket's accept loop, the
// policy source, the kernel sync, the flow readers and writer, the CNI
// chain and host checks.
type Loop struct {
	Name  string `json:"name"`
	State string `json:"state"`
	Error string `json:"error,omitempty"` // the last error while retrying or stopped
}

// Response is the agent's answer.
type Response struct {
	Version   int        `json:"version"`
	Error     string     `json:"error,omitempty"`
	Ready     bool       `json:"ready,omitempty"`     // OpStatus
	Endpoints []Endpoint `json:"endpoints,omitempty"` // OpList, OpAdd, OpCheck
	Removed   int        `json:"removed,omitempty"`   // OpGC
	Status    *Status    `json:"status,omitempty"`    // OpStatus
	// Explanation is the decision as netsegctl explain -o json prints it.
	Explanation json.RawMessage `json:"explanation,omitempty"`
}

// ErrUnavailable wraps failures to reach the agent at all (no socket,
// refused, timed out), as opposed to errors the agent answered.
var ErrUnavailable = errors.New("agent unavailable")

// Call sends req to the agent at socket and returns its answer. An error
// the agent answered is returned as an error too.
func Call(ctx context.Context, socket string, req Request) (*Response, error) {
	req.Version = Version
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return nil, fmt.Errorf("%w: connect to %s: %v", ErrUnavailable, socket, err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else {
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("%w: send %s request to %s: %v", ErrUnavailable, req.Op, socket, err)
	}
	var resp Response
	if err := json.NewDecoder(conn).Decode(&resp); err != nil {
		return nil, fmt.Errorf("%w: read %s answer from %s: %v", ErrUnavailable, req.Op, socket, err)
	}
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}
