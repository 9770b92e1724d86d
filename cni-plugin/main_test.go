package main_test

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/netseg/netseg/e2e/lab"
)

// pluginDir holds the netseg binary built from this package for the run;
// the kernel tests put it first on the CNI plugin path.
var pluginDir string

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() { // unit runs: the kernel tests skip and need no binary
		lab.Main(m)
	}
	dir, err := os.MkdirTemp("", "netseg-cni-test-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "temp dir: %v\n", err)
		os.Exit(1)
	}
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	pluginDir = dir
	lab.Main(m, func() { os.RemoveAll(dir) })
}

// build compiles this package, the plugin, into dir/netseg with the go
// command that runs the tests.
func build(dir string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(os.Getenv("GOROOT"), "bin", "go")
	}
	cmd := exec.Command(gobin, "build", "-o", filepath.Join(dir, "netseg"), ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0") // static, as make build and the image
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("build the plugin: %w: %s", err, out)
	}
	return nil
}
