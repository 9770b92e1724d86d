package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/e2e/lab"
)

// The hostile tenant of the tenant-budget tests: in namespace tenant, 64
// valid ServiceDependencies of 256 CIDR entries each, whose workload
// selects nothing. Before budgets, their 16,384 origin ids pushed every
// zone default past the 14 bits of a conntrack mark and every ADD on the
// node failed.
const (
	tenantObjects = 64
	tenantEntries = 256
)

func tenantDependency(i int) *v1alpha1.ServiceDependency {
	sd := &v1alpha1.ServiceDependency{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: fmt.Sprintf("sd%02d", i)},
		Spec: v1alpha1.ServiceDependencySpec{Workload: metav1.LabelSelector{MatchLabels: map[string]string{"app": "nothing"}}}}
	for j := range tenantEntries {
		sd.Spec.DependsOn = append(sd.Spec.DependsOn, v1alpha1.Dependency{Name: fmt.Sprintf("e%d", j),
			CIDR: fmt.Sprintf("198.18.%d.%d/32", j/256, j%256), Ports: []v1alpha1.PortRange{{Protocol: v1alpha1.ProtocolTCP, Port: 443}}})
	}
	return sd
}

// tenantYAML is the tenant's objects as a policy file.
func tenantYAML() string {
	var b strings.Builder
	for i := range tenantObjects {
		sd := tenantDependency(i)
		fmt.Fprintf(&b, "---\napiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata: {name: %s, namespace: tenant}\nspec:\n  workload: {matchLabels: {app: nothing}}\n  dependsOn:\n", sd.Name)
		for _, d := range sd.Spec.DependsOn {
			fmt.Fprintf(&b, "  - {name: %s, cidr: %q, ports: [{protocol: TCP, port: 443}]}\n", d.Name, d.CIDR)
		}
	}
	return b.String()
}

// budgetMessage is the error the third object gets: the first two fill
// the namespace's default budget of 512 entries.
const budgetMessage = "over the dependency budget of namespace tenant: its 256 entries weigh 256 (one per port range each lists) and would make 768, 256 over the budget of 512 per namespace; not compiled"

// tenantReady is the Ready condition of ServiceDependency tenant/name
// (nil: none, or the object could not be read).
func tenantReady(k *kubeCluster, name string) *metav1.Condition {
	sd := &v1alpha1.ServiceDependency{}
	if err := k.c.Get(context.Background(), client.ObjectKey{Namespace: "tenant", Name: name}, sd); err != nil {
		return nil
	}
	return meta.FindStatusCondition(sd.Status.Conditions, v1alpha1.ConditionReady)
}

// waitBudgetEvent waits for a Warning Event naming the dependency budget
// about ServiceDependency tenant/name.
func waitBudgetEvent(t *testing.T, k *kubeCluster, name string) {
	t.Helper()
	waitFor(t, "a Warning Event about tenant/"+name, 10*time.Second, func() (bool, string) {
		var evs eventsv1.EventList
		if err := k.c.List(context.Background(), &evs, client.InNamespace("tenant")); err != nil {
			return false, err.Error()
		}
		for _, e := range evs.Items {
			if e.Regarding.Name == name && e.Type == corev1.EventTypeWarning && strings.Contains(e.Note, "over the dependency budget") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d events", len(evs.Items))
	})
}

// logPeakRSS logs the agent's peak RSS, for the note.
func logPeakRSS(t *testing.T, pid int) {
	t.Logf("agent peak RSS: %.1f MiB", float64(peakRSS(t, pid))/(1<<20))
}

// checkOthersUnharmed starts pods of other namespaces on a node that holds
// the tenant's objects and checks their traffic obeys the policy.
func checkOthersUnharmed(t *testing.T, checkout, payments, monitoring *lab.Container) {
	t.Helper()
	srv := listen(payments, 8443)
	expectPass(t, "checkout -> payments 8443 (declared)", checkout.Probe("tcp", srv, probeTimeout))
	expectDrop(t, "monitoring -> payments 8443 (payments perimeter)", monitoring.Probe("tcp", srv, probeTimeout))
	expectPass(t, "monitoring -> checkout 9090 (ops-scrapes-metrics)", monitoring.Probe("tcp", listen(checkout, 9090), probeTimeout))
}

// TestTenantBudgetStandalone: the tenant's objects as policy files. The
// agent compiles the first two, names the other 62 in its status, and
// every other namespace's pods start and are segmented as without them;
// netsegctl validate fails on the directory, naming the budget.
func TestTenantBudgetStandalone(t *testing.T) {
	n := newNode(t, "bridge")
	gen := n.status(t).Status.PolicyGeneration
	if err := os.WriteFile(filepath.Join(n.policyDir, "tenant.yaml"), []byte(tenantYAML()), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent applies the tenant's policy", 20*time.Second, func() (bool, string) {
		st := n.status(t).Status
		return st.PolicyGeneration > gen && strings.Contains(strings.Join(st.Warnings, "\n"), budgetMessage), fmt.Sprintf("generation %d, %d warnings", st.PolicyGeneration, len(st.Warnings))
	})
	refused := 0
	for _, w := range n.status(t).Status.Warnings {
		if strings.Contains(w, "over the dependency budget of namespace tenant") {
			refused++
		}
	}
	if refused != tenantObjects-2 {
		t.Errorf("status names %d refused objects, want %d", refused, tenantObjects-2)
	}
	checkOthersUnharmed(t,
		n.pod("checkout", "shop", "checkout", checkoutLabels),
		n.pod("payments", "pay", "payments", paymentsLabels),
		n.pod("monitoring", "ops", "monitoring", monitoringLabels))
	out, err := n.ctl("validate", "-f", n.policyDir)
	if err == nil || !strings.Contains(out, "ServiceDependency tenant/sd02") || !strings.Contains(out, budgetMessage) {
		t.Errorf("netsegctl validate: %v, want a failure naming tenant/sd02 and the budget:\n%.600s", err, out)
	}
	logPeakRSS(t, n.agent.Process.Pid)
}

