package main_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/cni-plugin/internal/fakeagent"
	"github.com/netseg/netseg/e2e/lab"
)

// Test conventions: each main plugin gets its own subnet, inside the test's
// node namespace only; every CNI version the plugin supports is run.
var (
	mains = []struct{ typ, subnet, subnet6 string }{
		{"bridge", "10.88.0.0/24", "fd00:88::/64"},
		{"ptp", "10.89.0.0/24", ""},
	}
	versions = []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}
)

// env is one node running a main plugin chained with netseg.
type env struct {
	t        *testing.T
	node     *lab.Netns
	cni      *lab.CNI
	agent    *fakeagent.Agent
	stateDir string
	version  string
	typ      string
	subnet   string
	subnet6  string
	dataDir  string
}

// matrix runs f for every main plugin and CNI version, each in a fresh lab
// with a fresh fake agent.
func matrix(t *testing.T, f func(e *env)) {
	if testing.Short() {
		t.Skip("kernel test: needs root and network namespaces")
	}
	for _, m := range mains {
		for _, v := range versions {
			t.Run(m.typ+"-"+v, func(t *testing.T) {
				l := lab.New(t)
				node := l.Node("node")
				e := &env{t: t, node: node, cni: node.CNI(append([]string{pluginDir}, lab.CNIPath()...)...),
					agent: fakeagent.Start(t, t.TempDir()), stateDir: t.TempDir(), version: v,
					typ: m.typ, subnet: m.subnet, subnet6: m.subnet6, dataDir: t.TempDir()}
				f(e)
			})
		}
	}
}

// list renders the conflist with netseg's config: socket and stateDir
// default to the test's; extra keys override.
func (e *env) list(extra map[string]any) *libcni.NetworkConfigList {
	netseg := map[string]any{"type": "netseg", "socket": e.agent.Socket, "stateDir": e.stateDir, "timeout": "3s",
		"capabilities": map[string]bool{"labels": true}}
	for k, v := range extra {
		netseg[k] = v
	}
	net := lab.Net{Name: "labnet", CNIVersion: e.version, Type: e.typ, Subnet: e.subnet, Subnet6: e.subnet6,
		DataDir: e.dataDir, Chain: []map[string]any{netseg}}
	return e.cni.ParseConfList(e.t, net.ConfList())
}

func (e *env) atLeast(v string) bool {
	return slices.Index(versions, e.version) >= slices.Index(versions, v)
}

// hostVeth finds the node's veth whose peer is the container's interface,
// from the node's side: its IFLA_LINK is the container interface's ifindex.
func hostVeth(t *testing.T, node *lab.Netns, ctr *lab.Container) string {
	t.Helper()
	cl, err := ctr.Handle().LinkByName(ctr.IfName)
	if err != nil {
		t.Fatalf("container link: %v", err)
	}
	links, err := node.Handle().LinkList()
	if err != nil {
		t.Fatalf("node links: %v", err)
	}
	var found []string
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && l.Attrs().ParentIndex == cl.Attrs().Index {
			found = append(found, l.Attrs().Name)
		}
	}
	if len(found) != 1 {
		t.Fatalf("node veths peered with %s (ifindex %d): %v, want one", ctr.IfName, cl.Attrs().Index, found)
	}
	return found[0]
}

func ipsOf(ctr *lab.Container) []string {
	var out []string
	for _, ipc := range ctr.Result.IPs {
		out = append(out, ipc.Address.String())
	}
	return out
}

func cniCode(t *testing.T, err error) (uint, string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return te.Code, te.Msg + " " + te.Details
}

func TestAddRegistersEndpoint(t *testing.T) {
	matrix(t, func(e *env) {
		list := e.list(nil)
		at := lab.Attach{PodNamespace: "shop", PodName: "web-1", PodUID: "uid-1", Labels: map[string]string{"app": "web", "tier": "front"}}
		ctr := e.cni.MustAdd("a", list, at)

		got := e.agent.Last(agent.OpAdd)
		if got == nil {
			t.Fatal("the agent got no ADD")
		}
		want := agent.Endpoint{
			Attachment: agent.Attachment{ContainerID: ctr.ID, IfName: "eth0"}, Network: "labnet",
			Netns: ctr.Path, Namespace: "shop", Name: "web-1", UID: "uid-1",
			Labels:    map[string]string{"app": "web", "tier": "front"},
			HostIface: hostVeth(t, e.node, ctr),
			IPs:       ipsOf(ctr),
		}
		if diff := cmp.Diff(want, *got.Endpoint); diff != "" {
			t.Errorf("registered endpoint (-want +got):\n%s", diff)
		}
		for _, ip := range want.IPs {
			if !strings.Contains(ip, "/") || strings.HasSuffix(ip, "/0") {
				t.Errorf("address %q has no prefix length", ip)
			}
		}
		if len(ctr.Result.Interfaces) == 0 {
			t.Errorf("ADD did not pass the previous result on: %+v", ctr.Result)
		}
	})
}

