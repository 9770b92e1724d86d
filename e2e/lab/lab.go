// Package lab builds throw-away networks for netseg's kernel and end-to-end
// tests: "nodes" and "containers" are network namespaces, wired with veth
// pairs, bridges or the real CNI reference plugins run through libcni.
//
// A test never touches the host's own network namespace: every link, bridge
// and nftables table a lab makes lives inside a namespace the lab created,
// and the lab deletes those namespaces (and closes the sockets and stops the
// processes that would keep them alive) in t.Cleanup, which the testing
// package runs even when the test fails or panics. Namespaces left by a test
// binary that was killed are swept by the next run (see Main): their names
// carry the creating process id.
package lab

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
)

// Prefix starts the name of every namespace a lab creates:
// "<Prefix><pid>-<seq>-<name>".
const Prefix = "nslab"

// netnsDir is where iproute2 (and so the lab) bind-mounts named namespaces.
const netnsDir = "/var/run/netns"

var seq atomic.Int64

// T is what a lab needs from its owner: a *testing.T or *testing.B, or a
// program such as the demo (e2e/demo) that implements the same calls
// (Fatalf must not return). The lab does not import the testing package,
// so a program that uses it links no test code.
type T interface {
	Helper()
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
}

// Lab owns the namespaces of one test and everything inside them.
type Lab struct {
	t T

	mu       sync.Mutex
	netnses  []*Netns
	closers  []func() // sockets and processes, closed before the namespaces go
	finished bool
}

// New returns a lab whose namespaces are removed when t ends, even if t
// fails or panics. A machine without root or netns support fails the test,
// since kernel tests are part of the suite; only a test run with -short
// (make unit: the tests that need no kernel) skips them.
func New(t T) *Lab {
	t.Helper()
	if sk, ok := t.(interface{ Skip(args ...any) }); ok && short() {
		sk.Skip("kernel test: skipped under -short (make test runs it)")
	}
	if os.Geteuid() != 0 {
		t.Fatalf("lab: kernel tests need root (euid %d)", os.Geteuid())
	}
	l := &Lab{t: t}
	t.Cleanup(l.cleanup)
	return l
}

// Netns creates a fresh network namespace with loopback up. name is a short
// label; the namespace's real name is unique to this process and lab.
func (l *Lab) Netns(name string) *Netns {
	l.t.Helper()
	full := fmt.Sprintf("%s%d-%d-%s", Prefix, os.Getpid(), seq.Add(1), name)
	if out, err := exec.Command("ip", "netns", "add", full).CombinedOutput(); err != nil {
		l.t.Fatalf("lab: create netns %s: %v: %s", full, err, out)
	}
	n := &Netns{Name: full, Path: filepath.Join(netnsDir, full), Label: name, lab: l}
	l.mu.Lock()
	l.netnses = append(l.netnses, n)
	l.mu.Unlock()
	n.MustRun("ip", "link", "set", "lo", "up")
	return n
}

// Node creates a namespace that plays a host: loopback up, IPv4 and IPv6
// forwarding on, so that routed (ptp) and bridged containers can talk.
func (l *Lab) Node(name string) *Netns {
	n := l.Netns(name)
	n.MustSysctl("net.ipv4.ip_forward", "1")
	n.MustSysctl("net.ipv6.conf.all.forwarding", "1")
	if _, err := os.Stat("/proc/sys/net/bridge"); err == nil {
		// br_netfilter: bridged traffic passes the node's inet forward hook.
		n.MustSysctl("net.bridge.bridge-nf-call-iptables", "1")
		n.MustSysctl("net.bridge.bridge-nf-call-ip6tables", "1")
	}
	return n
}

// onCleanup registers f to run before the namespaces are deleted.
func (l *Lab) onCleanup(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closers = append(l.closers, f)
}

