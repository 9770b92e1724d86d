package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/controller/explain"
	"github.com/netseg/netseg/controller/policy"
)

// requestTimeout bounds one request, the wait for its sync included.
const requestTimeout = 30 * time.Second

// The socket's limits. A client has readTimeout to send its whole
// request, of at most maxRequest bytes (a registration is a few hundred
// bytes; GC's list of attachments of a full node some hundred KB); one that
// sends nothing is dropped then, so idle clients hold a goroutine and a
// descriptor for seconds, not forever. At most maxConns connections are
// open at once: past that a new one is answered "busy" and closed. At
// most maxHandling requests are handled at once, so a flood of complete
// requests queues instead of holding the sync loop's every waiter.
const (
	readTimeout = 5 * time.Second
	maxRequest  = 4 << 20
	maxConns    = 4096
	maxHandling = 256
)

// listen creates the socket, 0600, owned by the agent's user (root):
// only root may connect, whatever the directory. A directory the agent
// makes is 0700; one that exists (/tmp, a hostPath volume) is left as it
// is. A socket left by a previous run is replaced; any other file at the
// path is not touched, and listening fails.
func (a *Agent) listen() (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(a.cfg.Socket), 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := removeSocket(a.cfg.Socket); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", a.cfg.Socket)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", a.cfg.Socket, err)
	}
	if err := os.Chmod(a.cfg.Socket, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", a.cfg.Socket, err)
	}
	return ln, nil
}

// removeSocket removes the socket at path, if there is one; a file of
// another kind there is an error and stays.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("socket path %s: %w", path, err)
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("socket path %s holds a %s, not a socket: not removing it", path, fileKind(fi.Mode()))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove old socket %s: %w", path, err)
	}
	return nil
}

func fileKind(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m.Type() == os.ModeSymlink:
		return "symbolic link"
	}
	return "file of mode " + m.Type().String()
}

// Backoff of the accept loop after an error that may pass (no file
// descriptors left, a connection aborted before it was accepted).
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// serve accepts connections until ln is closed. An accept error that may
// pass is retried after a growing pause, logged and counted; once ln
// fails for good while the agent runs, the agent is unhealthy (CNI ADDs
// and DELs can no longer reach it), and says so in /healthz.
func (a *Agent) serve(ctx context.Context, ln net.Listener) {
	backoff := time.Duration(0)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return // closed by Run, which is ending
			}
			if !retryable(err) {
				a.setServeErr(fmt.Errorf("agent socket %s stopped accepting: %w", a.cfg.Socket, err))
				return
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			a.metrics.AcceptErrors.Inc()
			a.setAcceptErr(err)
			a.log.Warn("agent socket: accept failed; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			continue
		}
		if backoff != 0 {
			backoff = 0
			a.setAcceptErr(nil)
			a.log.Info("agent socket: accepting again")
		}
		if a.conns.Add(1) > maxConns {
			a.conns.Add(-1)
			a.metrics.Refused.Inc()
			_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
			_ = json.NewEncoder(conn).Encode(&agent.Response{Version: agent.Version,
				Error: fmt.Sprintf("agent busy: %d connections open; try again", maxConns)})
			conn.Close()
			continue
		}
		a.handlers.Add(1)
		go func() {
			defer a.handlers.Done()
			defer a.conns.Add(-1)
			a.handleConn(ctx, conn)
		}()
	}
}

func (a *Agent) handleConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(readTimeout))
	var req agent.Request
	resp := &agent.Response{Version: agent.Version}
	limited := &io.LimitedReader{R: conn, N: maxRequest + 1}
	err := json.NewDecoder(limited).Decode(&req)
	if err != nil && isTimeout(err) {
		a.metrics.Refused.Inc()
		return // an idle client: nothing to answer
	}
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	if limited.N <= 0 {
		a.metrics.Refused.Inc()
		resp.Error = fmt.Sprintf("request larger than %d bytes: refused", maxRequest)
	} else if err != nil {
		resp.Error = fmt.Sprintf("malformed request: %v", err)
	} else if req.Version != agent.Version {
		resp.Error = fmt.Sprintf("protocol version %d is not supported (this agent speaks %d)", req.Version, agent.Version)
	} else {
		ctx, cancel := context.WithTimeout(ctx, requestTimeout)
		start := time.Now()
		var err error
		select {
		case a.handling <- struct{}{}:
			resp, err = a.Handle(ctx, req)
			<-a.handling
		case <-ctx.Done():
			err = fmt.Errorf("agent busy: %d requests being handled: %w", maxHandling, ctx.Err())
		}
		cancel()
		result := "ok"
		if err != nil {
			result = "error"
			resp.Error = err.Error()
		}
		a.metrics.Requests.WithLabelValues(string(req.Op), result).Inc()
		if req.Op == agent.OpAdd && err == nil {
			a.metrics.AddToKernel.Observe(time.Since(start).Seconds())
		}
		a.log.Debug("request", "op", req.Op, "result", result, "took", time.Since(start), "err", resp.Error)
	}
	_ = json.NewEncoder(conn).Encode(resp)
}

