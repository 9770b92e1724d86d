package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/e2e/lab"
)

// outage is how long TestKubernetesAPIOutage keeps the API server down
// ($NETSEG_OUTAGE, a duration, overrides it when debugging).
var outage = 60 * time.Second

func init() {
	if d, err := time.ParseDuration(os.Getenv("NETSEG_OUTAGE")); err == nil {
		outage = d
	}
}

// TestKubernetesAPIOutage: with the API server stopped for a minute,
// enforcement goes on unchanged (the rules are in the kernel, the cache
// keeps the last state); when it returns, the agent picks up a change made
// after its return.
func TestKubernetesAPIOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute-long outage: not in -short")
	}
	k := newKubeCluster(t)
	n, checkout, monitoring, srv := kubeShop(t, k)
	conn, err := checkout.Dial("tcp", srv, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	k.cp.StopAPIServer()
	down := time.Now()
	checks := 0
	for time.Since(down) < outage {
		expectPass(t, "checkout -> payments 8443 during the outage", checkout.Probe("tcp", srv, probeTimeout))
		expectDrop(t, "monitoring -> payments 8443 during the outage", monitoring.Probe("tcp", srv, probeTimeout))
		if _, err := conn.Write([]byte("ping")); err != nil {
			t.Fatalf("established connection during the outage: %v", err)
		}
		buf := make([]byte, 4)
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := conn.Read(buf); err != nil {
			t.Fatalf("established connection during the outage: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpStatus})
		cancel()
		if err != nil || !resp.Ready {
			t.Fatalf("agent not ready during the outage: %v %+v", err, resp)
		}
		checks++
		time.Sleep(5 * time.Second)
	}
	t.Logf("API server down for %v: %d rounds of checks, enforcement unchanged, agent ready", time.Since(down).Round(time.Second), checks)

	if err := k.cp.StartAPIServer(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	t.Logf("API server back after %v", back.Sub(down).Round(time.Second))
	// A change made after the return: drop checkout's payments entries.
	sd := &v1alpha1.ServiceDependency{}
	// client-go's reflectors back off up to [30s, 60s) between retries
	// while the API server is away; the agent's recovery watch reads the
	// policy kinds directly meanwhile, so the change must arrive in seconds.
	took := timeToDeny(t, 10*time.Second, dropCheckoutPayments(k, sd), checkout, srv)
	t.Logf("change after the return -> kernel: %v (%v after the API server came back)", took.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	// Every round above failed the test at once on an admitted denied
	// probe or a broken echo.
	t.Logf("FAULT | API server stopped for %v | denied admitted 0/%d | established dropped 0/1 (%d echoes) | allowed new failed 0/%d | lost 0 (the cache keeps the last state) | recovered in %v",
		back.Sub(down).Round(time.Second), checks, checks, checks, took.Round(time.Millisecond))
	waitFor(t, "status catches up with the change", 30*time.Second, func() (bool, string) {
		_ = k.c.Get(context.Background(), client.ObjectKey{Namespace: "shop", Name: "checkout"}, sd)
		return sd.Status.ObservedGeneration == sd.Generation && len(sd.Status.Dependencies) == 2, ""
	})
}

// TestKubernetesAPIFlapping: the API server killed (as a crash does) and
// started again every few seconds for a minute, with traffic all along. Enforcement does
// not change (no denied connection admitted, the established connection
// lives, the agent stays ready), and once it stays up a change reaches the
// kernel within seconds.
func TestKubernetesAPIFlapping(t *testing.T) {
	if testing.Short() {
		t.Skip("a minute of flapping: not in -short")
	}
	k := newKubeCluster(t)
	n, checkout, monitoring, srv := kubeShop(t, k)
	w := watchTraffic(t, checkout, monitoring, srv)
	ready := func(when string) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpStatus})
		if err != nil || !resp.Ready {
			t.Fatalf("agent not ready %s: %v %+v", when, err, resp)
		}
	}
	start := time.Now()
	flaps := 0
	var longestStart time.Duration
	for time.Since(start) < outage {
		k.cp.KillAPIServer()
		w.waitRounds(8) // down for a few seconds of probes
		ready("with the API server down")
		t0 := time.Now()
		if err := k.cp.StartAPIServer(); err != nil {
			t.Fatal(err)
		}
		longestStart = max(longestStart, time.Since(t0))
		w.waitRounds(8)
		ready("with the API server up")
		flaps++
	}
	back := time.Now()
	tl := w.tally()
	if tl.allowedFailed != 0 {
		t.Errorf("%d of %d allowed connections failed while the API server flapped", tl.allowedFailed, tl.allowedProbes)
	}
	sd := &v1alpha1.ServiceDependency{}
	took := timeToDeny(t, 10*time.Second, dropCheckoutPayments(k, sd), checkout, srv)
	t.Logf("%d kill/start cycles in %v (a start took up to %v); a change after the last return reached the kernel in %v",
		flaps, back.Sub(start).Round(time.Second), longestStart.Round(time.Millisecond), took.Round(time.Millisecond))
	faultRow(t, fmt.Sprintf("API server flapping (%d kill/start cycles in %v)", flaps, back.Sub(start).Round(time.Second)), tl,
		"0 (the cache keeps the last state)", took)
}

// kubeShop is a lab node of k with checkout, payments and monitoring, and
// payments listening on 8443 (checkout may reach it, monitoring may not).
func kubeShop(t *testing.T, k *kubeCluster) (n *kubeNode, checkout, monitoring *lab.Container, srv netip.AddrPort) {
	t.Helper()
	n = k.node(lab.New(t), "node-a", "10.88.0.0/24")
	checkout = n.pod("shop", "checkout", checkoutLabels)
	payments := n.pod("pay", "payments", paymentsLabels)
	monitoring = n.pod("ops", "monitoring", monitoringLabels)
	srv = listen(payments, 8443)
	expectPass(t, "checkout -> payments 8443", checkout.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 8443", monitoring.Probe("tcp", srv, probeTimeout))
	return n, checkout, monitoring, srv
}

// dropCheckoutPayments is a change: checkout's ServiceDependency loses its
// payments-* entries (checkout -> payments:8443 becomes denied).
func dropCheckoutPayments(k *kubeCluster, sd *v1alpha1.ServiceDependency) func() error {
	return func() error {
		if err := k.c.Get(context.Background(), client.ObjectKey{Namespace: "shop", Name: "checkout"}, sd); err != nil {
			return err
		}
		var keep []v1alpha1.Dependency
		for _, d := range sd.Spec.DependsOn {
			if !strings.HasPrefix(d.Name, "payments-") {
				keep = append(keep, d)
			}
		}
		sd.Spec.DependsOn = keep
		return k.c.Update(context.Background(), sd)
	}
}