// cleanup closes sockets and processes, then deletes the namespaces, last
// made first. Each step is best effort: a failure is reported and the rest
// still runs, so one stuck object never leaks the others.
func (l *Lab) cleanup() {
	l.mu.Lock()
	closers, netnses := l.closers, l.netnses
	l.closers, l.netnses, l.finished = nil, nil, true
	l.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	for i := len(netnses) - 1; i >= 0; i-- {
		if err := deleteNetns(netnses[i].Name); err != nil {
			l.t.Errorf("lab: %v", err)
		}
	}
}

func deleteNetns(name string) error {
	path := filepath.Join(netnsDir, name)
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return nil
	}
	// What "ip netns del" does: lazily unmount the bind mount, then remove
	// the file. The kernel frees the namespace, and with it every link and
	// nftables table inside, once nothing refers to it any more.
	if err := syscall.Unmount(path, syscall.MNT_DETACH); err != nil && err != syscall.EINVAL {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

var labName = regexp.MustCompile(`^` + Prefix + `(\d+)-\d+-`)

// Namespaces lists the lab namespaces present on the machine (any process).
func Namespaces() ([]string, error) {
	entries, err := os.ReadDir(netnsDir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var names []string
	for _, e := range entries {
		if labName.MatchString(e.Name()) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// SweepStale deletes lab namespaces whose creating process is gone (a test
// binary killed before its cleanups ran). It returns what it removed.
func SweepStale() ([]string, error) {
	names, err := Namespaces()
	if err != nil {
		return nil, err
	}
	var removed []string
	for _, name := range names {
		pid, _ := strconv.Atoi(labName.FindStringSubmatch(name)[1])
		if pid == os.Getpid() || processAlive(pid) {
			continue
		}
		if err := deleteNetns(name); err != nil {
			return removed, err
		}
		removed = append(removed, name)
	}
	return removed, nil
}

func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || err == syscall.EPERM
}

// Runner is the part of *testing.M that Main uses.
type Runner interface{ Run() int }

// Main wraps testing.M for packages with kernel tests: it sweeps stale lab
// namespaces first, and after the run fails the binary if this process left
// a lab namespace or a new host nftables table behind. The after functions
// run once the tests are done, before the process exits (Main does not
// return), e.g. to remove a directory TestMain made.
//
//	func TestMain(m *testing.M) { lab.Main(m) }
func Main(m Runner, after ...func()) {
	if os.Geteuid() == 0 {
		if removed, err := SweepStale(); err != nil {
			fmt.Fprintf(os.Stderr, "lab: sweep stale namespaces: %v\n", err)
		} else if len(removed) > 0 {
			fmt.Fprintf(os.Stderr, "lab: removed stale namespaces %s\n", strings.Join(removed, " "))
		}
	}
	before, beforeErr := HostTables()
	code := m.Run()
	for _, f := range after {
		f()
	}
	if os.Geteuid() == 0 {
		if leaked := ownNamespaces(); len(leaked) > 0 {
			fmt.Fprintf(os.Stderr, "lab: leaked namespaces: %s\n", strings.Join(leaked, " "))
			code = 1
		}
		after, err := HostTables()
		if beforeErr == nil && err == nil {
			if added := difference(after, before); len(added) > 0 {
				fmt.Fprintf(os.Stderr, "lab: tests left host nftables tables: %s\n", strings.Join(added, " "))
				code = 1
			}
		}
	}
	os.Exit(code)
}

func ownNamespaces() []string {
	names, _ := Namespaces()
	var own []string
	for _, name := range names {
		if labName.FindStringSubmatch(name)[1] == strconv.Itoa(os.Getpid()) {
			own = append(own, name)
		}
	}
	return own
}

func difference(a, b []string) []string {
	seen := make(map[string]bool, len(b))
	for _, s := range b {
		seen[s] = true
	}
	var out []string
	for _, s := range a {
		if !seen[s] {
			out = append(out, s)
		}
	}
	return out
}

// short reports whether this is a test binary run with -short. It reads
// the flag rather than call testing.Short, so that the lab links no
// testing package into the demo program.
func short() bool {
	f := flag.Lookup("test.short")
	return f != nil && f.Value.String() == "true"
}
