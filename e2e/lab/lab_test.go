package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/e2e/lab"
)

func TestMain(m *testing.M) { lab.Main(m) }

// A test's *testing.T or *testing.B owns a lab.
var _ lab.T = testing.TB(nil)

// Test address conventions: every lab network uses documentation-free
// private ranges that exist only inside the test's own namespaces.
const (
	bridgeSubnet = "10.88.0.0/24"
	ptpSubnet    = "10.89.0.0/24"
	subnet6      = "fd00:88::/64"
)

func TestBridgePluginMovesTraffic(t *testing.T) {
	l := lab.New(t)
	node := l.Node("node")
	cni := node.CNI()
	list := cni.ParseConfList(t, lab.Net{Name: "labnet", Type: "bridge", Subnet: bridgeSubnet, Subnet6: subnet6, DataDir: t.TempDir()}.ConfList())
	a := cni.MustAdd("a", list, lab.Attach{PodNamespace: "shop", PodName: "a"})
	b := cni.MustAdd("b", list, lab.Attach{PodNamespace: "shop", PodName: "b"})

	// The bridge exists in the node, not in the host.
	if out := node.MustRun("ip", "-o", "link", "show", "nslab0"); !strings.Contains(out, "nslab0") {
		t.Fatalf("bridge not in node: %s", out)
	}
	for _, fam := range []int{4, 6} {
		dst := b.IP(fam)
		if !dst.IsValid() {
			t.Fatalf("container b has no IPv%d address: %+v", fam, b.Result.IPs)
		}
		tcp := b.ListenTCP(netip.AddrPortFrom(dst, 0).String())
		udp := b.ListenUDP(netip.AddrPortFrom(dst, 0).String())
		if err := a.Probe("tcp", tcp.Addr, 3*time.Second); err != nil {
			t.Errorf("IPv%d TCP a -> b: %v", fam, err)
		}
		if err := a.Probe("udp", udp.Addr, 3*time.Second); err != nil {
			t.Errorf("IPv%d UDP a -> b: %v", fam, err)
		}
		if err := a.Ping(dst, 3*time.Second); err != nil {
			t.Errorf("IPv%d ICMP a -> b: %v", fam, err)
		}
	}
}

func TestPtpPluginMovesTraffic(t *testing.T) {
	l := lab.New(t)
	node := l.Node("node")
	cni := node.CNI()
	list := cni.ParseConfList(t, lab.Net{Name: "labptp", Type: "ptp", Subnet: ptpSubnet, DataDir: t.TempDir()}.ConfList())
	a := cni.MustAdd("a", list, lab.Attach{})
	b := cni.MustAdd("b", list, lab.Attach{})
	srv := b.ListenTCP(netip.AddrPortFrom(b.IP(4), 7000).String())
	if err := a.Probe("tcp", srv.Addr, 3*time.Second); err != nil {
		t.Fatalf("TCP a -> b over ptp: %v", err)
	}
}

func TestProbeReportsSilence(t *testing.T) {
	l := lab.New(t)
	node := l.Node("node")
	c := l.Netns("c")
	node.Veth("v-c", c, "eth0")
	node.MustRun("ip", "addr", "add", "10.90.0.1/24", "dev", "v-c")
	c.MustRun("ip", "addr", "add", "10.90.0.2/24", "dev", "eth0")
	// Drop everything the node receives from c: the probe must time out.
	node.MustRun("nft", "add table inet t; add chain inet t in { type filter hook input priority 0; policy drop; }")
	err := c.Probe("tcp", netip.MustParseAddrPort("10.90.0.1:9"), 500*time.Millisecond)
	if !errors.Is(err, lab.ErrNoReply) {
		t.Fatalf("probe through a dropping node = %v, want ErrNoReply", err)
	}
	if err := c.Ping(netip.MustParseAddr("10.90.0.1"), 500*time.Millisecond); !errors.Is(err, lab.ErrNoReply) {
		t.Fatalf("ping through a dropping node = %v, want ErrNoReply", err)
	}
}

// TestCleanupAfterFailure runs tests that fail, panic, or are killed on
// purpose in a child process, then checks they left no namespace and no
// host table. A killed child runs no cleanup: the next test binary's
// sweep removes its namespaces, and the processes it started in them die
// with it.
func TestCleanupAfterFailure(t *testing.T) {
	for _, mode := range []string{"fail", "panic", "killed"} {
		t.Run(mode, func(t *testing.T) {
			before, err := lab.HostTables()
			if err != nil {
				t.Fatal(err)
			}
			pidFile := t.TempDir() + "/sleeper.pid"
			cmd := exec.Command(os.Args[0], "-test.run=^TestFailsOnPurpose$", "-test.v")
			cmd.Env = append(os.Environ(), "NSLAB_FAIL_ON_PURPOSE="+mode, "NSLAB_PIDFILE="+pidFile)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("child test should have failed; output:\n%s", out)
			}
			if !strings.Contains(string(out), "built the network") {
				t.Fatalf("child did not reach its failure point:\n%s", out)
			}
			if mode == "killed" {
				if err := processGone(pidFile, 2*time.Second); err != nil {
					t.Error(err)
				}
				if _, err := lab.SweepStale(); err != nil {
					t.Fatal(err)
				}
			}
			left, err := lab.Namespaces()
			if err != nil {
				t.Fatal(err)
			}
			// Only the child's namespaces count: other test processes may
			// be running beside this one.
			child := lab.Prefix + strconv.Itoa(cmd.Process.Pid) + "-"
			for _, name := range left {
				if strings.HasPrefix(name, child) {
					t.Errorf("namespace %s left behind by the failing child", name)
				}
			}
			after, err := lab.HostTables()
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(before, ",") != strings.Join(after, ",") {
				t.Errorf("host tables changed: before %v, after %v", before, after)
			}
		})
	}
}

// TestFailsOnPurpose builds a network with a bridge, a CNI container and an
// nftables table, then fails or panics. It only runs as TestCleanupAfterFailure's child.
func TestFailsOnPurpose(t *testing.T) {
	mode := os.Getenv("NSLAB_FAIL_ON_PURPOSE")
	if mode == "" {
		return // not the child: nothing to do (this is not a skip of a real test)
	}
	l := lab.New(t)
	node := l.Node("node")
	cni := node.CNI()
	list := cni.ParseConfList(t, lab.Net{Name: "labnet", Type: "bridge", Subnet: bridgeSubnet, DataDir: t.TempDir()}.ConfList())
	c := cni.MustAdd("c", list, lab.Attach{})
	c.ListenTCP(netip.AddrPortFrom(c.IP(4), 0).String())
	node.MustRun("nft", "add table inet netseg")
	t.Log("built the network")
	switch mode {
	case "panic":
		panic("on purpose")
	case "killed":
		sleeper := node.Command(context.Background(), "sleep", "300")
		if err := sleeper.Start(); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(os.Getenv("NSLAB_PIDFILE"), []byte(strconv.Itoa(sleeper.Process.Pid)), 0o600); err != nil {
			t.Fatal(err)
		}
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	}
	t.Fatal("on purpose")
}

// processGone waits up to d for the process whose pid is in pidFile to
// end (or be a zombie waiting for init); if it does not, it kills it and
// says so.
func processGone(pidFile string, d time.Duration) error {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("the killed child wrote no pid: %w", err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	for deadline := time.Now().Add(d); ; time.Sleep(20 * time.Millisecond) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return nil
		}
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			return fmt.Errorf("process %d, started in a lab namespace, outlived the killed test by %v", pid, d)
		}
	}
}