func TestCheckDelAndGC(t *testing.T) {
	matrix(t, func(e *env) {
		list := e.list(nil)
		at := lab.Attach{PodNamespace: "shop", PodName: "web-1"}
		a := e.cni.MustAdd("a", list, at)
		if e.atLeast("0.4.0") { // CHECK arrived in CNI 0.4.0
			if err := e.cni.Check(a, list, at); err != nil {
				t.Errorf("CHECK of a programmed endpoint: %v", err)
			}
			e.agent.RulesMissing(true)
			err := e.cni.Check(a, list, at)
			if err == nil {
				t.Fatal("CHECK passed while the agent says the rules are missing")
			}
			code, msg := cniCode(t, err)
			if code != types.ErrInternal || !strings.Contains(msg, "rules of endpoint "+a.ID+"/eth0 are missing") || !strings.Contains(msg, e.agent.Socket) {
				t.Errorf("CHECK error code %d %q: want the agent's reason and socket", code, msg)
			}
			e.agent.RulesMissing(false)
		}
		if e.version == "1.1.0" {
			b := e.cni.MustAdd("b", list, lab.Attach{PodNamespace: "shop", PodName: "web-2"})
			ctx := context.Background()
			keep := []types.GCAttachment{{ContainerID: b.ID, IfName: "eth0"}}
			if err := e.cni.Config().GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: keep}); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if got := e.agent.Last(agent.OpGC).Network; got != "labnet" {
				t.Errorf("GC is for network %q, want labnet", got)
			}
			if diff := cmp.Diff([]agent.Attachment{{ContainerID: b.ID, IfName: "eth0"}}, e.agent.Last(agent.OpGC).Keep); diff != "" {
				t.Errorf("GC keep (-want +got):\n%s", diff)
			}
			if _, ok := e.agent.Endpoints()[agent.Attachment{ContainerID: a.ID, IfName: "eth0"}]; ok {
				t.Errorf("GC kept a, which is not a valid attachment")
			}
			if err := e.cni.Config().GetStatusNetworkList(ctx, list); err != nil {
				t.Errorf("STATUS with the agent up: %v", err)
			}
		}
		for i := range 2 {
			if err := e.cni.Del(a, list, at); err != nil {
				t.Errorf("DEL #%d: %v", i+1, err)
			}
		}
		if _, ok := e.agent.Endpoints()[agent.Attachment{ContainerID: a.ID, IfName: "eth0"}]; ok {
			t.Errorf("a still registered after DEL")
		}
		want := 2
		if e.version == "1.1.0" {
			want++ // libcni's GC first DELs the cached attachments not kept: a
		}
		if n := countOps(e.agent, agent.OpDel); n != want {
			t.Errorf("agent got %d DELs, want %d", n, want)
		}
	})
}

func countOps(a *fakeagent.Agent, op agent.Op) int {
	n := 0
	for _, r := range a.Requests() {
		if r.Op == op {
			n++
		}
	}
	return n
}

