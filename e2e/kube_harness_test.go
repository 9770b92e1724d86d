package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/e2e/controlplane"
	"github.com/netseg/netseg/e2e/lab"
)

// kubeCluster is a test control plane with the CRDs, the agent's RBAC
// (deploy/rbac/role.yaml bound to the agent's user) and examples/ applied.
type kubeCluster struct {
	t  *testing.T
	cp *controlplane.ControlPlane
	c  client.Client
}

func newKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	cp := controlplane.Start(t)
	cp.InstallCRDs("../deploy/crds")
	cp.Apply("../deploy/rbac/role.yaml")
	c := cp.Client()
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "netseg-agent"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "netseg-agent"},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: controlplane.AgentUser}}}
	if err := c.Create(context.Background(), binding); err != nil {
		t.Fatal(err)
	}
	cp.Apply("../examples/namespaces.yaml", "../examples/zones.yaml", "../examples/policies.yaml", "../examples/dependencies.yaml")
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "pay", Name: "payments"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "payments"},
			Ports: []corev1.ServicePort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: 443}}}}
	svc.Spec.Ports[0].TargetPort.IntVal = 8443
	if err := c.Create(context.Background(), svc); err != nil {
		t.Fatal(err)
	}
	return &kubeCluster{t: t, cp: cp, c: c}
}

// kubeNode is a lab node with its own CNI network and its own agent in
// Kubernetes mode. The agent runs in the host's namespace (so it reaches
// the API server on the host's loopback) and programs the node's
// namespace through --netns.
type kubeNode struct {
	t        *testing.T
	k        *kubeCluster
	name     string // the Kubernetes node name
	ns       *lab.Netns
	cni      *lab.CNI
	list     *libcni.NetworkConfigList
	stateDir string
	socket   string
	agent    *exec.Cmd
	agentLog string
	extra    []string // more agent flags
}

func (k *kubeCluster) node(l *lab.Lab, name, subnet string, agentArgs ...string) *kubeNode {
	k.t.Helper()
	n := &kubeNode{t: k.t, k: k, name: name, ns: l.Node(name), stateDir: k.t.TempDir(), extra: agentArgs}
	n.socket = filepath.Join(n.stateDir, "agent.sock")
	n.agentLog = filepath.Join(n.stateDir, "agent.log")
	n.cni = n.ns.CNI(append([]string{binDir}, lab.CNIPath()...)...)
	// No "labels" capability: the labels come from the Pod objects.
	netseg := map[string]any{"type": "netseg", "socket": n.socket, "stateDir": k.t.TempDir(), "timeout": "5s"}
	n.list = n.cni.ParseConfList(k.t, lab.Net{Name: "pods", CNIVersion: "1.1.0", Type: "bridge", Subnet: subnet,
		DataDir: k.t.TempDir(), Chain: []map[string]any{netseg}}.ConfList())
	n.startAgent()
	k.t.Cleanup(func() {
		n.stopAgent()
		if k.t.Failed() {
			b, _ := os.ReadFile(n.agentLog)
			k.t.Logf("agent %s log:\n%s", name, tail(string(b), 40))
			if dir := os.Getenv("NETSEG_E2E_LOGS"); dir != "" { // keep the whole log
				_ = os.WriteFile(filepath.Join(dir, k.t.Name()+"-"+name+".log"), b, 0o644)
			}
		}
	})
	return n
}

func (n *kubeNode) startAgent() {
	n.t.Helper()
	logf, err := os.OpenFile(n.agentLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		n.t.Fatal(err)
	}
	defer logf.Close()
	args := append([]string{"--kubeconfig", n.k.cp.AgentKubeconfig,
		"--node-name", n.name, "--netns", n.ns.Path, "--state-dir", n.stateDir, "--socket", n.socket},
		append([]string{"--health-addr", "", "--metrics-addr", "", "--status-delay", "100ms", "--log-level", "debug"}, n.extra...)...)
	cmd := exec.Command(filepath.Join(binDir, "netseg-agent"), args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start agent: %v", err)
	}
	n.agent = cmd
	waitAgentReady(n.t, n.socket, 20*time.Second, n.agentLog)
}

func (n *kubeNode) stopAgent() {
	if n.agent == nil {
		return
	}
	_ = n.agent.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = n.agent.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = n.agent.Process.Kill()
		<-done
	}
	n.agent = nil
}

// pod plays kubelet: it creates the Pod bound to this node, runs the CNI
// ADD with only the pod's identity (K8S_POD_NAMESPACE, K8S_POD_NAME,
// K8S_POD_UID), then reports the address CNI gave in status.podIPs.
func (n *kubeNode) pod(podNS, podName string, labels map[string]string) *lab.Container {
	n.t.Helper()
	ctx := context.Background()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: podNS, Name: podName, Labels: labels},
		Spec: corev1.PodSpec{NodeName: n.name, Containers: []corev1.Container{{Name: "c", Image: "netseg.test/none"}}}}
	if err := n.k.c.Create(ctx, p); err != nil {
		n.t.Fatalf("create pod %s/%s: %v", podNS, podName, err)
	}
	ctr := n.cni.MustAdd(podName, n.list, lab.Attach{PodNamespace: podNS, PodName: podName, PodUID: string(p.UID)})
	ip := ctr.IP(4).String()
	patch, _ := json.Marshal(map[string]any{"status": map[string]any{"phase": "Running", "podIP": ip, "podIPs": []map[string]string{{"ip": ip}}}})
	if err := n.k.c.Status().Patch(ctx, p, client.RawPatch(types.MergePatchType, patch)); err != nil {
		n.t.Fatalf("patch pod %s/%s status: %v", podNS, podName, err)
	}
	return ctr
}

// waitFor polls cond every 20ms until it holds or timeout passes, and
// returns how long it took.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < timeout {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		last = state
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: not after %v; last: %s", what, timeout, last)
	return 0
}

// listen starts a TCP server in ctr on port.
func listen(ctr *lab.Container, port uint16) netip.AddrPort {
	return ctr.ListenTCP(netip.AddrPortFrom(ctr.IP(4), port).String()).Addr
}

func probeString(err error) string {
	if err == nil {
		return "allowed"
	}
	return fmt.Sprintf("blocked (%v)", err)
}
