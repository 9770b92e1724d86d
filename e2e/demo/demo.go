// Package demo is netseg's demo on the embedded default: a lab node (a
// network namespace) runs the real agent binary in standalone mode with a
// policy directory, demo containers are wired by the reference bridge
// plugin chained with the netseg plugin, and scripted connections between
// them (expected, undeclared, denied, would-deny) show what netseg decides
// and enforces. Everything it creates lives in namespaces it removes when
// it stops, Ctrl-C included. The netseg-demo program (cmd/netseg-demo)
// runs it; "make demo" builds and starts that program.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/e2e/lab"
)

// Options configure a demo run.
type Options struct {
	PolicyDir string        // default "examples"
	BinDir    string        // netseg-agent and the netseg plugin
	CNIPath   []string      // reference plugins, default /opt/cni/bin
	Rounds    int           // traffic rounds; 0 runs until ctx ends
	Interval  time.Duration // pause between rounds
	Out       io.Writer
}

// pod is a demo container.
type pod struct {
	ns, name string
	labels   map[string]string
	ports    []string // "8080/tcp"
}

var pods = []pod{
	{"web", "frontend", map[string]string{"app": "frontend"}, []string{"8080/tcp"}},
	{"shop", "checkout", map[string]string{"app": "checkout"}, []string{"8080/tcp", "22/tcp"}},
	{"shop", "redis", map[string]string{"app": "redis"}, []string{"6379/tcp"}},
	{"pay", "payments", map[string]string{"app": "payments"}, []string{"8443/tcp", "9090/tcp"}},
	{"ops", "monitoring", map[string]string{"app": "monitoring"}, []string{"9090/tcp"}},
	{"default", "legacy", map[string]string{"app": "legacy"}, []string{"8080/tcp", "22/tcp", "53/udp"}},
	{"default", "batch", map[string]string{"app": "batch"}, nil},
}

// partner is an address of the CIDR zone "partners", a namespace routed
// through the node.
const (
	partnerAddr = "203.0.113.10"
	partnerGW   = "203.0.113.1"
	podSubnet   = "10.88.0.0/24"
)

// conns are the scripted connections: from, to, port, and what the story
// says about them.
var conns = []struct{ from, to, port, note string }{
	{"web/frontend", "shop/checkout", "8080/TCP", "web tier talks to itself"},
	{"shop/checkout", "pay/payments", "8443/TCP", "declared by the checkout team"},
	{"shop/checkout", "shop/redis", "6379/TCP", "declared cache dependency"},
	{"shop/checkout", partnerAddr, "443/TCP", "card network (CIDR zone)"},
	{partnerAddr, "pay/payments", "8443/TCP", "partner outside its allowed ports"},
	{"ops/monitoring", "pay/payments", "9090/TCP", "payments perimeter"},
	{"ops/monitoring", "default/legacy", "22/TCP", "ssh lockdown being staged"},
	{"ops/monitoring", "default/legacy", "8080/TCP", "ops zone's default, in Monitor mode"},
	{"default/batch", "default/legacy", "8080/TCP", "nobody declared this"},
	{"ops/monitoring", "shop/redis", "6379/TCP", "declared by ops, but data admits only web-tier namespaces"},
	{"default/legacy", "shop/redis", "6379/TCP", "data zone's perimeter"},
	{"default/batch", "default/legacy", "53/UDP", "DNS to the unzoned zone"},
}

// fatal carries a lab failure out of Run.
type fatal string

// runner is the lab's owner for a demo run.
type runner struct {
	out      io.Writer
	mu       sync.Mutex
	cleanups []func()
	tmp      string
}

func (r *runner) Helper()                           {}
func (r *runner) Fatalf(format string, args ...any) { panic(fatal(fmt.Sprintf(format, args...))) }
func (r *runner) Errorf(format string, args ...any) {
	fmt.Fprintf(r.out, "error: "+format+"\n", args...)
}
func (r *runner) Logf(format string, args ...any) {}
func (r *runner) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}
func (r *runner) TempDir() string {
	d, err := os.MkdirTemp(r.tmp, "d")
	if err != nil {
		r.Fatalf("temp dir: %v", err)
	}
	return d
}

func (r *runner) cleanup() {
	r.mu.Lock()
	cs := r.cleanups
	r.cleanups = nil
	r.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

var _ lab.T = &runner{}

// Run runs the demo until its rounds are done or ctx ends, then removes
// everything it made.
func Run(ctx context.Context, o Options) (err error) {
	if o.PolicyDir == "" {
		o.PolicyDir = "examples"
	}
	if len(o.CNIPath) == 0 {
		o.CNIPath = lab.CNIPath()
	}
	if o.Interval == 0 {
		o.Interval = 2 * time.Second
	}
	tmp, err := os.MkdirTemp("", "netseg-demo-")
	if err != nil {
		return fmt.Errorf("temp dir: %w", err)
	}
	r := &runner{out: o.Out, tmp: tmp}
	defer func() {
		fmt.Fprintln(o.Out, "== cleaning up: stopping the agent, removing the containers, the node and its nftables table")
		r.cleanup()
		os.RemoveAll(tmp)
		if p := recover(); p != nil {
			f, ok := p.(fatal)
			if !ok {
				panic(p)
			}
			err = errors.New(string(f))
		}
	}()
	d := &demo{o: o, r: r}
	d.setUp(ctx)
	for round := 1; o.Rounds == 0 || round <= o.Rounds; round++ {
		fmt.Fprintf(o.Out, "\n== round %d: %d connections (what netseg decided, and what the kernel did)\n", round, len(conns))
		d.round()
		select {
		case <-ctx.Done():
			fmt.Fprintln(o.Out, "\n== interrupted")
			return nil
		case <-time.After(o.Interval):
		}
	}
	time.Sleep(3 * time.Second) // the last round's records
	d.summary()
	return nil
}

type demo struct {
	o                 Options
	r                 *runner
	node              *lab.Netns
	socket            string
	flowLog, alertLog string
	mu                sync.Mutex // serializes output lines
	peers             map[string]*lab.Netns
	addrs             map[string]netip.Addr
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.o.Out, format+"\n", args...)
}

