package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultCNIPath is where .ci/run installs the CNI reference plugins.
const DefaultCNIPath = "/opt/cni/bin"

// CNIPath is the plugin search path: $NETSEG_CNI_PATH (colon-separated) if
// set, else DefaultCNIPath.
func CNIPath() []string {
	if p := os.Getenv("NETSEG_CNI_PATH"); p != "" {
		return filepath.SplitList(p)
	}
	return []string{DefaultCNIPath}
}

// CNI runs CNI plugins the way a container runtime does, through libcni,
// with one difference: every plugin process runs inside the node's network
// namespace, so the bridges and host-side veths it makes live in the node,
// not in the host.
type CNI struct {
	Node     *Netns
	Path     []string // plugin directories
	CacheDir string   // libcni's result cache
	cni      *libcni.CNIConfig
	exec     *nodeExec
}

// OnExec, when set, is told each plugin run's binary and wall time (from
// starting the plugin process to its exit), e.g. for benchmarks.
func (c *CNI) OnExec(f func(plugin string, took time.Duration)) { c.exec.onExec = f }

// CNI returns a runner for plugins on node n, with a cache in a test
// temporary directory.
func (n *Netns) CNI(path ...string) *CNI {
	if len(path) == 0 {
		path = CNIPath()
	}
	cache := n.lab.t.TempDir()
	ex := &nodeExec{node: n}
	return &CNI{Node: n, Path: path, CacheDir: cache, cni: libcni.NewCNIConfigWithCacheDir(path, cache, ex), exec: ex}
}

// Container is a container namespace attached to networks by CNI.
type Container struct {
	*Netns
	ID     string
	IfName string
	Result *current.Result // the last ADD's result, in the CNI 1.0 form
}

// IP returns the container's first address of the given family (4 or 6).
func (c *Container) IP(family int) netip.Addr {
	for _, ipc := range c.Result.IPs {
		a, _ := netip.AddrFromSlice(ipc.Address.IP)
		a = a.Unmap()
		if (family == 4) == a.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// Attach describes one ADD: the runtime's identity for the container.
type Attach struct {
	PodNamespace string            // CNI_ARGS K8S_POD_NAMESPACE
	PodName      string            // CNI_ARGS K8S_POD_NAME
	PodUID       string            // CNI_ARGS K8S_POD_UID, optional
	Labels       map[string]string // runtimeConfig "labels" capability
	IfName       string            // default eth0
}

// RuntimeConf builds the libcni runtime configuration for c and a.
func (a Attach) RuntimeConf(c *Container) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{ContainerID: c.ID, NetNS: c.Path, IfName: c.IfName}
	if a.PodNamespace != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_NAMESPACE", a.PodNamespace})
	}
	if a.PodName != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_NAME", a.PodName})
	}
	if a.PodUID != "" {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_UID", a.PodUID})
	}
	if len(rt.Args) > 0 {
		rt.Args = append(rt.Args, [2]string{"IgnoreUnknown", "1"})
	}
	if a.Labels != nil {
		rt.CapabilityArgs = map[string]any{"labels": a.Labels}
	}
	return rt
}

// ParseConfList parses a .conflist document, failing the test on error.
func (c *CNI) ParseConfList(t interface{ Fatalf(string, ...any) }, conflist string) *libcni.NetworkConfigList {
	list, err := libcni.NetworkConfFromBytes([]byte(conflist))
	if err != nil {
		t.Fatalf("lab: parse conflist: %v", err)
	}
	return list
}

// Add creates a container namespace and runs ADD for the network list in
// it. The lab runs DEL before deleting the namespace. The returned error is
// the plugin chain's (the container still exists and is cleaned up).
func (c *CNI) Add(name string, list *libcni.NetworkConfigList, a Attach) (*Container, error) {
	l := c.Node.lab
	ctr := &Container{Netns: l.Netns(name), IfName: a.IfName}
	if ctr.IfName == "" {
		ctr.IfName = "eth0"
	}
	ctr.ID = strings.ReplaceAll(ctr.Name, "-", "")
	rt := a.RuntimeConf(ctr)
	l.onCleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.cni.DelNetworkList(ctx, list, rt); err != nil {
			l.t.Logf("lab: CNI DEL %s (best effort): %v", ctr.Label, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	res, err := c.cni.AddNetworkList(ctx, list, rt)
	if err != nil {
		return ctr, err
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return ctr, fmt.Errorf("convert CNI result: %w", err)
	}
	ctr.Result = cur
	return ctr, nil
}

// MustAdd is Add that fails the test on error.
func (c *CNI) MustAdd(name string, list *libcni.NetworkConfigList, a Attach) *Container {
	c.Node.lab.t.Helper()
	ctr, err := c.Add(name, list, a)
	if err != nil {
		c.Node.lab.t.Fatalf("lab: CNI ADD %s: %v", name, err)
	}
	return ctr
}

// Del runs DEL for the container on list.
func (c *CNI) Del(ctr *Container, list *libcni.NetworkConfigList, a Attach) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.cni.DelNetworkList(ctx, list, a.RuntimeConf(ctr))
}

// Check runs CHECK for the container on list.
func (c *CNI) Check(ctr *Container, list *libcni.NetworkConfigList, a Attach) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return c.cni.CheckNetworkList(ctx, list, a.RuntimeConf(ctr))
}

