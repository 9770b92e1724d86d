// Command netseg-demo runs netseg's demo (package e2e/demo) on a lab node:
// "make demo" builds it into bin/ beside netseg-agent and the netseg CNI
// plugin and starts it through hack/demo.sh. It lives under e2e/, not
// cmd/, because it drives the lab that the end-to-end tests use; the
// production binaries link none of it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/netseg/netseg/e2e/demo"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run parses the flags and runs the demo; it returns the exit code: 0 when
// the demo ran, 1 when it failed, 2 on bad usage.
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("netseg-demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	exe, _ := os.Executable()
	policyDir := fs.String("policy-dir", "examples", "the policy directory the agent enforces")
	binDir := fs.String("bin-dir", filepath.Dir(exe), "directory holding netseg-agent and the netseg CNI plugin")
	rounds := fs.Int("rounds", 2, "rounds of traffic; 0 runs until Ctrl-C")
	interval := fs.Duration("interval", 2*time.Second, "pause between rounds")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "Usage: netseg-demo [--policy-dir DIR] [--rounds N] [--interval D]\n\n"+
			"Runs netseg on a lab node (network namespaces; the host's own network is not touched):\n"+
			"the agent in standalone mode, demo containers wired by the reference bridge plugin and\n"+
			"the netseg plugin, and connections between them that are expected, undeclared, denied\n"+
			"and would-deny. Needs root, iproute2, nftables and the CNI reference plugins in\n"+
			"/opt/cni/bin ($NETSEG_CNI_PATH). Everything is removed on exit, Ctrl-C included.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *rounds < 0 || fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	err := demo.Run(ctx, demo.Options{PolicyDir: *policyDir, BinDir: *binDir, Rounds: *rounds, Interval: *interval, Out: stdout})
	if err != nil {
		fmt.Fprintln(stderr, "netseg-demo:", err)
		return 1
	}
	return 0
}
