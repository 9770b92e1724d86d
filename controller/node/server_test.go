package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/dataplane"
)

// fakeKernel and fakeDataplane stand in for the kernel where a test needs
// an agent but no sync.
type fakeKernel struct{}

func (fakeKernel) LinkExists(string) (bool, error) { return true, nil }
func (fakeKernel) Fd() int                         { return -1 }

type fakeDataplane struct{ Dataplane }

func (fakeDataplane) Sync(*dataplane.Ruleset) error { return nil }

func testAgent(t *testing.T, socket string) *Agent {
	t.Helper()
	reg, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	a, err := New(Config{Socket: socket, StateDir: t.TempDir()}, Parts{Kernel: fakeKernel{}, Dataplane: fakeDataplane{},
		Registry: reg, Source: NewDirSource(t.TempDir(), time.Second, log, nil), Log: log, Metrics: NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// scriptedListener returns the scripted errors from Accept, then real
// connections from the wrapped listener. With gate set, the Accept after
// the last error first waits for gate to be closed.
type scriptedListener struct {
	net.Listener
	errs   []error
	gate   chan struct{}
	waited chan struct{} // closed when Accept waits at the gate
}

func (l *scriptedListener) Accept() (net.Conn, error) {
	if len(l.errs) == 0 && l.gate != nil {
		close(l.waited)
		<-l.gate
		l.gate = nil
	}
	if len(l.errs) > 0 {
		err := l.errs[0]
		l.errs = l.errs[1:]
		return nil, err
	}
	return l.Listener.Accept()
}

// TestServeRetriesTemporaryAcceptErrors: out of file descriptors (EMFILE)
// and an aborted connection are retried, and the next request is
// answered; a listener that fails for good makes the agent unhealthy.
func TestServeRetriesTemporaryAcceptErrors(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a := testAgent(t, socket)
	ln, err := a.listen()
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	emfile := &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	aborted := &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.ECONNABORTED)}
	sl := &scriptedListener{Listener: ln, errs: []error{emfile, emfile, aborted}, gate: make(chan struct{}), waited: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.serve(ctx, sl) }()
	<-sl.waited // every error returned; no connection accepted since
	if l := loopNamed(t, a.Status(), "socket"); l.State != agent.LoopRetrying || !strings.Contains(l.Error, "connection abort") {
		t.Fatalf("socket loop while accept fails: %+v, want retrying with the error", l)
	}
	if err := a.Healthy(); err != nil {
		t.Fatalf("unhealthy while accept errors may pass: %v", err)
	}
	close(sl.gate)
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if _, err := agent.Call(rctx, socket, agent.Request{Op: agent.OpList}); err != nil {
		t.Fatalf("a request after EMFILE and an aborted connection: %v", err)
	}
	if err := a.Healthy(); err != nil {
		t.Fatalf("unhealthy after errors that pass: %v", err)
	}
	if l := loopNamed(t, a.Status(), "socket"); l.State != agent.LoopOK || l.Error != "" {
		t.Fatalf("socket loop once accepting again: %+v, want ok", l)
	}
	cancel()
	ln.Close()
	<-done

	// A listener that fails for good while the agent runs.
	ln2, err := a.listen()
	if err != nil {
		t.Fatal(err)
	}
	bad := &scriptedListener{Listener: ln2, errs: []error{errors.New("listener broken")}}
	a.serve(context.Background(), bad)
	ln2.Close()
	if err := a.Healthy(); err == nil || !strings.Contains(err.Error(), "stopped accepting") {
		t.Fatalf("Healthy = %v, want the socket's failure", err)
	}
	if st := a.Status(); !strings.Contains(strings.Join(st.Warnings, "\n"), "stopped accepting") {
		t.Fatalf("status warnings %q do not name the socket's failure", st.Warnings)
	}
	if l := loopNamed(t, a.Status(), "socket"); l.State != agent.LoopStopped {
		t.Fatalf("socket loop after a lasting failure: %+v, want stopped", l)
	}
}

// loopNamed finds a background loop's state in st.
func loopNamed(t *testing.T, st *agent.Status, name string) agent.Loop {
	t.Helper()
	for _, l := range st.Loops {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("status has no loop %q: %+v", name, st.Loops)
	return agent.Loop{}
}

// TestListenTouchesOnlyItsOwn: an existing directory keeps its mode (a
// 1777 /tmp stays 1777), and a file that is not a socket at the path is
// neither removed nor replaced.
func TestListenTouchesOnlyItsOwn(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "agent.sock")
	a := testAgent(t, socket)
	ln, err := a.listen()
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(socket); err != nil || fi.Mode()&os.ModePerm != 0o600 {
		t.Fatalf("socket: %v, %v; want mode 0600", fi, err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // leave it behind, as a crash does
	ln.Close()
	if fi, err := os.Stat(dir); err != nil || fi.Mode()&os.ModePerm != 0o777 || fi.Mode()&os.ModeSticky == 0 {
		t.Fatalf("directory after listen: %v, %v; want mode 1777 kept", fi, err)
	}
	// A socket left behind is replaced.
	if ln, err = a.listen(); err != nil {
		t.Fatalf("replace a stale socket: %v", err)
	}
	ln.Close()
	// A regular file is not.
	file := filepath.Join(dir, "precious")
	if err := os.WriteFile(file, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	a = testAgent(t, file)
	if _, err := a.listen(); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("listen over a regular file = %v, want refused", err)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "data" {
		t.Fatalf("the file at the socket path was changed: %q, %v", b, err)
	}
	if err := removeSocket(file); err == nil {
		t.Fatal("cleanup would remove a regular file at the socket path")
	}
}

// TestKeepChained: a chain check that fails makes the agent not ready and
// names the problem in status; one that re-chained is counted, and the
// agent is ready again.
func TestKeepChained(t *testing.T) {
	a := testAgent(t, filepath.Join(t.TempDir(), "agent.sock"))
	a.ready = true // as after a good sync
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // one check, then keepChained returns
	a.chain = func() (string, error) { return "", errors.New("no network configuration in /etc/cni/net.d") }
	a.keepChained(ctx)
	if a.Ready() {
		t.Fatal("ready while the CNI configuration does not chain netseg")
	}
	if st := a.Status(); st.Ready || !strings.Contains(strings.Join(st.Warnings, "\n"), "no network configuration") {
		t.Fatalf("status: ready %v, warnings %q", st.Ready, st.Warnings)
	}
	a.chain = func() (string, error) { return "/etc/cni/net.d/10-k8s.conflist", nil }
	a.keepChained(ctx)
	if !a.Ready() {
		t.Fatal("not ready after the chain was fixed")
	}
	if n := counterValue(t, a.metrics, "netseg_cni_rechained_total"); n != 1 {
		t.Fatalf("rechained counted %v times, want 1", n)
	}
}

func counterValue(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	mfs, err := m.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

func (fakeDataplane) CheckEndpointChains(string) error              { return nil }
func (fakeDataplane) Collect() error                                { return nil }
func (fakeDataplane) Garbage() bool                                 { return false }
func (fakeDataplane) CheckDrift() (string, error)                   { return "", nil }
func (fakeDataplane) LastSyncParts() (render, commit time.Duration) { return 0, 0 }
func (fakeDataplane) ReleaseFailOpen([]netip.Addr) error            { return nil }

// TestAddWaitsForFirstPolicy: an ADD that comes while the agent has no
// valid policy yet waits for one (within its time) instead of failing.
func TestAddWaitsForFirstPolicy(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "zones.yaml")
	if err := os.WriteFile(bad, []byte("kind: Zone\nmetadata: {name: [not, a, name]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(t.TempDir(), "agent.sock")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Socket: socket, StateDir: t.TempDir()}, Parts{Kernel: fakeKernel{}, Dataplane: fakeDataplane{},
		Registry: reg, Source: NewDirSource(dir, 10*time.Millisecond, log, nil), Log: log, Metrics: NewMetrics()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	defer func() { cancel(); <-ran }()

	ep := agent.Endpoint{Attachment: agent.Attachment{ContainerID: "c1", IfName: "eth0"}, Namespace: "shop", Name: "web",
		IPs: []string{"10.88.0.2/24"}}
	add := func(timeout time.Duration) error {
		rctx, rcancel := context.WithTimeout(context.Background(), timeout)
		defer rcancel()
		_, err := a.Handle(rctx, agent.Request{Version: agent.Version, Op: agent.OpAdd, Endpoint: &ep})
		return err
	}
	// The source is invalid: the agent has loaded no policy. An ADD waits
	// for one until its time is up, and registers (or quarantines) nothing.
	waitFor(t, func() bool { _, _, err := a.source.(*DirSource).Current(); return err != nil })
	if err := add(300 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "no policy loaded yet") {
		t.Fatalf("ADD without a policy = %v, want it to wait and then say no policy is loaded", err)
	}
	if eps, q := reg.List(); len(eps) != 0 || len(q) != 0 {
		t.Fatalf("an ADD that got no policy left %d registered, %d quarantined", len(eps), len(q))
	}
	// Once the file is good, a waiting ADD goes through.
	added := make(chan error, 1)
	go func() { added <- add(30 * time.Second) }()
	if err := os.WriteFile(bad, []byte("apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: web}\nspec: {defaultAction: Allow, podSelector: {matchLabels: {app: web}}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := <-added; err != nil {
		t.Fatalf("ADD while the first policy loads: %v", err)
	}
}

// waitFor polls cond until it holds (a minute at most).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// linksKernel has the host interfaces mapped to true; a lookup of one
// mapped to false fails (a netlink error: the answer is unknown).
type linksKernel map[string]bool

func (k linksKernel) LinkExists(name string) (bool, error) {
	if up, known := k[name]; known && !up {
		return false, errors.New("netlink: no buffer space available")
	}
	return k[name], nil
}
func (linksKernel) Fd() int { return -1 }

// TestOneAddressOneEndpoint: an address held by a live registration
// cannot be registered again (the ADD is refused, naming the holder); one
// held by a registration whose interface is gone (a lost DEL, the address
// given out again) is taken over, and the stale registration removed.
func TestOneAddressOneEndpoint(t *testing.T) {
	a := testAgent(t, filepath.Join(t.TempDir(), "agent.sock"))
	links := linksKernel{"veth1": true, "veth2": true}
	a.kernel = links
	old := agent.Endpoint{Attachment: agent.Attachment{ContainerID: "old", IfName: "eth0"}, Namespace: "shop", Name: "web",
		HostIface: "veth1", IPs: []string{"10.88.0.2/24"}}
	if err := a.reg.Put(old); err != nil {
		t.Fatal(err)
	}
	newer := agent.Endpoint{Attachment: agent.Attachment{ContainerID: "new", IfName: "eth0"}, Namespace: "pay", Name: "api",
		HostIface: "veth2", IPs: []string{"10.88.0.9/24", "10.88.0.2/24"}}
	if err := a.claim(newer); err == nil || !strings.Contains(err.Error(), "registered to old/eth0") {
		t.Fatalf("claim while the holder lives = %v, want refused naming it", err)
	}
	if _, ok := a.reg.Get(old.Attachment); !ok {
		t.Fatal("the live holder was removed")
	}
	links["veth1"] = false // the lookup fails: unknown is not gone
	if err := a.claim(newer); err == nil || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("claim while the holder's lookup fails = %v, want refused", err)
	}
	if _, ok := a.reg.Get(old.Attachment); !ok {
		t.Fatal("a holder whose lookup failed was removed")
	}
	delete(links, "veth1") // the old container is gone; its DEL never came
	if err := a.claim(newer); err != nil {
		t.Fatalf("claim after the holder's interface went: %v", err)
	}
	if _, ok := a.reg.Get(old.Attachment); ok {
		t.Fatal("the stale registration still holds the address")
	}
	// Its own attachment is no claimant (a repeated ADD).
	if err := a.reg.Put(newer); err != nil {
		t.Fatal(err)
	}
	if err := a.claim(newer); err != nil {
		t.Fatalf("a repeated ADD of the same attachment: %v", err)
	}
}

// TestRestartKeepsEndpointsItCannotCheck: at start the agent drops the
// registrations whose interface is gone, and keeps those whose lookup
// fails: a netlink error must not unprogram a live container.
func TestRestartKeepsEndpointsItCannotCheck(t *testing.T) {
	a := testAgent(t, filepath.Join(t.TempDir(), "agent.sock"))
	a.kernel = linksKernel{"veth-live": true, "veth-unknown": false}
	for i, iface := range []string{"veth-live", "veth-unknown", "veth-gone"} {
		ep := testEndpoint(iface)
		ep.HostIface = iface
		ep.IPs = []string{fmt.Sprintf("10.88.0.%d/24", 2+i)}
		if err := a.reg.Put(ep); err != nil {
			t.Fatal(err)
		}
	}
	a.reconcileRegistry()
	var kept []string
	eps, _ := a.reg.List()
	for _, ep := range eps {
		kept = append(kept, ep.HostIface)
	}
	slices.Sort(kept)
	if want := []string{"veth-live", "veth-unknown"}; !slices.Equal(kept, want) {
		t.Fatalf("registrations after the start = %v, want %v", kept, want)
	}
}

// TestRegistrationBounds: addresses that would make the pod network the
// whole address space, IPv4-mapped ones and link-local ones are refused.
func TestRegistrationBounds(t *testing.T) {
	r, err := OpenRegistry(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for ip, ok := range map[string]bool{
		"10.88.0.2/24": true, "fd00:88::2/64": true, "10.0.0.2/8": true,
		"0.0.0.0/0": false, "10.88.0.2/0": false, "10.0.0.2/4": false, "fd00::2/16": false,
		"::ffff:10.88.0.2/120": false, "fe80::2/64": false, "127.0.0.2/8": false, "224.0.0.5/24": false,
	} {
		ep := testEndpoint("c")
		ep.IPs = []string{ip}
		err := r.Put(ep)
		if (err == nil) != ok {
			t.Errorf("register %s: %v, want accepted %v", ip, err, ok)
		}
	}
}

// TestSocketAbuse: a request over the size limit is refused with a clear
// error (and the agent reads no more of it), and 2,000 clients that
// connect and send nothing delay no real request; they are dropped after
// the read timeout.
func TestSocketAbuse(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "agent.sock")
	a := testAgent(t, socket)
	ln, err := a.listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.serve(ctx, ln) }()
	defer func() { cancel(); ln.Close(); <-done }()

	// Over the limit: 5 MiB of a GC request's keep list.
	c, err := net.Dial("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		big := `{"version":1,"op":"gc","keep":[` + strings.Repeat(`{"containerID":"x","ifName":"eth0"},`, 5<<20/36) + `{}]}`
		_, _ = c.Write([]byte(big)) // the agent stops reading: the write may fail
	}()
	var resp agent.Response
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if err := json.NewDecoder(c).Decode(&resp); err != nil || !strings.Contains(resp.Error, "request larger than") {
		t.Fatalf("a 5 MiB request: answer %+v, %v; want refused for its size", resp, err)
	}
	c.Close()

	// 2,000 idle clients, then a real request.
	idle := make([]net.Conn, 0, 2000)
	defer func() {
		for _, c := range idle {
			c.Close()
		}
	}()
	for range 2000 {
		c, err := net.Dial("unix", socket)
		if err != nil {
			t.Fatalf("idle client %d: %v", len(idle), err)
		}
		idle = append(idle, c)
	}
	start := time.Now()
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if _, err := agent.Call(rctx, socket, agent.Request{Op: agent.OpList}); err != nil {
		t.Fatalf("a request among 2,000 idle clients: %v", err)
	}
	if took := time.Since(start); took > readTimeout/2 {
		t.Fatalf("a request among 2,000 idle clients took %v: it waited for them", took)
	}
	t.Logf("a request among 2,000 idle clients took %v", time.Since(start))
	// The idle ones are dropped once the read timeout passes.
	_ = idle[0].SetReadDeadline(time.Now().Add(4 * readTimeout))
	if n, err := idle[0].Read(make([]byte, 1)); err == nil || isTimeout(err) {
		t.Fatalf("an idle client was not dropped: read %d, %v", n, err)
	}
}