// Config exposes libcni for GC and STATUS calls.
func (c *CNI) Config() *libcni.CNIConfig { return c.cni }

// nodeExec is libcni's invoke.Exec with plugins started in the node's
// network namespace, as a runtime on that node starts them: the plugin's
// own netns (for the bridge, the host-side veth, sysctls) is the node's.
// The process is started from a thread switched into the namespace (a
// child inherits its parent thread's namespaces), not through nsenter, so
// that a plugin's measured time is its own.
type nodeExec struct {
	node   *Netns
	onExec func(plugin string, took time.Duration)
	version.PluginDecoder
}

var _ invoke.Exec = &nodeExec{}

func (e *nodeExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := e.node.Do(cmd.Start)
	if err == nil {
		err = cmd.Wait()
	}
	if e.onExec != nil {
		e.onExec(filepath.Base(pluginPath), time.Since(start))
	}
	if err != nil {
		return nil, pluginErr(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func (e *nodeExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// pluginErr turns a failed plugin run into the CNI error it printed, as
// libcni's own executor does.
func pluginErr(err error, stdout, stderr []byte) error {
	emsg := types.Error{}
	switch {
	case len(stdout) > 0:
		if perr := json.Unmarshal(stdout, &emsg); perr != nil {
			emsg.Msg = fmt.Sprintf("plugin failed (%v) and its output %q is not a CNI error: %v", err, stdout, perr)
		}
	case len(stderr) > 0:
		emsg.Msg = fmt.Sprintf("plugin failed: %q", stderr)
	default:
		emsg.Msg = fmt.Sprintf("plugin failed with no message: %v", err)
	}
	return &emsg
}

// Remove runs DEL for the container and deletes its namespace now (the
// lab's cleanup would do both at the end; repeating them is harmless).
func (c *CNI) Remove(ctr *Container, list *libcni.NetworkConfigList, a Attach) error {
	err := c.Del(ctr, list, a)
	if derr := deleteNetns(ctr.Name); derr != nil && err == nil {
		err = derr
	}
	return err
}

// HostVeth names the node-side end of the container's veth, found the way
// the netseg plugin finds it: from the container interface's peer ifindex.
func (c *Container) HostVeth(node *Netns) string {
	t := c.lab.t
	t.Helper()
	var peer int
	err := c.Do(func() error {
		l, err := netlink.LinkByName(c.IfName)
		if err != nil {
			return err
		}
		peer = l.Attrs().ParentIndex
		return nil
	})
	if err != nil || peer == 0 {
		t.Fatalf("lab: peer ifindex of %s in %s: %v", c.IfName, c.Label, err)
	}
	link, err := node.Handle().LinkByIndex(peer)
	if err != nil {
		t.Fatalf("lab: host veth of %s (ifindex %d) in %s: %v", c.Label, peer, node.Label, err)
	}
	return link.Attrs().Name
}

// LinkLocal returns c's IPv6 link-local address with its interface's index
// as zone, once duplicate address detection is done with it; it fails the
// lab's test after 10 s without one.
func (c *Container) LinkLocal() netip.Addr {
	c.lab.t.Helper()
	link, err := c.Handle().LinkByName(c.IfName)
	if err != nil {
		c.lab.t.Fatalf("lab: %s: %v", c.IfName, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		addrs, err := c.Handle().AddrList(link, netlink.FAMILY_V6)
		if err != nil {
			c.lab.t.Fatalf("lab: addresses of %s: %v", c.IfName, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if ok && ip.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE == 0 {
				return ip.WithZone(strconv.Itoa(link.Attrs().Index))
			}
		}
		if time.Now().After(deadline) {
			c.lab.t.Fatalf("lab: %s has no usable link-local address: %v", c.IfName, addrs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
