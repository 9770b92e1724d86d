package e2e_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/e2e/lab"
)

var (
	checkoutLabels   = map[string]string{"app": "checkout"}
	paymentsLabels   = map[string]string{"app": "payments"}
	monitoringLabels = map[string]string{"app": "monitoring"}
)

// shop is the examples' three pods: checkout may reach payments on TCP
// 8443 (srv), monitoring may not.
type shop struct {
	checkout, payments, monitoring *lab.Container
	srv                            netip.AddrPort
}

// addShop adds the three pods and checks that policy holds between them.
func (n *node) addShop(t *testing.T) shop {
	t.Helper()
	s := shop{checkout: n.pod("checkout", "shop", "checkout", checkoutLabels),
		payments:   n.pod("payments", "pay", "payments", paymentsLabels),
		monitoring: n.pod("monitoring", "ops", "monitoring", monitoringLabels)}
	s.srv = s.payments.ListenTCP(netip.AddrPortFrom(s.payments.IP(4), 8443).String()).Addr
	expectPass(t, "checkout -> payments 8443", s.checkout.Probe("tcp", s.srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 8443", s.monitoring.Probe("tcp", s.srv, probeTimeout))
	return s
}

func expectPass(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: want allowed, got %v", what, err)
	}
}

func expectDrop(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, lab.ErrNoReply) {
		t.Fatalf("%s: want a silent drop, got %v", what, err)
	}
}

// TestChainedPluginEnforces: containers added through bridge|ptp +
// host-local + netseg get the examples' policy, and the live netsegctl
// agrees with the traffic.
func TestChainedPluginEnforces(t *testing.T) {
	for _, plugin := range []string{"bridge", "ptp"} {
		t.Run(plugin, func(t *testing.T) {
			n := newNode(t, plugin)
			n.addShop(t)

			out, err := n.ctl("explain", "--socket", n.socket, "--from", "shop/checkout", "--to", "pay/payments", "--port", "8443/TCP", "-o", "json")
			if err != nil {
				t.Fatalf("netsegctl explain: %v: %s", err, out)
			}
			var r struct {
				Verdict  string `json:"verdict"`
				Expected bool   `json:"expected"`
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil || r.Verdict != "allowed" || !r.Expected {
				t.Fatalf("explain checkout -> payments: %s (%v)", out, err)
			}
			out, _ = n.ctl("explain", "--socket", n.socket, "--from", "ops/monitoring", "--to", "pay/payments", "--port", "8443/TCP")
			if !strings.Contains(out, "denied") {
				t.Fatalf("explain monitoring -> payments: %s", out)
			}
			out, err = n.ctl("endpoints", "--socket", n.socket)
			if err != nil || !strings.Contains(out, "pay/payments") || !strings.Contains(out, "payments ") {
				t.Fatalf("netsegctl endpoints: %v\n%s", err, out)
			}
		})
	}
}

// TestFirstPacketIsPoliced: a container's first connection, made the
// moment ADD returns, is already decided by policy. 200 denied clients
// (ops -> payments) never get through; allowed clients (shop/checkout)
// interleaved with them always do, so the probe can tell the two apart.
func TestFirstPacketIsPoliced(t *testing.T) {
	n := newNode(t, "bridge")
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	denied, allowed := 0, 0
	for i := 0; i < 220; i++ {
		ns, name, labels := "ops", fmt.Sprintf("monitoring-%d", i), monitoringLabels
		allow := i%11 == 10
		if allow {
			ns, name, labels = "shop", fmt.Sprintf("checkout-%d", i), checkoutLabels
		}
		a := n.attach(ns, name, labels)
		c := n.cni.MustAdd(fmt.Sprintf("c%d", i), n.list, a)
		err := c.Probe("tcp", srv.Addr, 150*time.Millisecond)
		if allow {
			expectPass(t, fmt.Sprintf("allowed client %d's first connection", i), err)
			allowed++
		} else {
			if err == nil {
				t.Fatalf("denied client %d's first connection got through", i)
			}
			denied++
		}
		if err := n.cni.Remove(c, n.list, a); err != nil {
			t.Fatalf("remove client %d: %v", i, err)
		}
	}
	t.Logf("%d denied clients never connected; %d allowed clients connected at once", denied, allowed)
}

func TestDelCheckGCStatus(t *testing.T) {
	n := newNode(t, "bridge")
	ctx := context.Background()
	cfg := n.cni.Config()
	keep := n.pod("keep", "shop", "keep", checkoutLabels)
	gone := n.pod("gone", "shop", "gone", checkoutLabels)
	down := n.pod("down", "shop", "down", checkoutLabels)
	keepA, goneA, downA := n.attach("shop", "keep", checkoutLabels), n.attach("shop", "gone", checkoutLabels), n.attach("shop", "down", checkoutLabels)

	// CHECK passes, then fails once someone deletes the rules.
	if err := n.cni.Check(keep, n.list, keepA); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	n.ns.MustRun("nft", "delete", "table", "inet", "netseg")
	err := n.cni.Check(keep, n.list, keepA)
	if err == nil || !strings.Contains(err.Error(), "netseg") {
		t.Fatalf("CHECK with the rules deleted: %v", err)
	}
	t.Logf("CHECK with the rules deleted: %v", err)

	// DEL twice.
	for i := 0; i < 2; i++ {
		if err := n.cni.Del(gone, n.list, goneA); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	// An endpoint of another network on the same node: not this GC's.
	other := agent.Endpoint{Attachment: agent.Attachment{ContainerID: "other-runtime", IfName: "eth1"}, Network: "other-net",
		Namespace: "shop", Name: "other", IPs: []string{"10.201.0.5/24"}}
	if _, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpAdd, Endpoint: &other}); err != nil {
		t.Fatalf("register an endpoint of another network: %v", err)
	}
	// GC keeps only the valid attachments (of this network).
	rt := keepA.RuntimeConf(keep)
	if err := cfg.GCNetworkList(ctx, n.list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: rt.ContainerID, IfName: rt.IfName}, {ContainerID: down.ID, IfName: down.IfName}}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	eps := n.endpoints()
	if len(eps) != 3 {
		t.Fatalf("after GC the agent has %d endpoints, want 3 (keep, down, and the other network's): %+v", len(eps), eps)
	}

	// Agent down: STATUS fails with code 50, DEL answers "try again
	// later" (11) and the runtime's retry, once the agent is back, removes
	// the endpoint.
	n.stopAgent(syscall.SIGTERM)
	err = cfg.GetStatusNetworkList(ctx, n.list)
	var cniErr *types.Error
	if !errors.As(err, &cniErr) || cniErr.Code != types.ErrPluginNotAvailable {
		t.Fatalf("STATUS with the agent down: %v, want code 50", err)
	}
	if err := n.cni.Remove(down, n.list, downA); !errors.As(err, &cniErr) || cniErr.Code != types.ErrTryAgainLater {
		t.Fatalf("DEL with the agent down: %v, want code 11 (try again later)", err)
	}
	n.startAgent()
	if err := cfg.GetStatusNetworkList(ctx, n.list); err != nil {
		t.Fatalf("STATUS with the agent up: %v", err)
	}
	if err := n.cni.Remove(down, n.list, downA); err != nil {
		t.Fatalf("DEL retried with the agent back: %v", err)
	}
	eps = n.endpoints()
	names := []string{}
	for _, ep := range eps {
		names = append(names, ep.Name)
	}
	if strings.Join(names, ",") != "keep,other" && strings.Join(names, ",") != "other,keep" {
		t.Fatalf("after restart the agent has %v, want shop/keep and the other network's endpoint", names)
	}
}