func TestDelTolerance(t *testing.T) {
	matrix(t, func(e *env) {
		list := e.list(nil)
		at := lab.Attach{PodNamespace: "shop", PodName: "web-1"}
		a := e.cni.MustAdd("a", list, at)
		b := e.cni.MustAdd("b", list, at)
		c := e.cni.MustAdd("c", list, at)

		// Without netns: the runtime lost it (container already gone).
		rt := at.RuntimeConf(a)
		rt.NetNS = ""
		ctx := context.Background()
		if err := e.cni.Config().DelNetworkList(ctx, list, rt); err != nil {
			t.Errorf("DEL without netns: %v", err)
		}
		if req := e.agent.Last(agent.OpDel); req == nil || req.Endpoint.Attachment != (agent.Attachment{ContainerID: a.ID, IfName: "eth0"}) {
			t.Errorf("DEL without netns sent %+v", req)
		}

		// With the agent down: try again later; the runtime retries.
		e.agent.Stop()
		if code, msg := cniCode(t, e.cni.Del(b, list, at)); code != types.ErrTryAgainLater {
			t.Errorf("DEL with the agent down: code %d %q, want %d", code, msg, types.ErrTryAgainLater)
		}
		if e.version == "1.1.0" {
			err := e.cni.Config().GetStatusNetworkList(ctx, list)
			if err == nil {
				t.Fatal("STATUS passed with the agent down")
			}
			if code, msg := cniCode(t, err); code != types.ErrPluginNotAvailable || !strings.Contains(msg, e.agent.Socket) {
				t.Errorf("STATUS error code %d %q, want %d naming the socket", code, msg, types.ErrPluginNotAvailable)
			}
		}
		if e.atLeast("0.4.0") {
			err := e.cni.Check(c, list, at)
			if code, msg := cniCode(t, err); code != types.ErrTryAgainLater {
				t.Errorf("CHECK with the agent down: code %d %q, want %d", code, msg, types.ErrTryAgainLater)
			}
		}
	})
}

func TestFailurePolicy(t *testing.T) {
	matrix(t, func(e *env) {
		// The agent's table and quarantine sets exist (it ran once); now it is down.
		for _, cmd := range []string{"add table inet netseg",
			"add set inet netseg cniquarantine4 { type ipv4_addr; }",
			"add set inet netseg cniquarantine6 { type ipv6_addr; }",
			"add set inet netseg cnifailopen4 { type ipv4_addr; }",
			"add set inet netseg cnifailopen6 { type ipv6_addr; }"} {
			e.node.MustRun("nft", cmd)
		}
		at := lab.Attach{PodNamespace: "shop", PodName: "web-1"}

		// The agent answers an error: ADD fails as internal, the agent is
		// told to keep the addresses quarantined.
		e.agent.FailAdd("zone tie between a and b")
		up := e.list(nil)
		bad, err := e.cni.Add("e", up, at)
		if err == nil {
			t.Fatal("ADD succeeded while the agent answered an error")
		}
		if code, msg := cniCode(t, err); code != types.ErrInternal || !strings.Contains(msg, "answered: zone tie between a and b") {
			t.Errorf("ADD error code %d %q: want %d with the agent's error", code, msg, types.ErrInternal)
		}
		if q := e.agent.Last(agent.OpQuarantine); q == nil || q.Endpoint.ContainerID != bad.ID {
			t.Errorf("agent not told of the quarantine: %+v", q)
		}
		if err := e.cni.Del(bad, up, at); err != nil {
			t.Errorf("DEL after the failed ADD: %v", err)
		}

		e.agent.Stop()
		missing := filepath.Join(t.TempDir(), "no-agent.sock")

		closed := e.list(map[string]any{"socket": missing})
		ctr, err := e.cni.Add("a", closed, at)
		if err == nil {
			t.Fatal("ADD succeeded with the agent down and failurePolicy closed")
		}
		code, msg := cniCode(t, err)
		if code != types.ErrTryAgainLater || !strings.Contains(msg, "agent at "+missing+" unreachable") || !strings.Contains(msg, "start netseg-agent") {
			t.Errorf("ADD error code %d %q: want %d naming the socket and the fix", code, msg, types.ErrTryAgainLater)
		}
		addrs := containerAddrs(t, ctr)
		set := e.node.MustRun("nft", "list", "set", "inet", "netseg", "cniquarantine4")
		if !strings.Contains(set, addrs[0]) {
			t.Errorf("address %s not quarantined:\n%s", addrs[0], set)
		}
		// DEL has no prevResult (the failed ADD cached none) but releases
		// the addresses from the plugin's record; with the agent still
		// down it answers "try again later" (the runtime retries).
		if code, msg := cniCode(t, e.cni.Del(ctr, closed, at)); code != types.ErrTryAgainLater {
			t.Errorf("DEL after the failed ADD, agent down: code %d %q, want %d", code, msg, types.ErrTryAgainLater)
		}
		if set := e.node.MustRun("nft", "list", "set", "inet", "netseg", "cniquarantine4"); strings.Contains(set, addrs[0]) {
			t.Errorf("address %s still quarantined after DEL:\n%s", addrs[0], set)
		}

		open := e.list(map[string]any{"socket": missing, "failurePolicy": "open"})
		for i := 1; i <= 2; i++ {
			ctr := e.cni.MustAdd("o"+string(rune('0'+i)), open, at)
			b, err := os.ReadFile(filepath.Join(e.stateDir, "cni-fail-open"))
			if err != nil {
				t.Fatalf("counter: %v", err)
			}
			if got := strings.TrimSpace(string(b)); got != string(rune('0'+i)) {
				t.Errorf("fail-open counter %q after %d ADDs", got, i)
			}
			// Opened for the agent's catch-all, and recorded for adoption.
			addrs := containerAddrs(t, ctr)
			if set := e.node.MustRun("nft", "list", "set", "inet", "netseg", "cnifailopen4"); !strings.Contains(set, addrs[0]) {
				t.Errorf("address %s not in the fail-open set:\n%s", addrs[0], set)
			}
			record := filepath.Join(e.stateDir, agent.FailOpenDir, ctr.ID+"_"+ctr.IfName+".json")
			if b, err := os.ReadFile(record); err != nil || !strings.Contains(string(b), addrs[0]) {
				t.Errorf("fail-open record %s: %v %s", record, err, b)
			}
			// DEL (which the agent, down, answers "try again later") closes them.
			_ = e.cni.Del(ctr, open, at)
			if set := e.node.MustRun("nft", "list", "set", "inet", "netseg", "cnifailopen4"); strings.Contains(set, addrs[0]) {
				t.Errorf("address %s still open after DEL:\n%s", addrs[0], set)
			}
			if _, err := os.Stat(record); !os.IsNotExist(err) {
				t.Errorf("fail-open record left after DEL: %v", err)
			}
		}
	})
}

