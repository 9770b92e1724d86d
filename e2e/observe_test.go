package e2e_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/e2e/lab"
)

// get fetches url from inside the namespace (the agent listens on the
// node's loopback).
func get(t *testing.T, ns *lab.Netns, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHealthAndMetrics: /healthz, /readyz and the Prometheus metrics of a
// running agent reflect what it did: requests by op and result, the time
// from ADD to the kernel, endpoints, syncs, and the kernel's counters.
func TestHealthAndMetrics(t *testing.T) {
	n := newNode(t, "bridge", "--health-addr", "127.0.0.1:9965", "--metrics-addr", "127.0.0.1:9964")
	checkout := n.pod("checkout", "shop", "checkout", checkoutLabels)
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	monitoring := n.pod("monitoring", "ops", "monitoring", monitoringLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	expectPass(t, "checkout -> payments", checkout.Probe("tcp", srv.Addr, probeTimeout))
	expectDrop(t, "monitoring -> payments", monitoring.Probe("tcp", srv.Addr, probeTimeout))
	spoofed := netip.MustParseAddr("10.88.0.250")
	monitoring.MustRun("ip", "addr", "add", spoofed.String()+"/32", "dev", monitoring.IfName)
	_ = monitoring.ProbeFrom("tcp", spoofed, srv.Addr, probeTimeout)

	if code, body := get(t, n.ns, "http://127.0.0.1:9965/healthz"); code != 200 {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, n.ns, "http://127.0.0.1:9965/readyz"); code != 200 {
		t.Errorf("/readyz: %d %s", code, body)
	}
	_, metrics := get(t, n.ns, "http://127.0.0.1:9964/metrics")
	for _, want := range []string{
		`netseg_cni_requests_total{op="add",result="ok"} 3`,
		`netseg_endpoints 3`,
		`netseg_cni_add_to_kernel_seconds_count 3`,
		`netseg_sync_duration_seconds_count`,
		`netseg_kernel_packets_total{counter="spoofed"}`,
		`netseg_policy_errors_total 0`,
		`netseg_drift_repairs_total 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	for _, line := range strings.Split(metrics, "\n") {
		if strings.HasPrefix(line, `netseg_kernel_packets_total{counter="spoofed"}`) && strings.HasSuffix(line, " 0") {
			t.Errorf("the spoofed packet was not counted: %s", line)
		}
	}
}

// TestAgentRepairsDrift: the agent compares the kernel with its rules on
// its own schedule (here every second), apart from its sync loop; a table
// edited behind its back is rebuilt, counted and enforced again.
func TestAgentRepairsDrift(t *testing.T) {
	n := newNode(t, "bridge", "--drift-interval", "1s", "--metrics-addr", "127.0.0.1:9964")
	payments := n.pod("payments", "pay", "payments", paymentsLabels)
	monitoring := n.pod("monitoring", "ops", "monitoring", monitoringLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	expectDrop(t, "monitoring -> payments", monitoring.Probe("tcp", srv.Addr, probeTimeout))

	n.ns.MustRun("nft", "flush", "chain", "inet", "netseg", "forward")
	const want = `netseg_drift_repairs_total 1`
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, metrics := get(t, n.ns, "http://127.0.0.1:9964/metrics")
		if strings.Contains(metrics, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no drift repair 5 s after the forward chain was flushed (metrics lack %q)", want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	expectDrop(t, "monitoring -> payments after the repair", monitoring.Probe("tcp", srv.Addr, probeTimeout))
}