// TestTenantBudgetKubernetes: the tenant's objects in the API server. The
// first two are Ready; the rest are Ready=False with the budget named and
// a Warning Event; pods of other namespaces start and are segmented.
func TestTenantBudgetKubernetes(t *testing.T) {
	k := newKubeCluster(t)
	ctx := context.Background()
	if err := k.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tenant"}}); err != nil {
		t.Fatal(err)
	}
	for i := range tenantObjects {
		if err := k.c.Create(ctx, tenantDependency(i)); err != nil {
			t.Fatal(err)
		}
	}
	n := k.node(lab.New(t), "node-a", "10.88.0.0/24")
	// The status writer writes the objects one by one: wait for all three.
	waitFor(t, "tenant/sd02 and sd63 Ready=False naming the budget, sd01 Ready", 30*time.Second, func() (bool, string) {
		c, last, ok := tenantReady(k, "sd02"), tenantReady(k, "sd63"), tenantReady(k, "sd01")
		return c != nil && c.Status == metav1.ConditionFalse && strings.Contains(c.Message, budgetMessage) &&
				last != nil && last.Status == metav1.ConditionFalse && strings.Contains(last.Message, "over the dependency budget") &&
				ok != nil && ok.Status == metav1.ConditionTrue,
			fmt.Sprintf("sd02 %+v, sd63 %+v, sd01 %+v", c, last, ok)
	})
	waitBudgetEvent(t, k, "sd02")
	checkOthersUnharmed(t,
		n.pod("shop", "checkout", checkoutLabels),
		n.pod("pay", "payments", paymentsLabels),
		n.pod("ops", "monitoring", monitoringLabels))
	logPeakRSS(t, n.agent.Process.Pid)
}

// The rule-explosion tenant: in namespace tenant, 4 ServiceDependencies
// of 256 entries "cidr: 0.0.0.0/0" with 64 TCP ports each, for a workload
// with a running pod. Before entries were weighed by their port ranges,
// they put 131,000 rules into the ingress chain of every pod of the node
// and the next pod's ADD timed out after 5 s. Each object alone weighs
// 16,384 against the namespace's 512: none is compiled.
const (
	explosionObjects, explosionEntries, explosionPorts = 4, 256, 64
	explosionMessage                                   = "over the dependency budget of namespace tenant: its 256 entries weigh 16384 (one per port range each lists) and would make 16384, 15872 over the budget of 512 per namespace; not compiled"
)

// explosionDependency is object i of the rule-explosion tenant.
func explosionDependency(i int) *v1alpha1.ServiceDependency {
	sd := &v1alpha1.ServiceDependency{ObjectMeta: metav1.ObjectMeta{Namespace: "tenant", Name: fmt.Sprintf("x%02d", i)},
		Spec: v1alpha1.ServiceDependencySpec{Workload: metav1.LabelSelector{MatchLabels: map[string]string{"app": "tenant"}}}}
	var ports []v1alpha1.PortRange
	for k := range explosionPorts {
		ports = append(ports, v1alpha1.PortRange{Protocol: v1alpha1.ProtocolTCP, Port: int32(10000 + k)})
	}
	for j := range explosionEntries {
		sd.Spec.DependsOn = append(sd.Spec.DependsOn, v1alpha1.Dependency{Name: fmt.Sprintf("e%d", j), CIDR: "0.0.0.0/0", Ports: ports})
	}
	return sd
}

// nodeRules counts the rules of netseg's table in the node.
func nodeRules(t testing.TB, ns *lab.Netns) int {
	return strings.Count(ns.MustRun("nft", "list", "table", "inet", "netseg"), "comment \"netseg ")
}

// statusAt asks the agent at socket for its status.
func statusAt(t testing.TB, socket string) *agent.Status {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := agent.Call(ctx, socket, agent.Request{Op: agent.OpStatus})
	if err != nil || resp.Status == nil {
		t.Fatalf("status: %v", err)
	}
	return resp.Status
}

