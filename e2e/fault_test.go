package e2e_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/e2e/lab"
)

// registered lists the agent's endpoints by container id.
func (n *node) registered(t *testing.T) map[string]agent.Endpoint {
	t.Helper()
	out := map[string]agent.Endpoint{}
	for _, ep := range n.call(t, agent.OpList).Endpoints {
		out[ep.ContainerID] = ep
	}
	return out
}

// agentCheck asks the agent to check a registered endpoint's rules in
// the kernel.
func (n *node) agentCheck(ep agent.Endpoint) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpCheck, Endpoint: &ep})
	return err
}

// burstAdd is one ADD of a burst and what came of it.
type burstAdd struct {
	name   string
	attach lab.Attach
	ctr    *lab.Container
	err    error
	allow  bool // labelled checkout (may reach payments:8443), else monitoring (may not)
}

// TestKillDuringAddBurst: the agent is killed with -9 at a random moment
// of a burst of 50 ADDs (4 at a time), 20 times, and restarted at once
// while the burst goes on. After each: every container whose ADD
// succeeded is registered, passes CNI CHECK (its rules read back from the
// kernel) and its traffic obeys policy; every container whose ADD failed
// is either not registered or fully programmed (CHECK passes), never
// registered without rules; and once the runtime has deleted the round's
// containers (as it does after a failed ADD too), the agent and the
// kernel hold exactly what they held before the round. NETSEG_FAULT_SEED
// replays a run.
func TestKillDuringAddBurst(t *testing.T) {
	const rounds, burst, workers = 20, 50, 4
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("NETSEG_FAULT_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("NETSEG_FAULT_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	n := newNode(t, "bridge")
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	baseTable := n.settledTable(t, "")
	baseRegistered := len(n.registered(t))
	var succeeded, failed int
	for r := range rounds {
		killAt := 1 + rng.IntN(burst-1)
		jitter := time.Duration(rng.IntN(30)) * time.Millisecond
		adds := make([]*burstAdd, burst)
		for i := range adds {
			a := &burstAdd{name: fmt.Sprintf("k%02d-%02d", r, i), allow: i%2 == 0}
			labels, app := monitoringLabels, "monitoring"
			if a.allow {
				labels, app = checkoutLabels, "checkout"
			}
			ns := map[bool]string{true: "shop", false: "ops"}[a.allow]
			a.attach = n.attach(ns, app+"-"+a.name, labels)
			adds[i] = a
		}
		next := make(chan *burstAdd)
		started := make(chan struct{}, burst)
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				for a := range next {
					started <- struct{}{}
					a.ctr, a.err = n.cni.Add(a.name, n.list, a.attach)
				}
			})
		}
		go func() {
			for _, a := range adds {
				next <- a
			}
			close(next)
		}()
		for range killAt {
			<-started
		}
		time.Sleep(jitter) // lands the kill anywhere in the ADDs in flight
		n.stopAgent(syscall.SIGKILL)
		n.startAgent()
		wg.Wait()

		reg := n.registered(t)
		var ok, bad []*burstAdd
		for _, a := range adds {
			if a.err == nil {
				ok = append(ok, a)
			} else {
				bad = append(bad, a)
			}
		}
		succeeded += len(ok)
		failed += len(bad)
		for _, a := range ok {
			if _, in := reg[a.ctr.ID]; !in {
				t.Errorf("round %d: %s: ADD succeeded but the agent does not hold it", r, a.name)
			}
			if err := n.cni.Check(a.ctr, n.list, a.attach); err != nil {
				t.Errorf("round %d: %s: ADD succeeded but CHECK fails: %v", r, a.name, err)
			}
		}
		for _, a := range bad {
			// The runtime has no result of a failed ADD to CHECK with: ask
			// the agent to check what it holds against the kernel.
			if ep, in := reg[a.ctr.ID]; in {
				if err := n.agentCheck(ep); err != nil {
					t.Errorf("round %d: %s: ADD failed (%v) and the agent holds it without its rules: %v", r, a.name, a.err, err)
				}
			}
		}
		// Traffic from every container that got its ADD, at once.
		var pw sync.WaitGroup
		for _, a := range ok {
			pw.Go(func() {
				err := a.ctr.Probe("tcp", srv.Addr, probeTimeout)
				switch {
				case a.allow && err != nil:
					t.Errorf("round %d: %s -> payments:8443: want allowed, got %v", r, a.name, err)
				case !a.allow && err == nil:
					t.Errorf("round %d: %s (monitoring) -> payments:8443 passed", r, a.name)
				}
			})
		}
		pw.Wait()
		// The runtime deletes them all, failed ADDs included.
		for _, a := range adds {
			if err := n.cni.Remove(a.ctr, n.list, a.attach); err != nil {
				t.Errorf("round %d: DEL %s: %v", r, a.name, err)
			}
		}
		if got := len(n.registered(t)); got != baseRegistered {
			t.Errorf("round %d: after every DEL the agent holds %d endpoints, want %d", r, got, baseRegistered)
		}
		n.settledTable(t, baseTable)
		t.Logf("round %2d: killed after ADD %2d started (+%v): %2d succeeded, %2d failed", r, killAt, jitter, len(ok), len(bad))
		if t.Failed() {
			t.Fatalf("seed %d, round %d", seed, r)
		}
	}
	t.Logf("%d rounds: %d ADDs succeeded, %d failed (agent killed); every success enforced, nothing left behind", rounds, succeeded, failed)
}

// settledTable waits until the agent has collected what syncs left in the
// table (it does after a quiet second) and returns the table; with want,
// it waits for that table and fails after 10 s with the difference.
func (n *node) settledTable(t *testing.T, want string) string {
	t.Helper()
	var last string
	stable := 0
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		cur := n.table()
		switch {
		case want != "" && cur == want:
			return cur
		case want == "" && cur == last:
			if stable++; stable >= 75 { // 1.5 s unchanged: past the collection
				return cur
			}
		default:
			stable = 0
		}
		last = cur
		time.Sleep(20 * time.Millisecond)
	}
	if want == "" {
		return last
	}
	t.Fatalf("the table did not come back to what it held before:\n%s", lineDiff(want, last))
	return ""
}

// lineDiff lists the lines only in a (-) and only in b (+).
func lineDiff(a, b string) string {
	in := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	am, bm := in(a), in(b)
	var out []string
	for l, c := range am {
		if bm[l] < c {
			out = append(out, "- "+l)
		}
	}
	for l, c := range bm {
		if am[l] < c {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}
