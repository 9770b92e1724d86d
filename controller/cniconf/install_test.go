package cniconf

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

const bridgeList = `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge","bridge":"cni0"},{"type":"portmap","capabilities":{"portMappings":true}}]}`

func setup(t *testing.T, files map[string]string) Options {
	t.Helper()
	o := Options{BinDir: t.TempDir(), ConfDir: t.TempDir(), Plugin: filepath.Join(t.TempDir(), "netseg"),
		Entry: map[string]any{"socket": "/run/netseg/agent.sock", "failurePolicy": "closed"}}
	if err := os.WriteFile(o.Plugin, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(o.ConfDir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return o
}

func types(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range conf.Plugins {
		out = append(out, p.Type)
	}
	return out
}

func TestInstallChainsLastAndIsIdempotent(t *testing.T) {
	o := setup(t, map[string]string{"10-k8s.conflist": bridgeList, "99-other.conflist": bridgeList})
	for i := 0; i < 2; i++ {
		path, err := Install(o)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(path) != "10-k8s.conflist" {
			t.Fatalf("installed into %s, want the first conflist", path)
		}
		if diff := cmp.Diff([]string{"bridge", "portmap", "netseg"}, types(t, path)); diff != "" {
			t.Fatalf("install %d: plugins (-want +got):\n%s", i+1, diff)
		}
	}
	if diff := cmp.Diff([]string{"bridge", "portmap"}, types(t, filepath.Join(o.ConfDir, "99-other.conflist"))); diff != "" {
		t.Fatalf("the other conflist changed:\n%s", diff)
	}
	if b, err := os.ReadFile(filepath.Join(o.BinDir, "netseg")); err != nil || string(b) != "binary" {
		t.Fatalf("plugin not copied: %v", err)
	}
	if err := Uninstall(o); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"bridge", "portmap"}, types(t, filepath.Join(o.ConfDir, "10-k8s.conflist"))); diff != "" {
		t.Fatalf("after uninstall (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(o.BinDir, "netseg")); !os.IsNotExist(err) {
		t.Fatalf("plugin still there: %v", err)
	}
	if err := Uninstall(o); err != nil {
		t.Fatalf("second uninstall: %v", err)
	}
}

func TestInstallConvertsSingleConf(t *testing.T) {
	o := setup(t, map[string]string{"10-bridge.conf": `{"cniVersion":"0.4.0","name":"b","type":"bridge","bridge":"cni0"}`})
	path, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "10-bridge.conflist" {
		t.Fatalf("wrote %s", path)
	}
	if diff := cmp.Diff([]string{"bridge", "netseg"}, types(t, path)); diff != "" {
		t.Fatal(diff)
	}
	if _, err := os.Stat(filepath.Join(o.ConfDir, "10-bridge.conf")); !os.IsNotExist(err) {
		t.Fatalf("the .conf is still there: %v", err)
	}
}

func TestInstallErrors(t *testing.T) {
	for name, files := range map[string]map[string]string{
		"no config":  {},
		"bad json":   {"10-x.conflist": "{"},
		"no plugins": {"10-x.conflist": `{"name":"x"}`},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Install(setup(t, files)); err == nil {
				t.Fatal("no error")
			} else {
				t.Log(err)
			}
		})
	}
}

func TestInstallConvertsSingleJSON(t *testing.T) {
	o := setup(t, map[string]string{"10-bridge.json": `{"cniVersion":"0.4.0","name":"b","type":"bridge","bridge":"cni0"}`})
	path, err := Install(o)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(path) != "10-bridge.conflist" {
		t.Fatalf("wrote %s", path)
	}
	if _, err := os.Stat(filepath.Join(o.ConfDir, "10-bridge.json")); !os.IsNotExist(err) {
		t.Fatalf("the .json is still there: %v", err)
	}
}

