package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--help"}, 0, "--policy-dir"},
		{[]string{}, 2, "give --policy-dir (standalone) or --kubeconfig"},
		{[]string{"--policy-dir", "x", "--nflog-group", "70000"}, 2, "--nflog-group 70000"},
		{[]string{"--policy-dir", "x", "--log-format", "xml"}, 2, "--log-format"},
		{[]string{"--policy-dir", "x", "extra"}, 2, "unexpected arguments"},
	} {
		var stderr bytes.Buffer
		if code := run(tc.args, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("run(%q) = %d, %q; want %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

func TestInstallCNIFlags(t *testing.T) {
	bin, conf := t.TempDir(), t.TempDir()
	plugin := filepath.Join(t.TempDir(), "netseg")
	if err := os.WriteFile(plugin, []byte("plugin"), 0o755); err != nil {
		t.Fatal(err)
	}
	list := `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]}`
	if err := os.WriteFile(filepath.Join(conf, "10-k8s.conflist"), []byte(list), 0o644); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	args := []string{"--cni-bin-dir", bin, "--cni-conf-dir", conf, "--plugin", plugin, "--socket", "/run/netseg/x.sock"}
	if code := run(append([]string{"--install-cni"}, args...), &stderr); code != 0 {
		t.Fatalf("install: %d %s", code, stderr.String())
	}
	b, _ := os.ReadFile(filepath.Join(conf, "10-k8s.conflist"))
	if !strings.Contains(string(b), `"type": "netseg"`) || !strings.Contains(string(b), "/run/netseg/x.sock") {
		t.Fatalf("conflist after install: %s", b)
	}
	if code := run(append([]string{"--uninstall-cni"}, args...), &stderr); code != 0 {
		t.Fatalf("uninstall: %d %s", code, stderr.String())
	}
	b, _ = os.ReadFile(filepath.Join(conf, "10-k8s.conflist"))
	if strings.Contains(string(b), "netseg") {
		t.Fatalf("conflist after uninstall: %s", b)
	}
}

func TestMemoryLimit(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	for _, tc := range []struct {
		name  string
		env   func(string) string
		limit int64
		ok    bool
	}{
		{"the DaemonSet's 512Mi", env("NETSEG_MEMORY_LIMIT", "536870912"), 429496728, true},
		{"GOMEMLIMIT wins", env("NETSEG_MEMORY_LIMIT", "536870912", "GOMEMLIMIT", "100MiB"), 0, false},
		{"no limit", env(), 0, false},
		{"garbage", env("NETSEG_MEMORY_LIMIT", "512Mi"), 0, false},
		{"zero", env("NETSEG_MEMORY_LIMIT", "0"), 0, false},
	} {
		if limit, ok := memoryLimit(tc.env); limit != tc.limit || ok != tc.ok {
			t.Errorf("%s: %d, %v; want %d, %v", tc.name, limit, ok, tc.limit, tc.ok)
		}
	}
}