func (n *node) endpoints() []agent.Endpoint {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, n.socket, agent.Request{Op: agent.OpList})
	if err != nil {
		n.t.Fatalf("list endpoints: %v", err)
	}
	return resp.Endpoints
}

// TestAgentKilledUnderTraffic: kill -9 of the agent leaves enforcement in
// place: the established connection lives, a denied connection stays
// denied, and the restarted agent rebuilds the same ruleset.
func TestAgentKilledUnderTraffic(t *testing.T) {
	n := newNode(t, "bridge")
	checkout := n.pod("checkout", "shop", "checkout", checkoutLabels)
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	monitoring := n.pod("monitoring", "ops", "monitoring", monitoringLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	conn, err := checkout.Dial("tcp", srv.Addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The agent deletes what syncs left behind after a quiet second; compare
	// the settled ruleset.
	time.Sleep(1500 * time.Millisecond)
	before := n.table()
	stop := make(chan struct{})
	done := make(chan error, 1)
	go func() { // traffic on the established connection all along
		buf := make([]byte, 8)
		for i := 0; ; i++ {
			select {
			case <-stop:
				done <- nil
				return
			default:
			}
			msg := []byte(fmt.Sprintf("%08d", i%100000000))
			_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := conn.Write(msg); err != nil {
				done <- err
				return
			}
			if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != string(msg) {
				done <- fmt.Errorf("echo %d: %q %v", i, buf, err)
				return
			}
		}
	}()
	n.stopAgent(syscall.SIGKILL)
	expectDrop(t, "monitoring -> payments with the agent killed", monitoring.Probe("tcp", srv.Addr, probeTimeout))
	expectPass(t, "checkout -> payments new connection with the agent killed", checkout.Probe("tcp", srv.Addr, probeTimeout))
	n.startAgent()
	close(stop)
	if err := <-done; err != nil {
		t.Fatalf("the established connection broke: %v", err)
	}
	if after := n.table(); after != before {
		t.Fatalf("the restarted agent built a different ruleset")
	}
	expectDrop(t, "monitoring -> payments after restart", monitoring.Probe("tcp", srv.Addr, probeTimeout))
}

// TestInventoryLabels: a runtime that passes no labels (podman, plain
// CNI) gets them from the policy directory's Workload inventory, and the
// dependencies that select on them apply.
func TestInventoryLabels(t *testing.T) {
	n := newNode(t, "bridge")
	checkout := n.pod("checkout", "shop", "checkout-1", nil)
	payments := n.pod("payments", "pay", "payments-1", nil)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	expectPass(t, "checkout-1 -> payments-1 8443 (labels from the inventory)", checkout.Probe("tcp", srv.Addr, probeTimeout))
	out, err := n.ctl("explain", "--socket", n.socket, "--from", "shop/checkout-1", "--to", "pay/payments-1", "--port", "8443/TCP")
	if err != nil || !strings.Contains(out, "ServiceDependency shop/checkout") {
		t.Fatalf("explain: %v: %s", err, out)
	}
	// Without an inventory entry the dependency does not apply.
	stranger := n.pod("stranger", "shop", "stranger", nil)
	expectDrop(t, "stranger -> payments-1 8443", stranger.Probe("tcp", srv.Addr, probeTimeout))
}