// TestInstallRefusesToOverwrite: converting 10-net.conf would write
// 10-net.conflist; one that exists already (not the active one) is not
// overwritten, and nothing changes.
func TestInstallRefusesToOverwrite(t *testing.T) {
	single := `{"cniVersion":"1.0.0","name":"k8s","type":"bridge","bridge":"cni0"}`
	o := setup(t, map[string]string{"10-net.conf": single, "10-net.conflist": bridgeList})
	if _, err := Install(o); err == nil {
		t.Fatal("Install overwrote an existing conflist")
	}
	for name, want := range map[string]string{"10-net.conf": single, "10-net.conflist": bridgeList} {
		if b, err := os.ReadFile(filepath.Join(o.ConfDir, name)); err != nil || string(b) != want {
			t.Errorf("%s changed: %q, %v", name, b, err)
		}
	}
}

// TestInstallWritesThroughSymlinks: a conflist that is a symbolic link
// stays one; its target gets netseg.
func TestInstallWritesThroughSymlinks(t *testing.T) {
	o := setup(t, nil)
	targetDir := t.TempDir()
	target := filepath.Join(targetDir, "real.conflist")
	if err := os.WriteFile(target, []byte(bridgeList), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(o.ConfDir, "10-k8s.conflist")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode().Type() != os.ModeSymlink {
		t.Fatalf("the link was replaced: %v, %v", fi, err)
	}
	if diff := cmp.Diff([]string{"bridge", "portmap", "netseg"}, types(t, target)); diff != "" {
		t.Errorf("target (-want +got):\n%s", diff)
	}
}

// TestUninstallKeepsPluginWhileChained: when a configuration cannot be
// un-chained, the plugin stays (removing it would fail every ADD and DEL).
func TestUninstallKeepsPluginWhileChained(t *testing.T) {
	o := setup(t, map[string]string{"10-k8s.conflist": bridgeList})
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	broken := `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"netseg"}]` // cut short
	if err := os.WriteFile(filepath.Join(o.ConfDir, "20-other.conflist"), []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(o); err == nil {
		t.Fatal("Uninstall reported success with a configuration it could not read")
	}
	if _, err := os.Stat(filepath.Join(o.BinDir, PluginType)); err != nil {
		t.Fatalf("the plugin was removed while a configuration may chain it: %v", err)
	}
	if diff := cmp.Diff([]string{"bridge", "portmap"}, types(t, filepath.Join(o.ConfDir, "10-k8s.conflist"))); diff != "" {
		t.Errorf("the readable configuration was not un-chained (-want +got):\n%s", diff)
	}
	// Once the broken file is gone, uninstall completes.
	if err := os.Remove(filepath.Join(o.ConfDir, "20-other.conflist")); err != nil {
		t.Fatal(err)
	}
	if err := Uninstall(o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(o.BinDir, PluginType)); !os.IsNotExist(err) {
		t.Fatalf("plugin still there after a clean uninstall: %v", err)
	}
}

// TestChainedAfterRewrite: a primary plugin that rewrites its conflist
// drops netseg; Chained says so and Chain puts it back.
func TestChainedAfterRewrite(t *testing.T) {
	o := setup(t, map[string]string{"10-k8s.conflist": bridgeList})
	if _, err := Install(o); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := Chained(o.ConfDir); !ok || err != nil {
		t.Fatalf("after install: chained %v, %v", ok, err)
	}
	if err := os.WriteFile(filepath.Join(o.ConfDir, "10-k8s.conflist"), []byte(bridgeList), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, path, err := Chained(o.ConfDir); ok || err != nil || filepath.Base(path) != "10-k8s.conflist" {
		t.Fatalf("after the rewrite: chained %v (%s), %v", ok, path, err)
	}
	if _, err := Chain(o); err != nil {
		t.Fatal(err)
	}
	if ok, _, err := Chained(o.ConfDir); !ok || err != nil {
		t.Fatalf("after Chain: chained %v, %v", ok, err)
	}
}
