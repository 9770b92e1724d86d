package e2e_test

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/e2e/lab"
)

// trafficWatch keeps traffic going while a fault is on: a probe that
// policy denies, a new connection that policy allows, and an established
// connection that echoes, round after round, and tallies what happened.
type trafficWatch struct {
	stop chan struct{}
	done chan struct{}

	mu    sync.Mutex
	round chan struct{} // closed at the end of the current round
	c     trafficTally
}

// trafficTally is what a trafficWatch saw.
type trafficTally struct {
	rounds         int
	deniedProbes   int
	deniedAdmitted int
	allowedProbes  int
	allowedFailed  int
	echoes         int
	establishedErr error
}

// watchTraffic starts probing: denied must never reach srv, allowed
// should, and conn (established from allowed to srv) must keep echoing.
func watchTraffic(t *testing.T, allowed, denied *lab.Container, srv netip.AddrPort) *trafficWatch {
	t.Helper()
	conn, err := allowed.Dial("tcp", srv, time.Second)
	if err != nil {
		t.Fatalf("establish a connection to %s: %v", srv, err)
	}
	w := &trafficWatch{stop: make(chan struct{}), done: make(chan struct{}), round: make(chan struct{})}
	go func() {
		defer close(w.done)
		defer conn.Close()
		for i := 0; ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			dErr := denied.Probe("tcp", srv, probeTimeout)
			aErr := allowed.Probe("tcp", srv, time.Second)
			w.mu.Lock()
			broken := w.c.establishedErr != nil
			w.mu.Unlock()
			var eErr error
			if !broken {
				eErr = echo(conn, fmt.Sprintf("%08d", i%100000000))
			}
			w.mu.Lock()
			w.c.deniedProbes++
			if dErr == nil {
				w.c.deniedAdmitted++
			}
			w.c.allowedProbes++
			if aErr != nil {
				w.c.allowedFailed++
			}
			if !broken {
				if eErr != nil {
					w.c.establishedErr = eErr
				} else {
					w.c.echoes++
				}
			}
			w.c.rounds++
			close(w.round)
			w.round = make(chan struct{})
			w.mu.Unlock()
		}
	}()
	t.Cleanup(w.end)
	return w
}

func echo(conn net.Conn, msg string) error {
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
		return fmt.Errorf("echo %q: got %q, %v", msg, buf, err)
	}
	return nil
}

// waitRounds returns once k more rounds of probes have finished.
func (w *trafficWatch) waitRounds(k int) {
	for range k {
		w.mu.Lock()
		ch := w.round
		w.mu.Unlock()
		select {
		case <-ch:
		case <-w.done:
			return
		}
	}
}

// end stops the probes (it may be called more than once).
func (w *trafficWatch) end() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// tally ends the probes and returns what they saw.
func (w *trafficWatch) tally() trafficTally {
	w.end()
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.c
}

// faultRow checks what every fault must hold (no denied connection
// admitted, the established connection alive unless mayDrop) and logs
// the fault table's row: fault | denied admitted | established dropped |
// records lost | recovered in.
func faultRow(t *testing.T, fault string, w trafficTally, lost string, recovered time.Duration) {
	t.Helper()
	if w.deniedAdmitted != 0 {
		t.Errorf("%s: %d of %d denied probes admitted", fault, w.deniedAdmitted, w.deniedProbes)
	}
	dropped := 0
	if w.establishedErr != nil {
		dropped = 1
		t.Errorf("%s: the established connection broke after %d echoes: %v", fault, w.echoes, w.establishedErr)
	}
	t.Logf("FAULT | %s | denied admitted %d/%d | established dropped %d/1 (%d echoes) | allowed new failed %d/%d | lost %s | recovered in %v",
		fault, w.deniedAdmitted, w.deniedProbes, dropped, w.echoes, w.allowedFailed, w.allowedProbes, lost, recovered.Round(time.Millisecond))
}