// containerAddrs reads the IPv4 addresses of the container's interface.
func containerAddrs(t *testing.T, ctr *lab.Container) []string {
	t.Helper()
	link, err := ctr.Handle().LinkByName(ctr.IfName)
	if err != nil {
		t.Fatalf("container link: %v", err)
	}
	list, err := ctr.Handle().AddrList(link, netlink.FAMILY_V4)
	if err != nil || len(list) == 0 {
		t.Fatalf("container addresses: %v %v", list, err)
	}
	var out []string
	for _, a := range list {
		out = append(out, a.IP.String())
	}
	return out
}

// TestNotAVeth runs ADD by hand (as a runtime would) with a prevResult that
// names a bridge, not a veth: the plugin must refuse it, naming the fix.
func TestNotAVeth(t *testing.T) {
	if testing.Short() {
		t.Skip("kernel test: needs root and network namespaces")
	}
	l := lab.New(t)
	node := l.Node("node")
	ctr := l.Netns("c")
	ctr.MustRun("ip", "link", "add", "eth0", "type", "bridge")
	a := fakeagent.Start(t, t.TempDir())
	stdin := `{"cniVersion": "1.0.0", "name": "n", "type": "netseg", "socket": "` + a.Socket + `",
		"prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "` + ctr.Path + `"}],
		"ips": [{"address": "10.88.0.5/24", "interface": 0}]}}`
	cmd := node.Command(context.Background(), filepath.Join(pluginDir, "netseg"))
	cmd.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=" + ctr.Path, "CNI_IFNAME=eth0", "CNI_PATH=" + pluginDir}
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.Output()
	if err == nil {
		t.Fatalf("ADD on a bridge interface succeeded: %s", out)
	}
	var te types.Error
	if jerr := json.Unmarshal(out, &te); jerr != nil {
		t.Fatalf("plugin output %q is not a CNI error: %v", out, jerr)
	}
	if te.Code != types.ErrInvalidNetworkConfig || !strings.Contains(te.Msg, "eth0 is a bridge, not a veth") || !strings.Contains(te.Msg, "chain it after bridge or ptp") {
		t.Errorf("error %d %q: want %d saying it is not a veth and what to chain after", te.Code, te.Msg, types.ErrInvalidNetworkConfig)
	}
	if n := len(a.Requests()); n != 0 {
		t.Errorf("agent got %d requests", n)
	}
}
