package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/e2e/lab"
)

// TestKubernetesMode: the agent binary in Kubernetes mode on a lab node.
// Labels come from the Pod objects; the examples' policy is enforced; a
// CRD edit reaches the kernel within a second; status and Events say what
// is valid, invalid and blocked.
func TestKubernetesMode(t *testing.T) {
	k := newKubeCluster(t)
	n := k.node(lab.New(t), "node-a", "10.88.0.0/24")
	checkout := n.pod("shop", "checkout", checkoutLabels)
	payments := n.pod("pay", "payments", paymentsLabels)
	monitoring := n.pod("ops", "monitoring", monitoringLabels)
	srv := listen(payments, 8443)
	expectPass(t, "checkout -> payments 8443", checkout.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 8443", monitoring.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 9090 (nothing-else-into-payments first)", monitoring.Probe("tcp", listen(payments, 9090), probeTimeout))
	metrics := listen(checkout, 9090)
	expectPass(t, "monitoring -> checkout 9090 (ops-scrapes-metrics)", monitoring.Probe("tcp", metrics, probeTimeout))

	ctx := context.Background()
	sd := &v1alpha1.ServiceDependency{}
	sdKey := client.ObjectKey{Namespace: "shop", Name: "checkout"}

	// Status: Ready, every dependency Allowed, the zone's endpoint count.
	waitFor(t, "ServiceDependency shop/checkout Ready with every entry Allowed", 10*time.Second, func() (bool, string) {
		if err := k.c.Get(ctx, sdKey, sd); err != nil {
			return false, err.Error()
		}
		ready := meta.FindStatusCondition(sd.Status.Conditions, v1alpha1.ConditionReady)
		ok := ready != nil && ready.Status == metav1.ConditionTrue && sd.Status.ObservedGeneration == sd.Generation && len(sd.Status.Dependencies) == 4
		for _, d := range sd.Status.Dependencies {
			ok = ok && d.State == v1alpha1.DependencyAllowed
		}
		return ok, fmt.Sprintf("%+v", sd.Status)
	})
	waitFor(t, "Zone payments counts 1 endpoint", 10*time.Second, func() (bool, string) {
		z := &v1alpha1.Zone{}
		err := k.c.Get(ctx, client.ObjectKey{Name: "payments"}, z)
		return err == nil && z.Status.Endpoints == 1 && ready(z.Status.Conditions), fmt.Sprintf("%+v %v", z.Status, err)
	})

	// A ZonePolicy Deny rule ahead of the dependency: Blocked, blockedBy.
	block := &v1alpha1.ZonePolicy{ObjectMeta: metav1.ObjectMeta{Name: "freeze"}, Spec: v1alpha1.ZonePolicySpec{Priority: 1,
		Rules: []v1alpha1.ZoneRule{{Name: "no-web-to-payments", Action: v1alpha1.ActionDeny,
			From: []v1alpha1.ZoneRef{{Zone: "web"}}, To: []v1alpha1.ZoneRef{{Zone: "payments"}}}}}}
	if err := k.c.Create(ctx, block); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "payments-api Blocked by ZonePolicy/freeze", 10*time.Second, func() (bool, string) {
		if err := k.c.Get(ctx, sdKey, sd); err != nil {
			return false, err.Error()
		}
		st := depState(sd, "payments-api")
		return st.State == v1alpha1.DependencyBlocked && st.BlockedBy == "ZonePolicy/freeze rule no-web-to-payments" &&
			depState(sd, "cache").State == v1alpha1.DependencyAllowed, fmt.Sprintf("%+v", sd.Status.Dependencies)
	})
	expectDrop(t, "checkout -> payments 8443 under the freeze", checkout.Probe("tcp", srv, probeTimeout))
	t.Logf("blocked: %+v", depState(sd, "payments-api"))
	if err := k.c.Delete(ctx, block); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "payments-api Allowed again", 10*time.Second, func() (bool, string) {
		_ = k.c.Get(ctx, sdKey, sd)
		return depState(sd, "payments-api").State == v1alpha1.DependencyAllowed, fmt.Sprintf("%+v", sd.Status.Dependencies)
	})
	expectPass(t, "checkout -> payments 8443 after the freeze", checkout.Probe("tcp", srv, probeTimeout))

	// An object the API server accepts but the compiler finds wrong:
	// Ready False, reason Invalid, and a Warning Event.
	bad := &v1alpha1.ZonePolicy{ObjectMeta: metav1.ObjectMeta{Name: "typo"}, Spec: v1alpha1.ZonePolicySpec{Priority: 90,
		Rules: []v1alpha1.ZoneRule{{Name: "r", Action: v1alpha1.ActionAllow,
			From: []v1alpha1.ZoneRef{{Zone: "web"}}, To: []v1alpha1.ZoneRef{{Zone: "paymnets"}}}}}}
	if err := k.c.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ZonePolicy typo Invalid", 10*time.Second, func() (bool, string) {
		if err := k.c.Get(ctx, client.ObjectKey{Name: "typo"}, bad); err != nil {
			return false, err.Error()
		}
		c := meta.FindStatusCondition(bad.Status.Conditions, v1alpha1.ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == "Invalid" &&
			strings.Contains(c.Message, `spec.rules[0].to[0].zone: zone "paymnets" does not exist`), fmt.Sprintf("%+v", bad.Status)
	})
	t.Logf("invalid: %s", meta.FindStatusCondition(bad.Status.Conditions, v1alpha1.ConditionReady).Message)
	waitFor(t, "a Warning Event about ZonePolicy typo", 10*time.Second, func() (bool, string) {
		var evs eventsv1.EventList
		if err := k.c.List(ctx, &evs); err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.Regarding.Kind == "ZonePolicy" && e.Regarding.Name == "typo" && e.Type == corev1.EventTypeWarning && e.Reason == "Invalid" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(evs.Items))
	})

	// A CRD edit reaches the kernel: drop the entries that let checkout
	// reach payments, and time until a new connection is refused.
	if err := k.c.Get(ctx, sdKey, sd); err != nil {
		t.Fatal(err)
	}
	var keep []v1alpha1.Dependency
	for _, d := range sd.Spec.DependsOn {
		if !strings.HasPrefix(d.Name, "payments-") {
			keep = append(keep, d)
		}
	}
	sd.Spec.DependsOn = keep
	took := timeToDeny(t, 10*time.Second, func() error { return k.c.Update(ctx, sd) }, checkout, srv)
	t.Logf("CRD edit -> kernel: %v (from the API write to the start of the first refused connection attempt)", took.Round(time.Millisecond))
	if took > time.Second {
		t.Fatalf("the edit took %v to reach the kernel, want under 1s", took)
	}
	expectPass(t, "monitoring -> checkout 9090 after the edit", monitoring.Probe("tcp", metrics, probeTimeout))
}

// timeToDeny runs change, then tries new connections from ctr to srv
// back to back and returns the time from the change to the start of the
// first attempt that got no answer.
func timeToDeny(t *testing.T, limit time.Duration, change func() error, ctr *lab.Container, srv netip.AddrPort) time.Duration {
	t.Helper()
	start := time.Now()
	if err := change(); err != nil {
		t.Fatal(err)
	}
	for time.Since(start) < limit {
		at := time.Since(start)
		if err := ctr.Probe("tcp", srv, 50*time.Millisecond); err != nil {
			return at
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s -> %v still allowed %v after the change", ctr.Label, srv, limit)
	return 0
}

func ready(conds []metav1.Condition) bool {
	c := meta.FindStatusCondition(conds, v1alpha1.ConditionReady)
	return c != nil && c.Status == metav1.ConditionTrue
}

func depState(sd *v1alpha1.ServiceDependency, name string) v1alpha1.DependencyStatus {
	for _, d := range sd.Status.Dependencies {
		if d.Name == name {
			return d
		}
	}
	return v1alpha1.DependencyStatus{}
}
