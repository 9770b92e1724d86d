// Package cniconf installs netseg into a node's CNI configuration: it
// copies the plugin binary into the CNI bin directory and chains netseg
// last in the node's active network configuration (the first conflist in
// lexical order, as container runtimes pick it), and removes both on
// uninstall. Every file is replaced atomically (write, sync, rename, sync
// the directory), so a runtime never reads a half-written config, and a
// symbolic link is written through (the link stays, its target changes).
// It never overwrites a configuration it did not read, and never removes
// the plugin while a configuration still chains it: either would make
// every ADD and DEL on the node fail.
package cniconf

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// PluginType is netseg's CNI type.
const PluginType = "netseg"

// Options say where things are and how netseg's entry reads.
type Options struct {
	BinDir  string         // e.g. /host/opt/cni/bin
	ConfDir string         // e.g. /host/etc/cni/net.d
	Plugin  string         // the netseg binary to copy
	Entry   map[string]any // netseg's conflist entry; "type" is set to netseg
}

// Install copies the plugin and chains netseg last in the active network
// configuration. Installing twice changes nothing the second time. It
// returns the configuration file it changed.
func Install(o Options) (string, error) {
	if err := copyFile(o.Plugin, filepath.Join(o.BinDir, PluginType), 0o755); err != nil {
		return "", fmt.Errorf("install plugin: %w", err)
	}
	return Chain(o)
}

// Chained reports whether the active network configuration chains netseg
// last (the agent checks it: a network plugin that rewrites its conflist,
// as many do when they restart, drops netseg from the chain).
func Chained(confDir string) (bool, string, error) {
	entry, path, err := ChainedEntry(confDir)
	return entry != nil, path, err
}

// ChainedEntry is Chained that also returns netseg's entry (nil when the
// active configuration does not chain netseg last), so that a rewritten
// configuration can be chained again with the entry it had.
func ChainedEntry(confDir string) (map[string]any, string, error) {
	path, err := activeConfig(confDir)
	if err != nil {
		return nil, "", err
	}
	conf, err := readConfList(path)
	if err != nil {
		return nil, path, err
	}
	plugins, _ := conf["plugins"].([]any)
	if len(plugins) == 0 {
		return nil, path, nil
	}
	last, ok := plugins[len(plugins)-1].(map[string]any)
	if !ok || last["type"] != PluginType || len(withoutNetseg(plugins)) != len(plugins)-1 {
		return nil, path, nil
	}
	return last, path, nil
}

// Chain puts netseg last in the active network configuration (the plugin
// binary must be installed). It returns the file it changed.
func Chain(o Options) (string, error) {
	path, err := activeConfig(o.ConfDir)
	if err != nil {
		return "", err
	}
	conf, err := readConfList(path)
	if err != nil {
		return "", err
	}
	plugins, _ := conf["plugins"].([]any)
	entry := map[string]any{}
	for k, v := range o.Entry {
		entry[k] = v
	}
	entry["type"] = PluginType
	kept := withoutNetseg(plugins)
	conf["plugins"] = append(kept, entry)
	out := path
	if ext := filepath.Ext(path); ext == ".conf" || ext == ".json" {
		// A single-plugin .conf (or .json, which libcni reads the same way)
		// becomes a .conflist; the old file goes, so the runtime does not
		// pick it first.
		out = strings.TrimSuffix(path, ext) + ".conflist"
		if _, err := os.Lstat(out); err == nil {
			return "", fmt.Errorf("converting %s: %s exists and is not the active configuration: refusing to overwrite it", path, out)
		}
	}
	if err := writeJSON(out, conf); err != nil {
		return "", err
	}
	if out != path {
		if err := os.Remove(path); err != nil {
			return "", fmt.Errorf("remove %s: %w", path, err)
		}
	}
	return out, nil
}

// Uninstall removes netseg from every network configuration in ConfDir,
// then the plugin from BinDir, but only once no configuration chains it
// any more (a chain left pointing at a missing plugin fails every ADD and
// DEL). Missing files are fine.
func Uninstall(o Options) error {
	files, err := configs(o.ConfDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, path := range files {
		if !strings.HasSuffix(path, ".conflist") {
			continue
		}
		conf, err := readConfList(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		plugins, _ := conf["plugins"].([]any)
		kept := withoutNetseg(plugins)
		if len(kept) == len(plugins) {
			continue
		}
		conf["plugins"] = kept
		if err := writeJSON(path, conf); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w; the plugin stays in %s while a configuration may still chain it", errors.Join(errs...), o.BinDir)
	}
	if still := chaining(files); len(still) > 0 {
		return fmt.Errorf("%s still chain netseg; the plugin stays in %s", strings.Join(still, ", "), o.BinDir)
	}
	if err := os.Remove(filepath.Join(o.BinDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove plugin: %w", err)
	}
	return nil
}

// chaining lists the configurations among files that chain netseg (or
// cannot be read, so might).
func chaining(files []string) []string {
	var out []string
	for _, path := range files {
		conf, err := readConfList(path)
		if err != nil {
			out = append(out, path)
			continue
		}
		plugins, _ := conf["plugins"].([]any)
		if len(withoutNetseg(plugins)) != len(plugins) {
			out = append(out, path)
		}
	}
	return out
}

func withoutNetseg(plugins []any) []any {
	out := make([]any, 0, len(plugins))
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			continue
		}
		out = append(out, p)
	}
	return out
}

// configs lists the network configurations, in the order runtimes try them.
func configs(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read CNI config directory: %w", err)
	}
	var files []string
	for _, e := range entries {
		ext := filepath.Ext(e.Name())
		if !e.IsDir() && (ext == ".conflist" || ext == ".conf" || ext == ".json") {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	sort.Strings(files)
	return files, nil
}

func activeConfig(dir string) (string, error) {
	files, err := configs(dir)
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("no network configuration in %s: install the cluster's network plugin first, netseg chains after it", dir)
	}
	return files[0], nil
}

// readConfList reads a .conflist, or a single-plugin .conf as a conflist.
func readConfList(path string) (map[string]any, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(b, &conf); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if _, ok := conf["plugins"]; ok {
		if _, ok := conf["plugins"].([]any); !ok {
			return nil, fmt.Errorf("%s: plugins is not a list", path)
		}
		return conf, nil
	}
	if _, ok := conf["type"]; !ok {
		return nil, fmt.Errorf("%s: neither a conflist (plugins) nor a plugin config (type)", path)
	}
	list := map[string]any{"cniVersion": conf["cniVersion"], "name": conf["name"]}
	plugin := map[string]any{}
	for k, v := range conf {
		if k != "name" && k != "cniVersion" {
			plugin[k] = v
		}
	}
	list["plugins"] = []any{plugin}
	return list, nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	return writeAtomic(path, append(b, '\n'), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	// Through a symbolic link: the link stays, its target is replaced.
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".netseg-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("replace %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(path), err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(path), err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	return writeAtomic(dst, b, mode)
}