func (d *demo) setUp(ctx context.Context) {
	l := lab.New(d.r)
	d.say("== netseg demo: standalone mode, policy from %s", d.o.PolicyDir)
	d.node = l.Node("node")
	d.say("created the lab node: network namespace %s", d.node.Name)
	state := d.r.TempDir()
	d.socket = filepath.Join(state, "agent.sock")
	d.flowLog = filepath.Join(state, "flows.log")
	d.alertLog = filepath.Join(state, "alerts.log")
	// Lab connections are short: end their conntrack entries fast, so their
	// flow records come within seconds.
	d.node.ShortConntrackTimeouts()
	agentBin := filepath.Join(d.o.BinDir, "netseg-agent")
	cmd := d.node.Command(context.Background(), agentBin, "--policy-dir", d.o.PolicyDir, "--state-dir", state,
		"--socket", d.socket, "--health-addr", "", "--metrics-addr", "", "--log-level", "warn", "--log-format", "text",
		"--flow-log", d.flowLog, "--alert-log", d.alertLog, "--flow-interval", "1s", "--node-name", "demo-node")
	logf, err := os.Create(filepath.Join(state, "agent.log"))
	if err != nil {
		d.r.Fatalf("agent log: %v", err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		d.r.Fatalf("start %s: %v", agentBin, err)
	}
	d.r.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
	})
	d.waitReady(ctx)
	d.say("started netseg-agent in the node (socket %s)", d.socket)
	d.say("flow log %s, alert log %s: records appear below as \"flow>\" and \"alert>\" lines", d.flowLog, d.alertLog)
	d.follow(ctx)

	netseg := map[string]any{"type": "netseg", "socket": d.socket, "stateDir": state, "capabilities": map[string]bool{"labels": true}}
	cni := d.node.CNI(append([]string{d.o.BinDir}, d.o.CNIPath...)...)
	list := cni.ParseConfList(d.r, lab.Net{Name: "demo", CNIVersion: "1.1.0", Type: "bridge", Subnet: podSubnet,
		DataDir: d.r.TempDir(), Chain: []map[string]any{netseg}}.ConfList())
	d.peers, d.addrs = map[string]*lab.Netns{}, map[string]netip.Addr{}
	for _, p := range pods {
		c := cni.MustAdd(p.name, list, lab.Attach{PodNamespace: p.ns, PodName: p.name, Labels: p.labels})
		key := p.ns + "/" + p.name
		d.peers[key], d.addrs[key] = c.Netns, c.IP(4)
		for _, port := range p.ports {
			num, proto, _ := strings.Cut(port, "/")
			addr := c.IP(4).String() + ":" + num
			if proto == "udp" {
				c.ListenUDP(addr)
			} else {
				c.ListenTCP(addr)
			}
		}
		zone := d.zoneOf(p.ns, p.name)
		d.say("container %-16s %-12s zone %-9s (bridge + host-local + netseg; rules in the kernel before ADD returned)", key, c.IP(4), zone)
	}
	partner := l.Netns("partner")
	d.node.Veth("v-partner", partner, "eth0")
	d.node.MustRun("ip", "addr", "add", partnerGW+"/24", "dev", "v-partner")
	partner.MustRun("ip", "addr", "add", partnerAddr+"/24", "dev", "eth0")
	partner.MustRun("ip", "route", "add", "default", "via", partnerGW)
	partner.ListenTCP(partnerAddr + ":443")
	d.peers[partnerAddr], d.addrs[partnerAddr] = partner, netip.MustParseAddr(partnerAddr)
	d.say("partner host %s (CIDR zone partners) routed through the node", partnerAddr)
}

func (d *demo) waitReady(ctx context.Context) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := agent.Call(cctx, d.socket, agent.Request{Op: agent.OpStatus})
		cancel()
		if err == nil && resp.Ready {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			d.r.Fatalf("the agent did not become ready: %v (is the policy directory valid? try netsegctl validate -f %s)", err, d.o.PolicyDir)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *demo) zoneOf(ns, name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, d.socket, agent.Request{Op: agent.OpList})
	if err != nil {
		return "?"
	}
	for _, ep := range resp.Endpoints {
		if ep.Namespace == ns && ep.Name == name {
			return ep.Zone
		}
	}
	return "?"
}