// shopTraffic is the usual cast: checkout may reach payments:8443,
// monitoring may not.
func shopTraffic(t *testing.T, n *node) (checkout, monitoring *lab.Container, srv netip.AddrPort) {
	t.Helper()
	checkout = n.pod("checkout", "shop", "checkout", checkoutLabels)
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	monitoring = n.pod("monitoring", "ops", "monitoring", monitoringLabels)
	srv = listen(payments, 8443)
	expectPass(t, "checkout -> payments 8443", checkout.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 8443", monitoring.Probe("tcp", srv, probeTimeout))
	return checkout, monitoring, srv
}

// policyErr is the policy error the agent reports ("" when none).
func (n *node) policyErr(t *testing.T) string {
	t.Helper()
	return n.status(t).Status.LastError
}

// TestFaultPolicyDirLoss: the policy directory's files moved aside, the
// directory renamed away, emptied, and a file left half-written in place.
// Each is refused and reported while the last good policy stays in
// force (traffic does not change), and restoring the files brings the
// agent back to no policy error on its own.
func TestFaultPolicyDirLoss(t *testing.T) {
	n := newNode(t, "bridge")
	checkout, monitoring, srv := shopTraffic(t, n)
	saved := t.TempDir()
	copyDir(t, n.policyDir, saved)
	files, err := filepath.Glob(filepath.Join(n.policyDir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("policy files: %v %v", files, err)
	}
	restoreFiles := func() {
		for _, f := range files {
			b, err := os.ReadFile(filepath.Join(saved, filepath.Base(f)))
			if err != nil {
				t.Fatal(err)
			}
			tmp := f + ".tmp"
			if err := os.WriteFile(tmp, b, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	gen := n.status(t).Status.PolicyGeneration
	faults := []struct {
		name    string
		want    string // in the reported error
		inject  func()
		restore func()
	}{
		{"policy files moved aside (.bak)", "lost every", func() {
			for _, f := range files {
				if err := os.Rename(f, f+".bak"); err != nil {
					t.Fatal(err)
				}
			}
		}, func() {
			for _, f := range files {
				if err := os.Rename(f+".bak", f); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"policy directory renamed away", n.policyDir, func() {
			if err := os.Rename(n.policyDir, n.policyDir+".old"); err != nil {
				t.Fatal(err)
			}
		}, func() {
			if err := os.Rename(n.policyDir+".old", n.policyDir); err != nil {
				t.Fatal(err)
			}
		}},
		{"policy directory emptied", "lost every", func() {
			for _, f := range files {
				if err := os.Remove(f); err != nil {
					t.Fatal(err)
				}
			}
		}, restoreFiles},
		{"policy file half-written in place", filepath.Base(files[len(files)-1]), func() {
			f := files[len(files)-1]
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// Cut inside a document, as a writer that died mid-write leaves it.
			cut := len(b) / 2
			for cut < len(b) && b[cut] != ':' {
				cut++
			}
			if err := os.WriteFile(f, b[:cut+1], 0o644); err != nil {
				t.Fatal(err)
			}
		}, restoreFiles},
	}
	for _, f := range faults {
		w := watchTraffic(t, checkout, monitoring, srv)
		w.waitRounds(1)
		f.inject()
		waitFor(t, f.name+": refused and reported", 5*time.Second, func() (bool, string) {
			e := n.policyErr(t)
			return strings.Contains(e, f.want), e
		})
		if st := n.status(t); !st.Ready || st.Status.PolicyGeneration != gen {
			t.Errorf("%s: ready %v, generation %d (was %d): the last good policy must stay in force, ready", f.name, st.Ready, st.Status.PolicyGeneration, gen)
		}
		w.waitRounds(3) // traffic while the fault lasts
		f.restore()
		took := waitFor(t, f.name+": policy error cleared once restored", 10*time.Second, func() (bool, string) {
			e := n.policyErr(t)
			return e == "", e
		})
		faultRow(t, f.name, w.tally(), "0 (nothing applied)", took)
		gen = n.status(t).Status.PolicyGeneration
	}
	expectDrop(t, "monitoring -> payments 8443 after every fault", monitoring.Probe("tcp", srv, probeTimeout))
	expectPass(t, "checkout -> payments 8443 after every fault", checkout.Probe("tcp", srv, probeTimeout))
}

// TestFaultKillDuringSync: the policy changes back and forth, and each
// time the agent is killed with -9 at a random moment of the reload and
// sync that follows, and restarted. The kernel always ends with exactly
// the ruleset of the policy on disk, and no denied connection passes.
func TestFaultKillDuringSync(t *testing.T) {
	const rounds = 10
	n := newNode(t, "bridge")
	checkout, monitoring, srv := shopTraffic(t, n)
	dep := filepath.Join(n.policyDir, "dependencies.yaml")
	a, err := os.ReadFile(dep)
	if err != nil {
		t.Fatal(err)
	}
	card := "  - name: card-network\n    cidr: 203.0.113.0/25\n    ports: [{protocol: TCP, port: 443}]\n"
	if !strings.Contains(string(a), card) {
		t.Fatalf("dependencies.yaml has no card-network entry to change")
	}
	variants := [2][]byte{a, []byte(strings.Replace(string(a), card, "", 1))}
	write := func(v int) {
		tmp := dep + ".tmp"
		if err := os.WriteFile(tmp, variants[v], 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, dep); err != nil {
			t.Fatal(err)
		}
	}
	var tables [2]string
	tables[0] = n.settledTable(t, "")
	write(1)
	tables[1] = n.settledTable(t, "")
	if tables[0] == tables[1] {
		t.Fatal("the two policies give one ruleset: the test would not see a lost sync")
	}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	w := watchTraffic(t, checkout, monitoring, srv)
	var worst time.Duration
	for r := range rounds {
		v := r % 2 // the policy on disk is variant 1: write 0, then 1, ...
		write(v)
		// The agent reads a change after a quiet 300 ms (polled every
		// 50 ms here) and then syncs: kill anywhere from before the read
		// to after the sync.
		delay := time.Duration(rng.IntN(600)) * time.Millisecond
		time.Sleep(delay)
		n.stopAgent(syscall.SIGKILL)
		killed := time.Now()
		n.startAgent()
		n.settledTable(t, tables[v])
		took := time.Since(killed)
		worst = max(worst, took)
		t.Logf("round %d: killed %v after the write; kernel holds the policy on disk %v after the kill", r, delay, took.Round(time.Millisecond))
	}
	faultRow(t, fmt.Sprintf("agent killed -9 during a policy sync (%d times)", rounds), w.tally(), "0 (rules are in the kernel; the restart rebuilds)", worst)
}

// TestFaultFDExhaustion: the agent runs out of file descriptors (its
// limit lowered to what it holds plus 4, and idle clients holding the
// rest), for real. Enforcement goes on; accept errors are retried, the
// socket loop says "retrying"; the agent drops the idle clients after
// its read timeout and serves ADDs again without a human.
func TestFaultFDExhaustion(t *testing.T) {
	n := newNode(t, "bridge")
	checkout, monitoring, srv := shopTraffic(t, n)
	pid := n.agent.Process.Pid
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatal(err)
	}
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, nil, &old); err != nil {
		t.Fatal(err)
	}
	low := unix.Rlimit{Cur: uint64(len(fds) + 4), Max: old.Max}
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &low, nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("agent holds %d descriptors; limit lowered to %d", len(fds), low.Cur)
	w := watchTraffic(t, checkout, monitoring, srv)
	w.waitRounds(1)
	var hogs []net.Conn
	defer func() {
		for _, c := range hogs {
			c.Close()
		}
	}()
	for range 12 { // idle clients: the agent accepts some, then runs out
		c, err := net.Dial("unix", n.socket)
		if err != nil {
			t.Fatalf("dial the agent: %v", err)
		}
		hogs = append(hogs, c)
	}
	logPath := filepath.Join(n.stateDir, "agent.log")
	waitFor(t, "the agent's accept fails for lack of descriptors", 10*time.Second, func() (bool, string) {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "too many open files"), "no EMFILE in the agent's log"
	})
	exhausted := time.Now()
	// The runtime retries a failed ADD after a DEL of what it made, and
	// retries a DEL that failed until it works.
	type pending struct {
		ctr *lab.Container
		a   lab.Attach
	}
	var dels []pending
	var added *lab.Container
	failedAdds := 0
	for i := 0; added == nil; i++ {
		if time.Since(exhausted) > 60*time.Second {
			t.Fatalf("no ADD worked within 60 s of the exhaustion (%d failed)", failedAdds)
		}
		a := n.attach("shop", fmt.Sprintf("checkout-fd%d", i), checkoutLabels)
		ctr, err := n.cni.Add(fmt.Sprintf("fd%d", i), n.list, a)
		if err == nil {
			added = ctr
			break
		}
		failedAdds++
		t.Logf("ADD while out of descriptors: %v", err)
		dels = append(dels, pending{ctr, a})
		for len(dels) > 0 {
			if err := n.cni.Remove(dels[0].ctr, n.list, dels[0].a); err != nil {
				t.Logf("DEL while out of descriptors (retried later): %v", err)
				break
			}
			dels = dels[1:]
		}
	}
	took := time.Since(exhausted)
	for _, d := range dels {
		if err := n.cni.Remove(d.ctr, n.list, d.a); err != nil {
			t.Errorf("DEL once the agent serves again: %v", err)
		}
	}
	w.waitRounds(1)
	expectPass(t, "the new checkout -> payments 8443", added.Probe("tcp", srv, probeTimeout))
	st := n.status(t)
	if l := statusLoop(t, st.Status, "socket"); l.State != "ok" {
		t.Errorf("socket loop after recovery: %+v", l)
	}
	faultRow(t, "file descriptors exhausted (limit = held + 4, 12 idle clients)", w.tally(),
		fmt.Sprintf("0 (%d ADDs failed while exhausted; the runtime retried)", failedAdds), took)
	if err := unix.Prlimit(pid, unix.RLIMIT_NOFILE, &old, nil); err != nil {
		t.Fatal(err)
	}
}

// statusLoop finds a background loop in st.
func statusLoop(t *testing.T, st *agent.Status, name string) agent.Loop {
	t.Helper()
	for _, l := range st.Loops {
		if l.Name == name {
			return l
		}
	}
	t.Fatalf("status has no loop %q", name)
	return agent.Loop{}
}

// sysctlIn reads a sysctl of the node's namespace.
func sysctlIn(t *testing.T, ns *lab.Netns, path string) int {
	t.Helper()
	var v int
	err := ns.Do(func() error {
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		_, err = fmt.Sscan(string(b), &v)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestFaultConntrackFull: the node's conntrack table filled to
// nf_conntrack_max (entries loaded in the node's namespace with
// conntrack -R; the limit is the host's and cannot be lowered in a
// namespace, the count is the namespace's own). New connections are
// dropped by the kernel, allowed ones too: a denied one is never admitted,
// the established connection lives, and the agent warns (conntrack-check
// failing) while it stays ready. Once the entries go, allowed connections
// work again and the warning clears on its own.
func TestFaultConntrackFull(t *testing.T) {
	n := newNode(t, "bridge")
	checkout, monitoring, srv := shopTraffic(t, n)
	const countPath, maxPath = "/proc/sys/net/netfilter/nf_conntrack_count", "/proc/sys/net/netfilter/nf_conntrack_max"
	limit := sysctlIn(t, n.ns, maxPath)
	w := watchTraffic(t, checkout, monitoring, srv)
	w.waitRounds(1)
	fill := limit - sysctlIn(t, n.ns, countPath)
	var b strings.Builder
	for i := range fill { // UDP entries between addresses no test uses, assured so the kernel cannot evict them early
		fmt.Fprintf(&b, "-I -s 10.250.%d.%d -d 10.251.0.1 -p udp --sport %d --dport 53 -t 900 -u ASSURED,SEEN_REPLY\n",
			i/60000/250, i/60000%250+1, 1024+i%60000)
	}
	file := filepath.Join(t.TempDir(), "fill.ct")
	if err := os.WriteFile(file, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err := n.ns.Run("conntrack", "-R", file)
	t.Logf("loaded %d entries in %v (limit %d, count now %d): %v %s", fill, time.Since(start).Round(time.Millisecond), limit,
		sysctlIn(t, n.ns, countPath), err, tail(out, 2))
	t.Cleanup(func() { _, _ = n.ns.Run("conntrack", "-D", "-d", "10.251.0.1") })
	waitFor(t, "the agent warns that conntrack is full", 10*time.Second, func() (bool, string) {
		l := statusLoop(t, n.status(t).Status, "conntrack-check")
		return l.State == "failing" && strings.Contains(l.Error, "conntrack table is full"), fmt.Sprintf("%+v", l)
	})
	if !n.status(t).Ready {
		t.Error("the agent is not ready with conntrack full: it must stay ready (its rules work; the kernel drops new connections)")
	}
	w.waitRounds(3)
	if err := checkout.Probe("tcp", srv, probeTimeout); err == nil {
		t.Logf("an allowed connection got through with conntrack at %d of %d", sysctlIn(t, n.ns, countPath), limit)
	}
	freed := time.Now()
	if _, err := n.ns.Run("conntrack", "-D", "-d", "10.251.0.1"); err != nil {
		t.Logf("conntrack -D: %v", err)
	}
	waitFor(t, "allowed connections work again", 10*time.Second, func() (bool, string) {
		err := checkout.Probe("tcp", srv, probeTimeout)
		return err == nil, probeString(err)
	})
	waitFor(t, "the warning clears", 10*time.Second, func() (bool, string) {
		l := statusLoop(t, n.status(t).Status, "conntrack-check")
		return l.State == "ok", fmt.Sprintf("%+v", l)
	})
	took := time.Since(freed)
	tl := w.tally()
	faultRow(t, "conntrack table full", tl, fmt.Sprintf("allowed new connections dropped by the kernel: %d/%d", tl.allowedFailed, tl.allowedProbes), took)
}

// TestFaultPrimaryCNIRewritesConflist: the node's primary network plugin
// rewrites its conflist without netseg (as many do when they restart).
// The agent (--keep-chained) chains netseg again, with the entry it had,
// within its check interval; a container the runtime adds from the
// rewritten file meanwhile gets no netseg rules and so no traffic at all
// (its address is in the pod network, unregistered: fail closed); one
// added from the file afterwards is enforced. Traffic of existing
// containers never changes.
func TestFaultPrimaryCNIRewritesConflist(t *testing.T) {
	n := newNode(t, "bridge")
	confDir := t.TempDir()
	conf := filepath.Join(confDir, "10-pods.conflist")
	if err := os.WriteFile(conf, n.list.Bytes, 0o644); err != nil {
		t.Fatal(err)
	}
	n.stopAgent(syscall.SIGTERM)
	n.agentArgs = append(n.agentArgs, "--cni-conf-dir", confDir, "--keep-chained")
	n.startAgent()
	checkout, monitoring, srv := shopTraffic(t, n)
	w := watchTraffic(t, checkout, monitoring, srv)
	w.waitRounds(1)

	// The primary plugin's own conflist: its entry alone, written by rename.
	var raw map[string]any
	if err := json.Unmarshal(n.list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	raw["plugins"] = raw["plugins"].([]any)[:1]
	primary, err := json.Marshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf+".tmp", primary, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(conf+".tmp", conf); err != nil {
		t.Fatal(err)
	}
	rewritten := time.Now()
	// A runtime that read the rewritten file at once.
	gap := n.attach("shop", "checkout-gap", checkoutLabels)
	gapCtr, err := n.cni.Add("gap", n.cni.ParseConfList(t, string(primary)), gap)
	if err != nil {
		t.Fatalf("ADD through the primary plugin alone: %v", err)
	}
	expectDrop(t, "a container added without netseg -> payments 8443 (fail closed)", gapCtr.Probe("tcp", srv, probeTimeout))
	waitFor(t, "the agent chains netseg again", 10*time.Second, func() (bool, string) {
		b, err := os.ReadFile(conf)
		return err == nil && strings.Contains(string(b), `"netseg"`), string(b)
	})
	took := time.Since(rewritten)
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	again := n.cni.ParseConfList(t, string(b))
	var entry map[string]any
	if err := json.Unmarshal(again.Plugins[len(again.Plugins)-1].Bytes, &entry); err != nil {
		t.Fatal(err)
	}
	if entry["stateDir"] != n.pluginDir || entry["timeout"] != "5s" {
		t.Errorf("netseg chained again without the entry it had: %v", entry)
	}
	if err := n.cni.Remove(gapCtr, n.cni.ParseConfList(t, string(primary)), gap); err != nil {
		t.Fatal(err)
	}
	after := n.cni.MustAdd("after", again, n.attach("shop", "checkout-after", checkoutLabels))
	expectPass(t, "a container added from the rechained file -> payments 8443", after.Probe("tcp", srv, probeTimeout))
	if st := n.status(t); !st.Ready {
		t.Errorf("not ready after rechaining: %v", st.Status.Warnings)
	}
	faultRow(t, "primary CNI rewrote its conflist without netseg", w.tally(), "0 (a container added in the gap had no traffic: fail closed)", took)
}
