package e2e_test

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/e2e/lab"
)

// TestKubernetesFlowFeedback: in Kubernetes mode the flow log feeds back
// into the API: an unexpected connection raises a Warning Event on the
// source Pod (UnexpectedConnection), and a connection a ServiceDependency
// entry allowed sets that entry's lastSeen in the dependency's status.
func TestKubernetesFlowFeedback(t *testing.T) {
	k := newKubeCluster(t)
	l := lab.New(t)
	n := k.node(l, "node-a", "10.88.1.0/24", "--flow-log", filepath.Join(t.TempDir(), "flows.log"), "--flow-interval", "1s")
	n.ns.ShortConntrackTimeouts()
	checkout := n.pod("shop", "checkout", checkoutLabels)
	payments := n.pod("pay", "payments", paymentsLabels)
	monitoring := n.pod("ops", "monitoring", monitoringLabels)
	srv := payments.ListenTCP(netip.AddrPortFrom(payments.IP(4), 8443).String())
	expectPass(t, "checkout -> payments (declared)", checkout.Probe("tcp", srv.Addr, probeTimeout))
	expectDrop(t, "monitoring -> payments (denied)", monitoring.Probe("tcp", srv.Addr, probeTimeout))

	ctx := context.Background()
	took := waitFor(t, "an UnexpectedConnection Event on ops/monitoring", 20*time.Second, func() (bool, string) {
		var evs corev1.EventList
		if err := k.c.List(ctx, &evs, client.InNamespace("ops")); err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.Reason == "UnexpectedConnection" && e.InvolvedObject.Name == "monitoring" {
				t.Logf("event: %s", e.Message)
				return true, ""
			}
		}
		return false, "no event yet"
	})
	t.Logf("alert Event after %v", took)
	took = waitFor(t, "lastSeen on a shop/checkout dependency entry", 20*time.Second, func() (bool, string) {
		var sd v1alpha1.ServiceDependency
		if err := k.c.Get(ctx, client.ObjectKey{Namespace: "shop", Name: "checkout"}, &sd); err != nil {
			return false, err.Error()
		}
		for _, d := range sd.Status.Dependencies {
			if d.LastSeen != nil {
				t.Logf("entry %s last seen %s", d.Name, d.LastSeen)
				return true, ""
			}
		}
		return false, "no lastSeen yet"
	})
	t.Logf("lastSeen in status after %v", took)
}
