package node_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/controller/node"
	"github.com/netseg/netseg/dataplane"
	"github.com/netseg/netseg/e2e/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

// Test address conventions: pods on 10.88.0.0/24 behind a bridge in the
// lab node.
const (
	podSubnet = "10.88.0.0/24"
	timeout   = 300 * time.Millisecond
)

type env struct {
	t      *testing.T
	node   *lab.Netns
	dir    string // policy directory
	state  string
	socket string
	cancel context.CancelFunc
	done   chan struct{}
	agent  *node.Agent
	ns     *dataplane.Namespace
}

func copyExamples(t *testing.T, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS("../../examples")); err != nil {
		t.Fatalf("examples: %v", err)
	}
}

func newEnv(t *testing.T) *env {
	l := lab.New(t)
	e := &env{t: t, node: l.Node("node"), dir: t.TempDir(), state: t.TempDir()}
	e.socket = filepath.Join(t.TempDir(), "agent.sock")
	copyExamples(t, e.dir)
	e.start()
	return e
}

// start runs an agent in this process, programming the lab node.
func (e *env) start() {
	e.t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	cfg := node.Config{PolicyDir: e.dir, StateDir: e.state, Socket: e.socket, NetNS: e.node.Path,
		PollInterval: 50 * time.Millisecond}.Defaults()
	ns, err := dataplane.OpenNamespace(cfg.NetNS)
	if err != nil {
		e.t.Fatal(err)
	}
	reg, err := node.OpenRegistry(cfg.StateDir)
	if err != nil {
		ns.Close()
		e.t.Fatal(err)
	}
	metrics := node.NewMetrics()
	a, err := node.New(cfg, node.Parts{Kernel: ns, Dataplane: dataplane.New(cfg.Dataplane, ns.Dial, ns.LinkExists),
		Registry: reg, Source: node.NewDirSource(cfg.PolicyDir, cfg.PollInterval, log, metrics.PolicyErrors.Inc),
		NodeAddrs: ns.NodeAddrs, Log: log, Metrics: metrics})
	if err != nil {
		ns.Close()
		e.t.Fatal(err)
	}
	e.ns = ns
	ctx, cancel := context.WithCancel(context.Background())
	e.agent, e.cancel, e.done = a, cancel, make(chan struct{})
	go func() {
		defer close(e.done)
		if err := a.Run(ctx); err != nil {
			e.t.Errorf("agent: %v", err)
		}
	}()
	e.t.Cleanup(e.stop)
	deadline := time.Now().Add(5 * time.Second)
	for !a.Ready() {
		if time.Now().After(deadline) {
			e.t.Fatal("agent not ready after 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	<-e.done
	e.ns.Close()
	e.cancel = nil
}

func (e *env) call(req agent.Request) (*agent.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return agent.Call(ctx, e.socket, req)
}

// register plays the CNI plugin for a lab container.
func (e *env) register(c *lab.Container, ns, name string, labels map[string]string) agent.Endpoint {
	e.t.Helper()
	ep := agent.Endpoint{Attachment: agent.Attachment{ContainerID: c.ID, IfName: c.IfName}, Netns: c.Path,
		Namespace: ns, Name: name, Labels: labels, HostIface: c.HostVeth(e.node),
		IPs: []string{netip.PrefixFrom(c.IP(4), 24).String()}}
	if _, err := e.call(agent.Request{Op: agent.OpAdd, Endpoint: &ep}); err != nil {
		e.t.Fatalf("register %s/%s: %v", ns, name, err)
	}
	return ep
}

// shop/checkout -> pay/payments 8443 is allowed by a dependency;
// ops/monitoring -> pay/payments 8443 is denied by the payments perimeter.
type trio struct {
	checkout, payments, monitoring *lab.Container
	srv                            *lab.Server
}

func (e *env) trio() trio {
	cni := e.node.CNI()
	list := cni.ParseConfList(e.t, lab.Net{Name: "pods", Type: "bridge", Subnet: podSubnet, DataDir: e.t.TempDir()}.ConfList())
	var tr trio
	tr.checkout = cni.MustAdd("checkout", list, lab.Attach{})
	tr.payments = cni.MustAdd("payments", list, lab.Attach{})
	tr.monitoring = cni.MustAdd("monitoring", list, lab.Attach{})
	e.register(tr.checkout, "shop", "checkout", map[string]string{"app": "checkout"})
	e.register(tr.payments, "pay", "payments", map[string]string{"app": "payments"})
	e.register(tr.monitoring, "ops", "monitoring", map[string]string{"app": "monitoring"})
	tr.srv = tr.payments.ListenTCP(netip.AddrPortFrom(tr.payments.IP(4), 8443).String())
	return tr
}

func expect(t *testing.T, what string, err error, allowed bool) {
	t.Helper()
	switch {
	case allowed && err != nil:
		t.Fatalf("%s: want allowed, got %v", what, err)
	case !allowed && !errors.Is(err, lab.ErrNoReply):
		t.Fatalf("%s: want a silent drop, got %v", what, err)
	}
}

func TestStandaloneEnforcesAndFollowsPolicyEdits(t *testing.T) {
	e := newEnv(t)
	tr := e.trio()
	expect(t, "checkout -> payments 8443", tr.checkout.Probe("tcp", tr.srv.Addr, timeout), true)
	expect(t, "monitoring -> payments 8443", tr.monitoring.Probe("tcp", tr.srv.Addr, timeout), false)

	// Edit: drop the dependency entry that allows checkout -> payments.
	deps := filepath.Join(e.dir, "dependencies.yaml")
	b, _ := os.ReadFile(deps)
	edited := strings.Replace(string(b), "port: 8443}]\n  - name: cache", "port: 9443}]\n  - name: cache", 1)
	edited = strings.Replace(edited, "ports: [{protocol: TCP, port: 8443}]\n  - name: payments-pods", "ports: [{protocol: TCP, port: 9443}]\n  - name: payments-pods", 1)
	if edited == string(b) {
		t.Fatal("the edit changed nothing: examples/dependencies.yaml moved on")
	}
	gen := e.agent.Status().PolicyGeneration
	start := time.Now()
	if err := os.WriteFile(deps, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	for {
		if errors.Is(tr.checkout.Probe("tcp", tr.srv.Addr, 100*time.Millisecond), lab.ErrNoReply) {
			break
		}
		if time.Since(start) > time.Second {
			t.Fatalf("the edit did not reach the kernel within 1s")
		}
	}
	t.Logf("policy edit enforced after %v", time.Since(start))
	if g := e.agent.Status().PolicyGeneration; g != gen+1 {
		t.Errorf("policy generation %d, want %d", g, gen+1)
	}

	// An invalid edit changes nothing and is reported.
	if err := os.WriteFile(filepath.Join(e.dir, "broken.yaml"), []byte("kind: Zone\nmetadata: {name: x}\nspec: {defaultAction: Maybe}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for e.agent.Status().LastError == "" {
		if time.Now().After(deadline) {
			t.Fatal("invalid policy not reported in status")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := e.agent.Status()
	if !strings.Contains(st.LastError, "broken.yaml") {
		t.Errorf("status error does not name the file: %s", st.LastError)
	}
	expect(t, "checkout -> payments 8443 after an invalid edit", tr.checkout.Probe("tcp", tr.srv.Addr, timeout), false)
	expect(t, "monitoring -> payments 8443 after an invalid edit", tr.monitoring.Probe("tcp", tr.srv.Addr, timeout), false)
	resp, err := e.call(agent.Request{Op: agent.OpStatus})
	if err != nil || resp.Status == nil || resp.Status.LastError == "" {
		t.Fatalf("status over the socket: %+v, %v", resp, err)
	}
}

func TestRestartKeepsRulesAndRegistry(t *testing.T) {
	e := newEnv(t)
	tr := e.trio()
	// The agent deletes what syncs left behind after a quiet second; compare
	// the settled ruleset.
	time.Sleep(1500 * time.Millisecond)
	before := listTable(t, e.node)
	conn, err := tr.checkout.Dial("tcp", tr.srv.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e.stop()
	// Agent down: rules stay, the established connection lives, denied stays denied.
	if after := listTable(t, e.node); after != before {
		t.Fatalf("stopping the agent changed the ruleset:\n%s\n---\n%s", before, after)
	}
	echo(t, conn)
	expect(t, "monitoring -> payments with the agent down", tr.monitoring.Probe("tcp", tr.srv.Addr, timeout), false)
	e.start()
	if after := listTable(t, e.node); after != before {
		t.Fatalf("the restarted agent made a different ruleset:\n%s\n---\n%s", before, after)
	}
	echo(t, conn)
	resp, err := e.call(agent.Request{Op: agent.OpList})
	if err != nil || len(resp.Endpoints) != 3 {
		t.Fatalf("endpoints after restart: %+v, %v", resp, err)
	}
}

func TestCheckAndDelete(t *testing.T) {
	e := newEnv(t)
	tr := e.trio()
	ep := agent.Endpoint{Attachment: agent.Attachment{ContainerID: tr.payments.ID, IfName: tr.payments.IfName}}
	if _, err := e.call(agent.Request{Op: agent.OpCheck, Endpoint: &ep}); err != nil {
		t.Fatalf("check: %v", err)
	}
	// Someone deletes the table: CHECK must fail.
	e.node.MustRun("nft", "delete", "table", "inet", "netseg")
	if _, err := e.call(agent.Request{Op: agent.OpCheck, Endpoint: &ep}); err == nil {
		t.Fatal("check passed with the table gone")
	}
	for i := 0; i < 2; i++ {
		if _, err := e.call(agent.Request{Op: agent.OpDel, Endpoint: &ep}); err != nil {
			t.Fatalf("del %d: %v", i+1, err)
		}
	}
	if _, err := e.call(agent.Request{Op: agent.OpCheck, Endpoint: &ep}); err == nil || !strings.Contains(err.Error(), "not registered") {
		t.Fatalf("check after del: %v", err)
	}
}

func listTable(t *testing.T, n *lab.Netns) string {
	return lab.CanonicalTable(n.MustRun("nft", "list", "table", "inet", "netseg"))
}

func echo(t *testing.T, conn interface {
	Write([]byte) (int, error)
	Read([]byte) (int, error)
	SetDeadline(time.Time) error
}) {
	t.Helper()
	_ = conn.SetDeadline(time.Now().Add(time.Second))
	msg := []byte("still-there-" + strconv.Itoa(int(time.Now().UnixNano()%1000)))
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("established connection: write: %v", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(readerOf(conn), got); err != nil || string(got) != string(msg) {
		t.Fatalf("established connection: echo %q, %v", got, err)
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }

func readerOf(c interface{ Read([]byte) (int, error) }) io.Reader { return readerFunc(c.Read) }

// TestAgentFollowsNodeAddresses: the node's own addresses inside the pod
// network (the bridge's gateway, which the first container's ADD creates;
// one added later) are read every second and kept out of the fail-closed
// catch-all, so the node reaches itself there (TestNodeKeepsItsOwnAddresses
// in dataplane shows the rest of the pod network stays closed).
func TestAgentFollowsNodeAddresses(t *testing.T) {
	e := newEnv(t)
	e.trio() // the bridge and its gateway 10.88.0.1 appear after the agent started
	reach := func(addr netip.Addr) time.Duration {
		t.Helper()
		srv := e.node.ListenTCP(netip.AddrPortFrom(addr, 9053).String())
		start := time.Now()
		for e.node.Probe("tcp", srv.Addr, timeout) != nil {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("node -> its own %v: still dropped after 5s", addr)
			}
		}
		return time.Since(start)
	}
	t.Logf("node reaches its gateway address 10.88.0.1 after %v", reach(netip.MustParseAddr("10.88.0.1")))
	e.node.MustRun("ip", "addr", "add", "10.88.0.200/32", "dev", "lo")
	t.Logf("node reaches an address added to it later after %v", reach(netip.MustParseAddr("10.88.0.200")))
	for _, l := range e.agent.Status().Loops {
		if l.Name == "node-addresses" && l.State != agent.LoopOK {
			t.Errorf("node-addresses loop: %+v", l)
		}
	}
}
