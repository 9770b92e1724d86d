package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Netns is one network namespace of a lab: a node or a container.
type Netns struct {
	Name  string // the namespace's name under /var/run/netns
	Path  string // its bind mount, what CNI calls CNI_NETNS
	Label string // the short name the test gave
	lab   *Lab
}

// Do runs f on an OS thread switched into the namespace. Sockets created
// inside f belong to the namespace for their whole life. If the thread
// cannot be switched back, it is left locked so the Go runtime retires it
// rather than reuse a thread in the wrong namespace.
func (n *Netns) Do(f func() error) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(n.Path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", n.Name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", n.Name, err)
	}
	ferr := f()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: it dies with this goroutine.
		return fmt.Errorf("leave netns %s: %w (after: %v)", n.Name, err, ferr)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Handle opens a netlink handle bound to the namespace; the lab closes it.
func (n *Netns) Handle() *netlink.Handle {
	n.lab.t.Helper()
	ns, err := netns.GetFromPath(n.Path)
	if err != nil {
		n.lab.t.Fatalf("lab: open netns %s: %v", n.Name, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		n.lab.t.Fatalf("lab: netlink handle in %s: %v", n.Name, err)
	}
	n.lab.onCleanup(h.Close)
	return h
}

// NFT opens an nftables connection bound to the namespace (never the host's).
func (n *Netns) NFT() *nftables.Conn {
	n.lab.t.Helper()
	ns, err := netns.GetFromPath(n.Path)
	if err != nil {
		n.lab.t.Fatalf("lab: open netns %s: %v", n.Name, err)
	}
	// The fd must stay open as long as the connection: the lab closes both.
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		ns.Close()
		n.lab.t.Fatalf("lab: nftables conn in %s: %v", n.Name, err)
	}
	n.lab.onCleanup(func() { _ = c.CloseLasting(); ns.Close() })
	return c
}

// Command returns a command that runs inside the namespace. It uses nsenter
// (not "ip netns exec", which remounts /sys) so only the network namespace
// changes. The lab kills it, if still running, before removing namespaces.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + n.Path, "--", name}, args...)...)
	// A test binary killed before its cleanups run (a timeout, a signal)
	// must not leave an agent running in a namespace nobody can name any
	// more: the kernel kills the process when its parent goes. (The
	// signal follows the thread that started it; the Go runtime keeps its
	// threads unless a goroutine ends while locked to one, which the lab
	// does only when it could not leave a namespace.) nsenter execs the
	// command, which keeps the setting.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	n.lab.onCleanup(func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_, _ = cmd.Process.Wait()
		}
	})
	return cmd
}

// Run runs a command inside the namespace and returns its combined output.
func (n *Netns) Run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := n.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n.Label, err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// MustRun is Run that fails the test on error.
func (n *Netns) MustRun(name string, args ...string) string {
	n.lab.t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		n.lab.t.Fatalf("lab: %v", err)
	}
	return out
}

// MustSysctl writes a sysctl under /proc/sys/net inside the namespace.
// /proc/sys/net is per network namespace: the file is opened from a thread
// inside it.
func (n *Netns) MustSysctl(key, value string) {
	n.lab.t.Helper()
	if err := n.sysctl(key, value); err != nil {
		n.lab.t.Fatalf("lab: %v", err)
	}
}

func (n *Netns) sysctl(key, value string) error {
	path := filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
	if err := n.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		return fmt.Errorf("sysctl %s=%s in %s: %w", key, value, n.Label, err)
	}
	return nil
}

// Veth creates a veth pair with one end in n and the other in peer, both up.
func (n *Netns) Veth(name string, peer *Netns, peerName string) {
	n.lab.t.Helper()
	pns, err := netns.GetFromPath(peer.Path)
	if err != nil {
		n.lab.t.Fatalf("lab: open netns %s: %v", peer.Name, err)
	}
	defer pns.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: name},
		PeerName:      peerName,
		PeerNamespace: netlink.NsFd(pns),
	}
	if err := n.Handle().LinkAdd(veth); err != nil {
		n.lab.t.Fatalf("lab: veth %s/%s -> %s/%s: %v", n.Label, name, peer.Label, peerName, err)
	}
	n.MustRun("ip", "link", "set", name, "up")
	peer.MustRun("ip", "link", "set", peerName, "up")
}

// HostTables lists the nftables tables of the host's namespace as
// "family name" strings. It only reads.
func HostTables() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("nftables conn: %w", err)
	}
	tables, err := c.ListTables()
	if err != nil {
		return nil, fmt.Errorf("list host tables: %w", err)
	}
	var names []string
	for _, t := range tables {
		names = append(names, fmt.Sprintf("%s %s", familyName(t.Family), t.Name))
	}
	return names, nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyBridge:
		return "bridge"
	}
	return fmt.Sprintf("family%d", f)
}

// CanonicalTable normalizes "nft list table" output for comparison: the
// objects (sets, maps, chains, counters) sorted by their text, counter
// values blanked. Two tables holding the same objects compare equal
// whatever order they were created in.
func CanonicalTable(out string) string {
	out = counterValues.ReplaceAllString(out, "packets 0 bytes 0")
	lines := strings.Split(out, "\n")
	var blocks []string
	var cur []string
	for _, line := range lines {
		if strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, "\t\t") && strings.HasSuffix(line, "{") {
			if len(cur) > 0 {
				blocks = append(blocks, strings.Join(cur, "\n"))
			}
			cur = []string{line}
			continue
		}
		if len(cur) > 0 && strings.HasPrefix(line, "\t") && strings.TrimSpace(line) != "" {
			cur = append(cur, line)
		}
	}
	if len(cur) > 0 {
		blocks = append(blocks, strings.Join(cur, "\n"))
	}
	sort.Strings(blocks)
	return strings.Join(blocks, "\n")
}

var counterValues = regexp.MustCompile(`packets \d+ bytes \d+`)

// ShortConntrackTimeouts ends the conntrack entries of closed TCP
// connections and of UDP exchanges after a second inside n (the sysctls
// are per network namespace), so flow records of lab traffic come fast.
func (n *Netns) ShortConntrackTimeouts() {
	n.lab.t.Helper()
	for _, key := range []string{"tcp_timeout_time_wait", "tcp_timeout_close", "tcp_timeout_fin_wait",
		"tcp_timeout_last_ack", "tcp_timeout_close_wait", "udp_timeout", "udp_timeout_stream"} {
		n.MustSysctl("net.netfilter.nf_conntrack_"+key, "1")
	}
}

// ConntrackOnly adds a table whose one rule accepts established traffic
// (everything else passes by the chain's policy): connection tracking
// alone, the floor of any stateful firewall, for benchmarks to compare
// with. The returned function removes the table.
func (n *Netns) ConntrackOnly() (remove func()) {
	n.lab.t.Helper()
	n.MustRun("nft", "add table inet ctonly; add chain inet ctonly f { type filter hook forward priority 0; policy accept; }; add rule inet ctonly f ct state established,related accept")
	return func() { n.MustRun("nft", "delete table inet ctonly") }
}
