// Package controlplane runs a real Kubernetes API server for netseg's
// tests: Debian's etcd (etcd-server, /usr/bin/etcd) and a kube-apiserver
// built once by hack/kube-apiserver.sh, both on 127.0.0.1 with free ports
// and data in a test temporary directory.
//
// There is no controller-manager and no scheduler: the ServiceAccount
// admission plugin is off so that Pods can be created, and a test plays
// kubelet by setting spec.nodeName and patching status.podIPs itself.
//
// Stop order matters: kube-apiserver goes first. Once etcd is gone the API
// server drains its watches for minutes before it exits.
package controlplane

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// EtcdPath is Debian's etcd-server binary.
const EtcdPath = "/usr/bin/etcd"

// Users the API server knows by token (--token-auth-file).
const (
	// AdminUser is in system:masters: it may do anything.
	AdminUser = "admin"
	// AgentUser has no rights until a test binds a role to it (e.g. the
	// generated deploy/rbac/role.yaml).
	AgentUser = "netseg-agent"
)

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	t   testing.TB
	dir string

	// URL is the API server's https://127.0.0.1:<port>.
	URL string
	// Kubeconfig is a kubeconfig file for AdminUser.
	Kubeconfig string
	// AgentKubeconfig is a kubeconfig file for AgentUser.
	AgentKubeconfig string

	tokens   map[string]string
	apiPort  int
	apiArgs  []string
	apiBin   string
	etcdURL  string
	mu       sync.Mutex
	etcd     *proc
	api      *proc
	apiStart int // starts so far, for log names
}

// proc is a child process with its log file.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

// APIServerPath returns the cached kube-apiserver, building it the first
// time through hack/kube-apiserver.sh (several minutes). $NETSEG_KUBE_APISERVER
// overrides it.
func APIServerPath() (string, error) {
	if p := os.Getenv("NETSEG_KUBE_APISERVER"); p != "" {
		return p, nil
	}
	script, err := repoFile("hack/kube-apiserver.sh")
	if err != nil {
		return "", err
	}
	var stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/kube-apiserver.sh: %w: %s", err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}

// Assets returns a directory laid out as envtest's KUBEBUILDER_ASSETS
// (etcd, kube-apiserver) pointing at this machine's binaries, for tests
// that use sigs.k8s.io/controller-runtime/pkg/envtest: its download does
// not work here. Note that envtest passes etcd flags of its own.
func Assets(t testing.TB) string {
	t.Helper()
	api, err := APIServerPath()
	if err != nil {
		t.Fatalf("controlplane: %v", err)
	}
	dir := t.TempDir()
	for name, target := range map[string]string{"etcd": EtcdPath, "kube-apiserver": api} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			t.Fatalf("controlplane: %v", err)
		}
	}
	return dir
}

// repoFile finds path relative to the module root (the directory holding
// go.mod), searching up from the working directory.
func repoFile(path string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, path), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory: cannot find %s", path)
		}
		dir = parent
	}
}

// Start runs etcd and kube-apiserver and waits until the API server is
// ready. Both stop when t ends, pass or fail.
func Start(t testing.TB) *ControlPlane {
	t.Helper()
	api, err := APIServerPath()
	if err != nil {
		t.Fatalf("controlplane: %v", err)
	}
	sweepLeftovers()
	cp := &ControlPlane{t: t, dir: t.TempDir(), apiBin: api, tokens: map[string]string{}}
	t.Cleanup(func() {
		if t.Failed() {
			cp.dumpLogs()
		}
		cp.Stop()
	})
	if err := cp.start(); err != nil {
		t.Fatalf("controlplane: %v", err)
	}
	return cp
}