// claim makes sure no other live registration holds one of ep's
// addresses: one whose interface still exists is a conflict, and the ADD
// is refused; one whose interface is gone (its DEL was lost, and IPAM gave
// the address out again) is stale, and is removed, so that the new
// container never inherits the old one's rules.
func (a *Agent) claim(ep agent.Endpoint) error {
	for _, other := range a.reg.Claimants(ep) {
		oid := EndpointID(other.Attachment)
		if other.HostIface != "" {
			live, err := a.kernel.LinkExists(other.HostIface)
			if err != nil {
				return fmt.Errorf("endpoint %s: its addresses %v are registered to %s (%s/%s), and whether its interface %s exists is unknown (%w): refused",
					EndpointID(ep.Attachment), ep.IPs, oid, other.Namespace, other.Name, other.HostIface, err)
			}
			if live {
				return fmt.Errorf("endpoint %s (%s/%s): its addresses %v are registered to %s (%s/%s), whose interface %s exists: refused",
					EndpointID(ep.Attachment), ep.Namespace, ep.Name, ep.IPs, oid, other.Namespace, other.Name, other.HostIface)
			}
		}
		if _, err := a.reg.Delete(other.Attachment); err != nil {
			return fmt.Errorf("endpoint %s: remove the stale registration %s holding its addresses: %w", EndpointID(ep.Attachment), oid, err)
		}
		a.log.Warn("removed a stale registration holding a new endpoint's addresses (its interface is gone)",
			"stale", oid, "pod", other.Namespace+"/"+other.Name, "ips", other.IPs, "new", EndpointID(ep.Attachment))
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// retryable reports whether an accept error may pass: the process or the
// system out of descriptors or memory, a connection aborted before it was
// accepted, an interrupted call.
func retryable(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED, syscall.EINTR, syscall.EAGAIN} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// setAcceptErr records that accepting fails now (nil: it works again).
func (a *Agent) setAcceptErr(err error) {
	a.mu.Lock()
	a.acceptErr = err
	a.mu.Unlock()
}

// setServeErr records that the socket server stopped for good.
func (a *Agent) setServeErr(err error) {
	a.log.Error("agent socket stopped; CNI requests cannot reach the agent until it restarts", "err", err)
	a.mu.Lock()
	a.serveErr = err
	a.mu.Unlock()
}

// Healthy reports whether every part that must keep running does: nil,
// or what stopped.
func (a *Agent) Healthy() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.serveErr
}

// Handle answers one request. It never returns a nil response.
func (a *Agent) Handle(ctx context.Context, req agent.Request) (*agent.Response, error) {
	resp := &agent.Response{Version: agent.Version}
	needEndpoint := req.Op == agent.OpAdd || req.Op == agent.OpDel || req.Op == agent.OpCheck || req.Op == agent.OpQuarantine
	if needEndpoint && req.Endpoint == nil {
		return resp, fmt.Errorf("%s: the request has no endpoint", req.Op)
	}
	switch req.Op {
	case agent.OpAdd:
		return resp, a.add(ctx, *req.Endpoint, resp)
	case agent.OpDel:
		known, err := a.reg.Delete(req.Endpoint.Attachment)
		if err != nil || !known {
			return resp, err
		}
		return resp, a.waitSynced(ctx, a.requestSync())
	case agent.OpCheck:
		return resp, a.check(*req.Endpoint, resp)
	case agent.OpList:
		eps, _ := a.reg.List()
		resp.Endpoints = a.withZones(wire(eps))
		return resp, nil
	case agent.OpGC:
		keep := map[string]bool{}
		for _, k := range req.Keep {
			keep[EndpointID(k)] = true
		}
		// valid-attachments lists one network's attachments: endpoints of
		// other networks are not this GC's to remove.
		removed, err := a.reg.Retain(func(ep agent.Endpoint) bool {
			return ep.Network != req.Network || keep[EndpointID(ep.Attachment)]
		})
		if err != nil {
			return resp, err
		}
		resp.Removed = len(removed)
		if len(removed) == 0 {
			return resp, nil
		}
		return resp, a.waitSynced(ctx, a.requestSync())
	case agent.OpStatus:
		resp.Status = a.Status()
		resp.Ready = resp.Status.Ready
		return resp, nil
	case agent.OpQuarantine:
		if err := a.reg.Quarantine(*req.Endpoint); err != nil {
			return resp, err
		}
		return resp, a.waitSynced(ctx, a.requestSync())
	case agent.OpExplain:
		if req.Explain == nil {
			return resp, errors.New("explain: the request names no connection")
		}
		return resp, a.explain(*req.Explain, resp)
	}
	return resp, fmt.Errorf("unknown op %q", req.Op)
}

// add registers the endpoint and answers once a sync that includes it has
// put its rules in the kernel, verified by reading them back.
func (a *Agent) add(ctx context.Context, ep agent.Endpoint, resp *agent.Response) error {
	if ep.HostIface != "" {
		live, err := a.kernel.LinkExists(ep.HostIface)
		if err != nil {
			return fmt.Errorf("endpoint %s: %w", EndpointID(ep.Attachment), err)
		}
		if !live {
			return fmt.Errorf("endpoint %s: host interface %q does not exist on this node", EndpointID(ep.Attachment), ep.HostIface)
		}
	}
	// An ADD while the agent starts waits for its first policy (within the
	// request's time) rather than fail at once.
	select {
	case <-a.policyLoaded:
	case <-ctx.Done():
		return fmt.Errorf("endpoint %s: no policy loaded yet (%w); the interface is not registered", EndpointID(ep.Attachment), ctx.Err())
	}
	a.mu.Lock()
	hostErr := a.hostErr
	a.mu.Unlock()
	if bypassed(hostErr) {
		return fmt.Errorf("endpoint %s: the node cannot segment it: %w; the interface is not registered", EndpointID(ep.Attachment), hostErr)
	}
	if err := a.claim(ep); err != nil {
		return err
	}
	if err := a.reg.Put(ep); err != nil {
		return err
	}
	id := EndpointID(ep.Attachment)
	fail := func(err error) error {
		if qerr := a.reg.Quarantine(ep); qerr != nil {
			a.log.Error("quarantine", "id", id, "err", qerr)
		}
		a.requestSync()
		return fmt.Errorf("endpoint %s (%s/%s): %w; its interface is quarantined", id, ep.Namespace, ep.Name, err)
	}
	if err := a.waitSynced(ctx, a.requestSync()); err != nil {
		return fail(err)
	}
	if err := a.dp.CheckEndpointChains(id); err != nil {
		return fail(err)
	}
	resp.Endpoints = a.withZones([]agent.Endpoint{ep})
	return nil
}

func (a *Agent) check(ep agent.Endpoint, resp *agent.Response) error {
	id := EndpointID(ep.Attachment)
	reg, ok := a.reg.Get(ep.Attachment)
	if !ok {
		return fmt.Errorf("endpoint %s is not registered with the agent", id)
	}
	if err := a.dp.CheckEndpoint(id); err != nil {
		return err
	}
	resp.Endpoints = a.withZones([]agent.Endpoint{reg})
	return nil
}

// withZones fills in each endpoint's zone from the last compiled policy.
func (a *Agent) withZones(eps []agent.Endpoint) []agent.Endpoint {
	a.mu.Lock()
	c := a.compiled
	a.mu.Unlock()
	out := make([]agent.Endpoint, len(eps))
	for i, ep := range eps {
		if c != nil {
			if er, ok := c.Endpoint(ep.Namespace, ep.Name); ok {
				ep.Zone = er.Zone
			}
		}
		out[i] = ep
	}
	return out
}

// Status reports the agent's state.
func (a *Agent) Status() *agent.Status {
	snap := a.source.Snapshot()
	gen, polErr := snap.Generation, snap.Err
	a.mu.Lock()
	defer a.mu.Unlock()
	st := &agent.Status{Mode: a.source.Mode(), Ready: a.readyLocked(), PolicyGeneration: gen, PolicySource: a.source.Name(),
		Endpoints: a.endpoints, LastSync: a.lastSync, Warnings: a.warnings}
	if polErr != nil {
		st.LastError = polErr.Error()
	}
	if a.syncErr != nil {
		st.LastSyncError = a.syncErr.Error()
	}
	st.Loops = a.loopsLocked(polErr)
	for _, l := range st.Loops {
		if l.Error != "" && l.Name != "policy-source" && l.Name != "kernel-sync" { // those two have fields of their own
			st.Warnings = append(append([]string(nil), st.Warnings...), l.Error)
		}
	}
	return st
}

// loopsLocked reports each background loop's state, with a.mu held;
// polErr is the policy source's error in force.
func (a *Agent) loopsLocked(polErr error) []agent.Loop {
	loop := func(name string, on bool, err error, state string) agent.Loop {
		switch {
		case !on:
			return agent.Loop{Name: name, State: agent.LoopOff}
		case err == nil:
			return agent.Loop{Name: name, State: agent.LoopOK}
		}
		return agent.Loop{Name: name, State: state, Error: err.Error()}
	}
	socket := loop("socket", true, a.acceptErr, agent.LoopRetrying)
	if a.serveErr != nil {
		socket = loop("socket", true, a.serveErr, agent.LoopStopped)
	}
	flowsOn := a.cfg.Flows.FlowLog != ""
	return []agent.Loop{
		socket,
		loop("policy-source", true, polErr, agent.LoopFailing),
		loop("kernel-sync", true, a.syncErr, agent.LoopRetrying),
		loop("flow-reader-nflog", flowsOn, a.readerErr["nflog"], agent.LoopStopped),
		loop("flow-reader-conntrack", flowsOn, a.readerErr["conntrack"], agent.LoopStopped),
		loop("flow-writer", flowsOn, a.logErr, agent.LoopRetrying),
		loop("cni-chain", a.chain != nil, a.chainErr, agent.LoopFailing),
		loop("host-check", a.host != nil, a.hostErr, agent.LoopFailing),
		loop("node-addresses", a.nodeAddrsOf != nil, a.nodeErr, agent.LoopFailing),
		loop("conntrack-check", a.ctFill != nil, a.ctErr, agent.LoopFailing),
		loop("revoke", a.remark != nil, a.remarkErr, agent.LoopRetrying),
		loop("fail-open-adopt", a.failOpenDir != "", a.failOpenErr, agent.LoopRetrying),
	}
}

// explain decides a connection between registered endpoints or addresses.
func (a *Agent) explain(x agent.Explain, resp *agent.Response) error {
	a.mu.Lock()
	c := a.compiled
	a.mu.Unlock()
	if c == nil {
		return errors.New("explain: no policy compiled yet")
	}
	from, err := a.peer(x.From)
	if err != nil {
		return fmt.Errorf("explain: --from: %w", err)
	}
	to, err := a.peer(x.To)
	if err != nil {
		return fmt.Errorf("explain: --to: %w", err)
	}
	port, proto, err := explain.ParsePort(x.Port)
	if err != nil {
		return fmt.Errorf("explain: --port: %w", err)
	}
	b, err := json.Marshal(explain.Explain(c, from, to, port, proto))
	if err != nil {
		return fmt.Errorf("explain: encode: %w", err)
	}
	resp.Explanation = b
	return nil
}

// peer resolves "namespace/name" to a registered endpoint (with its
// labels and addresses), or parses an address.
func (a *Agent) peer(ref string) (policy.Peer, error) {
	_, addrErr := netip.ParseAddr(ref)
	_, prefixErr := netip.ParsePrefix(ref)
	if ns, name, ok := strings.Cut(ref, "/"); ok && addrErr != nil && prefixErr != nil {
		a.mu.Lock()
		local := a.local
		a.mu.Unlock()
		for _, pe := range local {
			if pe.Namespace == ns && pe.Name == name {
				return policy.Peer{Namespace: ns, Name: name, Labels: pe.Labels, IPs: pe.IPs}, nil
			}
		}
		return policy.Peer{}, fmt.Errorf("no endpoint %s is registered on this node", ref)
	}
	return explain.ParsePeer(ref, "")
}

// wire returns the registrations in the protocol's form.
func wire(eps []Registered) []agent.Endpoint {
	out := make([]agent.Endpoint, len(eps))
	for i, ep := range eps {
		out[i] = ep.Endpoint
	}
	return out
}
