// Package fakeagent is an in-memory netseg agent for the CNI plugin's tests:
// it serves the agent socket protocol (api/agent) on a unix socket, keeps a
// registry of endpoints and records every request, so a test can check what
// the plugin sent and make the agent fail on purpose. It touches no kernel.
package fakeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
)

// Agent is a fake agent listening on Socket.
type Agent struct {
	Socket string

	mu        sync.Mutex
	ln        net.Listener
	requests  []agent.Request
	endpoints map[agent.Attachment]agent.Endpoint
	// Set by tests:
	failAdd      string // error answered to OpAdd
	rulesMissing bool   // OpCheck answers that the rules are not in the kernel
	notReady     bool   // OpStatus answers Ready=false
	hang         time.Duration
}

// Start serves a fake agent on agent.sock in dir (keep dir short: a unix
// socket path has at most 107 bytes). It stops when t ends.
func Start(t testing.TB, dir string) *Agent {
	t.Helper()
	a := &Agent{Socket: filepath.Join(dir, "agent.sock"), endpoints: map[agent.Attachment]agent.Endpoint{}}
	ln, err := net.Listen("unix", a.Socket)
	if err != nil {
		t.Fatalf("fakeagent: listen %s: %v", a.Socket, err)
	}
	a.ln = ln
	t.Cleanup(a.Stop)
	go a.serve()
	return a
}

// Stop closes the socket: later calls find no agent (connection refused
// while the socket file exists, no such file once removed).
func (a *Agent) Stop() { _ = a.ln.Close() }

// FailAdd makes OpAdd answer msg ("" restores success).
func (a *Agent) FailAdd(msg string) { a.mu.Lock(); a.failAdd = msg; a.mu.Unlock() }

// RulesMissing makes OpCheck answer that the endpoint's rules are gone.
func (a *Agent) RulesMissing(v bool) { a.mu.Lock(); a.rulesMissing = v; a.mu.Unlock() }

// NotReady makes OpStatus answer Ready=false.
func (a *Agent) NotReady(v bool) { a.mu.Lock(); a.notReady = v; a.mu.Unlock() }

// Hang delays every answer by d, to run the client into its timeout.
func (a *Agent) Hang(d time.Duration) { a.mu.Lock(); a.hang = d; a.mu.Unlock() }

// Requests returns the requests received so far, oldest first.
func (a *Agent) Requests() []agent.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]agent.Request(nil), a.requests...)
}

// Last returns the last request of op, or nil.
func (a *Agent) Last(op agent.Op) *agent.Request {
	reqs := a.Requests()
	for i := len(reqs) - 1; i >= 0; i-- {
		if reqs[i].Op == op {
			return &reqs[i]
		}
	}
	return nil
}

// Endpoints returns the registered endpoints.
func (a *Agent) Endpoints() map[agent.Attachment]agent.Endpoint {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[agent.Attachment]agent.Endpoint, len(a.endpoints))
	for k, v := range a.endpoints {
		out[k] = v
	}
	return out
}

func (a *Agent) serve() {
	for {
		c, err := a.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var req agent.Request
			if err := json.NewDecoder(c).Decode(&req); err != nil {
				return
			}
			resp := a.handle(req)
			a.mu.Lock()
			hang := a.hang
			a.mu.Unlock()
			time.Sleep(hang)
			resp.Version = agent.Version
			_ = json.NewEncoder(c).Encode(resp)
		}()
	}
}

func (a *Agent) handle(req agent.Request) agent.Response {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests = append(a.requests, req)
	if req.Version != agent.Version {
		return agent.Response{Error: fmt.Sprintf("protocol version %d, agent speaks %d", req.Version, agent.Version)}
	}
	if err := needEndpoint(req); err != nil {
		return agent.Response{Error: err.Error()}
	}
	switch req.Op {
	case agent.OpAdd:
		if a.failAdd != "" {
			return agent.Response{Error: a.failAdd}
		}
		ep := *req.Endpoint
		ep.Zone = "unzoned"
		a.endpoints[ep.Attachment] = ep
		return agent.Response{Endpoints: []agent.Endpoint{ep}}
	case agent.OpDel:
		delete(a.endpoints, req.Endpoint.Attachment)
		return agent.Response{}
	case agent.OpCheck:
		ep, ok := a.endpoints[req.Endpoint.Attachment]
		if !ok {
			return agent.Response{Error: fmt.Sprintf("endpoint %s/%s is not registered", req.Endpoint.ContainerID, req.Endpoint.IfName)}
		}
		if a.rulesMissing {
			return agent.Response{Error: fmt.Sprintf("rules of endpoint %s/%s are missing from the kernel", ep.ContainerID, ep.IfName)}
		}
		return agent.Response{Endpoints: []agent.Endpoint{ep}}
	case agent.OpQuarantine:
		return agent.Response{}
	case agent.OpList:
		var eps []agent.Endpoint
		for _, ep := range a.endpoints {
			eps = append(eps, ep)
		}
		return agent.Response{Endpoints: eps}
	case agent.OpGC:
		keep := map[agent.Attachment]bool{}
		for _, k := range req.Keep {
			keep[k] = true
		}
		removed := 0
		for k := range a.endpoints {
			if !keep[k] {
				delete(a.endpoints, k)
				removed++
			}
		}
		return agent.Response{Removed: removed}
	case agent.OpStatus:
		return agent.Response{Ready: !a.notReady}
	}
	return agent.Response{Error: fmt.Sprintf("unknown op %q", req.Op)}
}

func needEndpoint(req agent.Request) error {
	switch req.Op {
	case agent.OpAdd, agent.OpDel, agent.OpCheck, agent.OpQuarantine:
		if req.Endpoint == nil {
			return errors.New(string(req.Op) + " needs an endpoint")
		}
	}
	return nil
}