// rulesWithout removes the refused objects (remove), waits for the agent
// at socket to sync a later policy, and checks the node's rules are what
// they were with them: a refused object compiles to nothing.
func rulesWithout(t *testing.T, ns *lab.Netns, socket string, remove func()) {
	t.Helper()
	with := nodeRules(t, ns)
	gen, since := statusAt(t, socket).PolicyGeneration, time.Now()
	remove()
	waitFor(t, "the agent syncs the policy without the tenant's objects", 30*time.Second, func() (bool, string) {
		st := statusAt(t, socket)
		return st.PolicyGeneration > gen && st.LastSync.After(since) && st.LastSyncError == "", fmt.Sprintf("generation %d, last sync %v %s", st.PolicyGeneration, st.LastSync, st.LastSyncError)
	})
	if without := nodeRules(t, ns); without != with {
		t.Errorf("the node holds %d rules with the refused objects, %d without them", with, without)
	} else {
		t.Logf("the node holds %d rules with the refused objects and without them", with)
	}
}

// TestTenantExplosionStandalone: the rule-explosion tenant as policy
// files. None of its objects is compiled, each is named in the agent's
// status with the budget, the node holds the rules it holds without them,
// and new pods of
// every namespace start and are segmented as without them; netsegctl
// validate fails on the directory naming the budget. The agent's peak RSS
// is logged.
func TestTenantExplosionStandalone(t *testing.T) {
	n := newNode(t, "bridge")
	n.pod("tenant", "tenant", "app", map[string]string{"app": "tenant"})
	gen := n.status(t).Status.PolicyGeneration
	// Written beside and renamed in: the source never reads half of it.
	tmp := filepath.Join(t.TempDir(), "tenant.yaml")
	if err := os.WriteFile(tmp, []byte(explosionYAML(explosionObjects, explosionEntries, explosionPorts)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.policyDir, "tenant.yaml")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	waitFor(t, "the agent applies the tenant's policy", 60*time.Second, func() (bool, string) {
		st := n.status(t).Status
		return st.PolicyGeneration > gen && strings.Contains(strings.Join(st.Warnings, "\n"), explosionMessage), fmt.Sprintf("generation %d, %d warnings", st.PolicyGeneration, len(st.Warnings))
	})
	t.Logf("the tenant's files applied (all refused) %v after their write", time.Since(start).Round(time.Millisecond))
	refused := 0
	for _, w := range n.status(t).Status.Warnings {
		if strings.Contains(w, explosionMessage) {
			refused++
		}
	}
	if refused != explosionObjects {
		t.Errorf("status names %d refused objects, want %d", refused, explosionObjects)
	}
	addStart := time.Now()
	checkout := n.pod("checkout", "shop", "checkout", checkoutLabels)
	if took := time.Since(addStart); took > 5*time.Second {
		t.Errorf("a new pod's ADD took %v beside the tenant's objects", took)
	}
	checkOthersUnharmed(t, checkout,
		n.pod("payments", "pay", "payments", paymentsLabels),
		n.pod("monitoring", "ops", "monitoring", monitoringLabels))
	out, err := n.ctl("validate", "-f", n.policyDir)
	if err == nil || !strings.Contains(out, "ServiceDependency tenant/x00") || !strings.Contains(out, explosionMessage) {
		t.Errorf("netsegctl validate: %v, want a failure naming tenant/x00 and the budget:\n%.600s", err, out)
	}
	logPeakRSS(t, n.agent.Process.Pid)
	rulesWithout(t, n.ns, n.socket, func() {
		if err := os.Remove(filepath.Join(n.policyDir, "tenant.yaml")); err != nil {
			t.Fatal(err)
		}
	})
}

// TestTenantExplosionKubernetes: the rule-explosion tenant in the API
// server. Every object is Ready=False with the budget named and a Warning
// Event; the node holds the rules it holds without them; pods of other
// namespaces start and are segmented.
func TestTenantExplosionKubernetes(t *testing.T) {
	k := newKubeCluster(t)
	ctx := context.Background()
	if err := k.c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "tenant"}}); err != nil {
		t.Fatal(err)
	}
	n := k.node(lab.New(t), "node-a", "10.88.0.0/24")
	n.pod("tenant", "app", map[string]string{"app": "tenant"})
	for i := range explosionObjects {
		if err := k.c.Create(ctx, explosionDependency(i)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "every tenant object Ready=False naming the budget", 60*time.Second, func() (bool, string) {
		var state []string
		done := true
		for i := range explosionObjects {
			c := tenantReady(k, fmt.Sprintf("x%02d", i))
			if c == nil || c.Status != metav1.ConditionFalse || !strings.Contains(c.Message, explosionMessage) {
				done = false
			}
			state = append(state, fmt.Sprintf("x%02d %+v", i, c))
		}
		return done, strings.Join(state, "; ")
	})
	waitBudgetEvent(t, k, "x00")
	checkOthersUnharmed(t,
		n.pod("shop", "checkout", checkoutLabels),
		n.pod("pay", "payments", paymentsLabels),
		n.pod("ops", "monitoring", monitoringLabels))
	logPeakRSS(t, n.agent.Process.Pid)
	rulesWithout(t, n.ns, n.socket, func() {
		for i := range explosionObjects {
			if err := k.c.Delete(ctx, explosionDependency(i)); err != nil {
				t.Fatal(err)
			}
		}
	})
}
