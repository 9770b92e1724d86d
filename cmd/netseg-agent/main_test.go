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
