package e2e_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/e2e/lab"
)

// binDir holds netseg-agent, netseg (the CNI plugin) and netsegctl, built
// from this checkout for the run.
var binDir string

func TestMain(m *testing.M) {
	flag.Parse()
	dir, err := os.MkdirTemp("", "netseg-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// NETSEG_E2E_RACE=1 (make race) builds the agent with the race
	// detector, which ends it at the first race (GORACE halt_on_error):
	// the test that was running fails.
	race := os.Getenv("NETSEG_E2E_RACE") != ""
	if race {
		os.Setenv("GORACE", "halt_on_error=1")
	}
	for name, pkg := range map[string]string{"netseg-agent": "./cmd/netseg-agent", "netseg": "./cni-plugin", "netsegctl": "./cmd/netsegctl"} {
		args, env := []string{"build", "-o", filepath.Join(dir, name)}, "CGO_ENABLED=0" // static, as make build and the image
		if race && name == "netseg-agent" {
			args, env = append(args, "-race"), "CGO_ENABLED=1"
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir, cmd.Env = "..", append(os.Environ(), env)
		if out, err := cmd.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v: %s\n", name, err, out)
			os.RemoveAll(dir)
			os.Exit(1)
		}
	}
	binDir = dir
	lab.Main(m, func() { os.RemoveAll(dir) })
}

// Test address conventions: pods on 10.88.0.0/24 (bridge) or 10.89.0.0/24
// (ptp) inside the lab node; synthetic registrations on 10.200.0.0/16.
const (
	bridgeSubnet = "10.88.0.0/24"
	ptpSubnet    = "10.89.0.0/24"
	probeTimeout = 300 * time.Millisecond
)

// node is a lab node running the real agent binary, with a CNI network
// whose conflist chains the real netseg plugin after a reference plugin.
type node struct {
	t         testing.TB
	lab       *lab.Lab
	ns        *lab.Netns
	cni       *lab.CNI
	list      *libcni.NetworkConfigList
	policyDir string
	stateDir  string
	pluginDir string // the plugin's state (fail-open counter, quarantine notes)
	socket    string
	agent     *exec.Cmd
	agentLog  *os.File
	agentArgs []string // extra flags for every start
}

func newNode(t testing.TB, mainPlugin string, agentArgs ...string) *node {
	t.Helper()
	return newDualNode(t, mainPlugin, "", agentArgs...)
}

// newDualNode is newNode whose pods also get an address from subnet6
// (dual stack) when it is not empty.
func newDualNode(t testing.TB, mainPlugin, subnet6 string, agentArgs ...string) *node {
	t.Helper()
	l := lab.New(t)
	n := &node{t: t, lab: l, ns: l.Node("node"), policyDir: t.TempDir(), stateDir: t.TempDir(), pluginDir: t.TempDir(), agentArgs: agentArgs}
	n.socket = filepath.Join(t.TempDir(), "agent.sock")
	copyDir(t, "../examples", n.policyDir)
	n.cni = n.ns.CNI(append([]string{binDir}, lab.CNIPath()...)...)
	subnet := bridgeSubnet
	if mainPlugin == "ptp" {
		subnet = ptpSubnet
	}
	netseg := map[string]any{"type": "netseg", "socket": n.socket, "stateDir": n.pluginDir, "timeout": "5s",
		"capabilities": map[string]bool{"labels": true}}
	n.list = n.cni.ParseConfList(t, lab.Net{Name: "pods", CNIVersion: "1.1.0", Type: mainPlugin, Subnet: subnet, Subnet6: subnet6, DataDir: t.TempDir(),
		Chain: []map[string]any{netseg}}.ConfList())
	n.startAgent()
	return n
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatalf("copy %s: %v", src, err)
	}
}

// startAgent runs bin/netseg-agent inside the node's network namespace and
// waits until it is ready.
func (n *node) startAgent() {
	n.t.Helper()
	logf, err := os.OpenFile(filepath.Join(n.stateDir, "agent.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	args := append([]string{"--policy-dir", n.policyDir, "--state-dir", n.stateDir, "--socket", n.socket,
		"--health-addr", "", "--metrics-addr", "", "--cni-state-dir", n.pluginDir},
		append([]string{"--poll-interval", "50ms", "--log-level", "debug"}, n.agentArgs...)...)
	cmd := n.ns.Command(context.Background(), filepath.Join(binDir, "netseg-agent"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start agent: %v", err)
	}
	n.agent, n.agentLog = cmd, logf
	n.t.Cleanup(func() {
		n.stopAgent(syscall.SIGTERM)
		if n.t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			n.t.Logf("agent log:\n%s", tail(string(b), 40))
		}
	})
	waitAgentReady(n.t, n.socket, 10*time.Second, logf.Name())
}

// waitAgentReady polls the agent at socket until it reports ready, and
// fails t after timeout with the tail of its log.
func waitAgentReady(t testing.TB, socket string, timeout time.Duration, logPath string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := agent.Call(ctx, socket, agent.Request{Op: agent.OpStatus})
		cancel()
		if err == nil && resp.Ready {
			return
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logPath)
			t.Fatalf("agent at %s not ready after %v: %v\n%s", socket, timeout, err, tail(string(b), 30))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopAgent sends sig and waits for the process.
func (n *node) stopAgent(sig syscall.Signal) {
	if n.agent == nil {
		return
	}
	_ = n.agent.Process.Signal(sig)
	_ = n.agent.Wait()
	n.agentLog.Close()
	n.agent = nil
}

func tail(s string, lines int) string {
	parts := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}

// pod adds a container through the conflist with its pod identity and labels.
func (n *node) pod(name, podNS, podName string, labels map[string]string) *lab.Container {
	n.t.Helper()
	return n.cni.MustAdd(name, n.list, lab.Attach{PodNamespace: podNS, PodName: podName, Labels: labels})
}

func (n *node) attach(podNS, podName string, labels map[string]string) lab.Attach {
	return lab.Attach{PodNamespace: podNS, PodName: podName, Labels: labels}
}

// ctl runs bin/netsegctl with args against this node's agent.
func (n *node) ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "netsegctl"), args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (n *node) table() string {
	return lab.CanonicalTable(n.ns.MustRun("nft", "list", "table", "inet", "netseg"))
}

// ctlOut runs bin/netsegctl and returns its output.
func ctlOut(args ...string) (string, error) {
	out, err := exec.Command(filepath.Join(binDir, "netsegctl"), args...).CombinedOutput()
	return string(out), err
}