func (cp *ControlPlane) start() error {
	etcdClient, etcdPeer, apiPort, err := freePorts3()
	if err != nil {
		return err
	}
	cp.apiPort = apiPort
	cp.URL = fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	cp.etcdURL = fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	cp.etcd, err = cp.run("etcd", EtcdPath,
		"--name", "default", "--data-dir", filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls", cp.etcdURL, "--advertise-client-urls", cp.etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL, "--unsafe-no-fsync")
	if err != nil {
		return err
	}
	if err := waitHTTP(cp.etcdURL+"/health", "", 20*time.Second, cp.etcd); err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	if err := cp.writeAuth(); err != nil {
		return err
	}
	cp.apiArgs = []string{
		"--etcd-servers", cp.etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		// No kubernetes Service endpoints for a loopback address.
		"--endpoint-reconciler-type", "none",
		"--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", filepath.Join(cp.dir, "certs"),
		"--token-auth-file", filepath.Join(cp.dir, "tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", filepath.Join(cp.dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(cp.dir, "sa.key"),
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--disable-admission-plugins", "ServiceAccount",
		"--allow-privileged=true",
		// Keep the lone test etcd light.
		"--enable-priority-and-fairness=false",
		"--watch-cache=true",
	}
	if err := cp.StartAPIServer(); err != nil {
		return err
	}
	if cp.Kubeconfig, err = cp.writeKubeconfig(AdminUser); err != nil {
		return err
	}
	cp.AgentKubeconfig, err = cp.writeKubeconfig(AgentUser)
	return err
}

// writeAuth writes the token file and the service-account signing key.
func (cp *ControlPlane) writeAuth() error {
	var csv strings.Builder
	for i, u := range []struct{ name, groups string }{{AdminUser, "system:masters"}, {AgentUser, ""}} {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		tok := hex.EncodeToString(b)
		cp.tokens[u.name] = tok
		fmt.Fprintf(&csv, "%s,%s,%d", tok, u.name, 1000+i)
		if u.groups != "" {
			fmt.Fprintf(&csv, ",%q", u.groups)
		}
		csv.WriteString("\n")
	}
	if err := os.WriteFile(filepath.Join(cp.dir, "tokens.csv"), []byte(csv.String()), 0o600); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cp.dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
}

// Token returns the bearer token of a user (AdminUser or AgentUser).
func (cp *ControlPlane) Token(user string) string { return cp.tokens[user] }

func (cp *ControlPlane) writeKubeconfig(user string) (string, error) {
	// The serving certificate is self-signed by the API server (--cert-dir);
	// tests trust it without verification, on loopback only.
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {server: %q, insecure-skip-tls-verify: true}
users:
- name: %s
  user: {token: %q}
contexts:
- name: test
  context: {cluster: test, user: %s}
current-context: test
`, cp.URL, user, cp.tokens[user], user)
	path := filepath.Join(cp.dir, user+".kubeconfig")
	return path, os.WriteFile(path, []byte(cfg), 0o600)
}

// StartAPIServer starts kube-apiserver (again, after StopAPIServer) on the
// same port and waits until /readyz answers ok.
func (cp *ControlPlane) StartAPIServer() error {
	cp.mu.Lock()
	cp.apiStart++
	name := fmt.Sprintf("kube-apiserver-%d", cp.apiStart)
	cp.mu.Unlock()
	p, err := cp.run(name, cp.apiBin, cp.apiArgs...)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.api = p
	cp.mu.Unlock()
	if err := waitHTTP(cp.URL+"/readyz", cp.tokens[AdminUser], 90*time.Second, p); err != nil {
		return fmt.Errorf("kube-apiserver: %w\n%s", err, tailFile(p.log, 30))
	}
	return nil
}

// StopAPIServer stops kube-apiserver, leaving etcd running.
func (cp *ControlPlane) StopAPIServer() {
	cp.mu.Lock()
	p := cp.api
	cp.api = nil
	cp.mu.Unlock()
	stop(p, 20*time.Second)
}

// KillAPIServer kills kube-apiserver at once (SIGKILL), as a crash does:
// open watches break without a goodbye.
func (cp *ControlPlane) KillAPIServer() {
	cp.mu.Lock()
	p := cp.api
	cp.api = nil
	cp.mu.Unlock()
	stop(p, 0)
}

// Stop stops kube-apiserver, then etcd. It is safe to call twice.
func (cp *ControlPlane) Stop() {
	cp.StopAPIServer()
	cp.mu.Lock()
	p := cp.etcd
	cp.etcd = nil
	cp.mu.Unlock()
	stop(p, 10*time.Second)
}

func (cp *ControlPlane) run(name, bin string, args ...string) (*proc, error) {
	log := filepath.Join(cp.dir, name+".log")
	f, err := os.Create(log)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Its own process group: a Ctrl-C at the terminal reaches the test
	// binary, whose cleanups stop the control plane in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: log, done: make(chan struct{})}
	marker := markProcess(cmd.Process.Pid)
	go func() { _ = cmd.Wait(); f.Close(); os.Remove(marker); close(p.done) }()
	return p, nil
}

// procDir records the control-plane processes of running tests, as
// "<test pid>-<process pid>", so that a later run can stop the ones a
// killed test binary left behind (its cleanups never ran).
var procDir = filepath.Join(os.TempDir(), "netseg-controlplane-procs")

func markProcess(pid int) string {
	_ = os.MkdirAll(procDir, 0o700)
	path := filepath.Join(procDir, fmt.Sprintf("%d-%d", os.Getpid(), pid))
	_ = os.WriteFile(path, nil, 0o600)
	return path
}

// sweepLeftovers kills control-plane processes whose test process is gone.
func sweepLeftovers() {
	entries, _ := os.ReadDir(procDir)
	for _, e := range entries {
		var owner, pid int
		if _, err := fmt.Sscanf(e.Name(), "%d-%d", &owner, &pid); err != nil {
			continue
		}
		if syscall.Kill(owner, 0) == nil {
			continue // its test is still running
		}
		if cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil &&
			(strings.Contains(string(cmdline), "etcd") || strings.Contains(string(cmdline), "kube-apiserver")) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		_ = os.Remove(filepath.Join(procDir, e.Name()))
	}
}

// stop ends p: SIGTERM, and SIGKILL after grace (at once when 0).
func stop(p *proc, grace time.Duration) {
	if p == nil {
		return
	}
	if grace == 0 {
		_ = p.cmd.Process.Kill()
		<-p.done
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitHTTP polls url until it answers 200 or p exits.
func waitHTTP(url, token string, timeout time.Duration, p *proc) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, // loopback, self-signed test server
	}}
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if p.exited() {
			return fmt.Errorf("%s exited: %s", p.name, tailFile(p.log, 20))
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not ready after %v: %s", url, timeout, last)
}

// freePorts3 returns three distinct free loopback ports.
func freePorts3() (a, b, c int, err error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, 0, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports[0], ports[1], ports[2], nil
}

func (cp *ControlPlane) dumpLogs() {
	cp.mu.Lock()
	var logs []string
	for _, p := range []*proc{cp.etcd, cp.api} {
		if p != nil {
			logs = append(logs, p.log)
		}
	}
	cp.mu.Unlock()
	for _, l := range logs {
		cp.t.Logf("%s (last lines):\n%s", filepath.Base(l), tailFile(l, 15))
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
