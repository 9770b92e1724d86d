package e2e_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/netseg/netseg/api/agent"
)

// podman runs Debian's podman 4.3 with the CNI network backend inside a lab
// node: containers from a local root filesystem (one static binary), on a
// CNI network whose conflist chains netseg after bridge. podman passes the
// container name as both K8S_POD_NAMESPACE and K8S_POD_NAME and no labels,
// so the test's policy gives the namespaces their labels and the
// Workload inventory gives the pods theirs.
type podman struct {
	t       *testing.T
	n       *node
	dir     string
	rootfs  string
	network string
}

// podmanPolicy: podman 4 passes only K8S_POD_NAME (the container name),
// so its containers live in the namespace "default"; the Workload
// inventory labels them by name, and zones select them by those labels.
const podmanPolicy = `apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: pm-checkout, namespace: default}
spec: {podName: "checkout*", labels: {app: pm-checkout}}
---
apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: pm-payments, namespace: default}
spec: {podName: "payments*", labels: {app: pm-payments}}
---
apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: pm-monitoring, namespace: default}
spec: {podName: "monitoring*", labels: {app: pm-monitoring}}
---
apiVersion: netseg.io/v1alpha1
kind: Zone
metadata: {name: pm-shop}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [pm-checkout, pm-monitoring]}]}
  priority: 40
  defaultAction: Deny
---
apiVersion: netseg.io/v1alpha1
kind: Zone
metadata: {name: pm-payments}
spec:
  podSelector: {matchLabels: {app: pm-payments}}
  priority: 40
  defaultAction: Deny
---
apiVersion: netseg.io/v1alpha1
kind: ServiceDependency
metadata: {name: pm-checkout, namespace: default}
spec:
  workload: {matchLabels: {app: pm-checkout}}
  dependsOn:
  - name: payments
    workload: {matchLabels: {app: pm-payments}}
    ports: [{protocol: TCP, port: 8443}]
`

func newPodman(t *testing.T) *podman {
	if _, err := exec.LookPath("podman"); err != nil {
		t.Fatalf("podman is not installed (hack/setup.sh installs it): %v", err)
	}
	n := newNode(t, "bridge")
	if err := os.WriteFile(filepath.Join(n.policyDir, "podman.yaml"), []byte(podmanPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	// podman refuses a runroot path longer than 50 characters: a short
	// directory of our own rather than the test's temp dir.
	dir, err := os.MkdirTemp("", "nspm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p := &podman{t: t, n: n, dir: dir, network: "netseg-podman"}
	p.rootfs = filepath.Join(p.dir, "rootfs")
	for _, d := range []string{"rootfs/etc", "net", "root", "run", "ipam"} {
		if err := os.MkdirAll(filepath.Join(p.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	build := exec.Command("go", "build", "-o", filepath.Join(p.rootfs, "podbin"), "./e2e/podbin")
	build.Dir, build.Env = "..", append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the container's binary: %v: %s", err, out)
	}
	conf := fmt.Sprintf(`[network]
network_backend = "cni"
cni_plugin_dirs = [%q, "/opt/cni/bin"]
network_config_dir = %q
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
`, binDir, filepath.Join(p.dir, "net"))
	if err := os.WriteFile(filepath.Join(p.dir, "containers.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	conflist := map[string]any{"cniVersion": "1.0.0", "name": p.network, "plugins": []map[string]any{
		{"type": "bridge", "bridge": "podman-ns0", "isGateway": true, "ipMasq": false,
			"ipam": map[string]any{"type": "host-local", "ranges": [][]map[string]string{{{"subnet": "10.92.0.0/24"}}},
				"routes": []map[string]string{{"dst": "0.0.0.0/0"}}, "dataDir": filepath.Join(p.dir, "ipam")}},
		{"type": "netseg", "socket": n.socket, "stateDir": n.pluginDir, "timeout": "5s"},
	}}
	b, _ := json.Marshal(conflist)
	if err := os.WriteFile(filepath.Join(p.dir, "net", p.network+".conflist"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := p.run("rm", "--all", "--force", "--time", "0"); err != nil {
			t.Logf("podman rm: %v: %s", err, out)
		}
	})
	return p
}

// run runs podman in the lab node's network namespace (nsenter, not "ip
// netns exec", which remounts /sys and hides the cgroup mounts).
func (p *podman) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"--root", filepath.Join(p.dir, "root"), "--runroot", filepath.Join(p.dir, "run")}, args...)
	cmd := p.n.ns.Command(ctx, "podman", full...)
	cmd.Env = append(os.Environ(), "CONTAINERS_CONF="+filepath.Join(p.dir, "containers.conf"))
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// container runs "podman run [flags] --rootfs ROOTFS /podbin cmd...":
// --rootfs is a switch that makes the first argument the root filesystem.
func (p *podman) container(name string, flags []string, cmd ...string) (string, error) {
	args := append([]string{"run", "--name", name, "--network", p.network, "--ulimit", "nofile=1024:1024",
		"--ulimit", "nproc=1024:1024"}, flags...)
	args = append(append(args, "--rootfs", p.rootfs, "/podbin"), cmd...)
	return p.run(args...)
}

func TestPodmanContainersArePoliced(t *testing.T) {
	p := newPodman(t)
	if out, err := p.container("payments", []string{"-d"}, "serve", "8443"); err != nil {
		t.Fatalf("podman run payments: %v: %s", err, out)
	}
	ip, err := p.run("inspect", "payments", "--format", "{{(index .NetworkSettings.Networks \""+p.network+"\").IPAddress}}")
	if err != nil || ip == "" {
		t.Fatalf("payments' address: %v: %s", err, ip)
	}
	// Each probe is a new container: its first connection is policed.
	if out, err := p.container("checkout-1", []string{"--rm"}, "probe", ip+":8443"); err != nil {
		t.Fatalf("checkout -> payments 8443 (declared dependency): %v: %s", err, out)
	}
	if out, err := p.container("monitoring-1", []string{"--rm"}, "probe", ip+":8443"); err == nil {
		t.Fatalf("monitoring -> payments 8443 (payments perimeter) got through: %s", out)
	}
	eps := n2s(p.n.endpoints())
	if !strings.Contains(eps, "default/payments") {
		t.Fatalf("the agent does not know the podman container: %s", eps)
	}
}

func n2s(eps []agent.Endpoint) string {
	var parts []string
	for _, ep := range eps {
		parts = append(parts, ep.Namespace+"/"+ep.Name)
	}
	return strings.Join(parts, " ")
}
