// Command netseg-agent is netseg's node agent: it loads policy (standalone:
// a directory of YAML files; Kubernetes: the CRDs through the API server),
// takes endpoint registrations from the netseg
// CNI plugin on a unix socket, and keeps the node's nftables table in step.
// Stopping it (SIGTERM, SIGINT) leaves the rules in the kernel.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/cniconf"
	"github.com/netseg/netseg/controller/kube"
	"github.com/netseg/netseg/controller/node"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/dataplane"
)

func main() {
	// Every sync allocates its whole desired state, most of it garbage by
	// the next sync: a lazier collector trades a heap a few times the live
	// set for less CPU per sync (docs/operations.md has the figures). GOGC
	// in the environment wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	// With a lazy collector the heap may grow to a few times the live
	// set: a soft limit under the container's memory limit (the DaemonSet
	// passes it by the downward API) makes the collector work harder near
	// it instead of the kernel killing the agent. GOMEMLIMIT wins.
	if limit, ok := memoryLimit(os.Getenv); ok {
		debug.SetMemoryLimit(limit)
	}
	os.Exit(run(os.Args[1:], os.Stderr))
}

// memoryLimit is the Go heap's soft limit: 80 % of NETSEG_MEMORY_LIMIT
// (bytes, the container's limits.memory), leaving room for what the
// runtime does not count (stacks, the binary, kernel buffers); ok is
// false when GOMEMLIMIT is set or there is no usable limit.
func memoryLimit(getenv func(string) string) (int64, bool) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(getenv("NETSEG_MEMORY_LIMIT"), 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n / 10 * 8, true
}

const usage = `netseg-agent: netseg's node agent.

Standalone mode (policy from a directory of Zone, ZonePolicy,
ServiceDependency and Namespace YAML documents, watched for changes):

  netseg-agent --policy-dir DIR [flags]

Kubernetes mode (the CRDs, Namespaces, Pods, Services and EndpointSlices
through the API server; in a pod, the in-cluster configuration is used
when neither --policy-dir nor --kubeconfig is given):

  netseg-agent --kubeconfig FILE --node-name NAME [flags]

Remove everything netseg made on this node (nftables table, registry,
socket):

  netseg-agent --cleanup [--state-dir DIR] [--socket PATH]

Install the CNI plugin and chain it last in the node's network
configuration (a DaemonSet's initContainer), or remove both:

  netseg-agent --install-cni [--cni-bin-dir DIR] [--cni-conf-dir DIR] [--plugin FILE]
  netseg-agent --uninstall-cni [--cni-bin-dir DIR] [--cni-conf-dir DIR]

Flags:
`

type flags struct {
	cfg            node.Config
	cleanup        bool
	keepChained    bool
	fixBrNetfilter bool
	forwardMark    uint64
	installCNI     bool
	uninstallCNI   bool
	cni            cniconf.Options
	logLevel       string
	logFormat      string
	healthAddr     string
	metricsAddr    string
	kube           kube.Config
	kubeconfig     string
	cniStateDir    string
}

// kubernetes reports whether the flags select Kubernetes mode.
func (f *flags) kubernetes() bool {
	return f.kubeconfig != "" || f.cfg.PolicyDir == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != ""
}

func parse(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("netseg-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.StringVar(&f.cfg.PolicyDir, "policy-dir", "", "standalone mode: the policy directory")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "Kubernetes mode: the kubeconfig file (default: in-cluster when KUBERNETES_SERVICE_HOST is set)")
	fs.StringVar(&f.kube.NodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name: in flow records, and in Kubernetes mode to find its pods (default $NODE_NAME, else the host name in records)")
	fs.BoolVar(&f.kube.WriteStatus, "write-status", true, "Kubernetes mode: write the CRDs' status and Events (every agent compares before it writes)")
	fs.DurationVar(&f.kube.StatusDelay, "status-delay", 0, "Kubernetes mode: wait this long (plus a per-node jitter up to as long again) before writing status (default 500ms)")
	fs.StringVar(&f.cfg.StateDir, "state-dir", "/var/lib/netseg", "where the endpoint registry survives restarts")
	fs.StringVar(&f.cfg.Socket, "socket", agent.DefaultSocket, "unix socket for the CNI plugin and netsegctl (created 0600)")
	fs.StringVar(&f.cfg.NetNS, "netns", "", "program this network namespace (a path under /var/run/netns) instead of the agent's own")
	fs.TextVar(&f.cfg.UnzonedDefault, "unzoned-default", segment.Allow, "default `action` of the implicit zone \"unzoned\": Allow or Deny")
	fs.IntVar(&f.cfg.EntryBudget, "entry-budget", policy.DefaultEntryBudget, "dependency entries the ServiceDependencies of one namespace may hold together (each takes an origin id, a set and rules; an entry weighs one per port range it lists); an object that would go past it is not compiled (Ready=False, an Event) and the rest of the cluster is compiled as without it. Every agent of a cluster needs the same")
	var group uint
	fs.UintVar(&group, "nflog-group", 100, "NFLOG group of the first packets of denied connections (and accepted ones with --log-accepted)")
	fs.BoolVar(&f.cfg.Dataplane.LogAccepted, "log-accepted", false, "also send each accepted connection's first packet to NFLOG (the flow log does not need it: conntrack events carry accepted connections)")
	fs.BoolVar(&f.cfg.Dataplane.DenyHostAccess, "deny-host-access", false, "make the node's own connections to its containers pass their ingress rules (default: allowed, for kubelet probes)")
	fs.DurationVar(&f.cfg.PollInterval, "poll-interval", 0, "how often the policy directory is checked for changes its inotify watch saw (default 200ms; it is read every 10s whatever the watch saw)")
	fs.DurationVar(&f.cfg.DriftInterval, "drift-interval", 0, "how often the kernel ruleset is compared with the desired one (default 10s)")
	fs.StringVar(&f.healthAddr, "health-addr", "127.0.0.1:9965", "address for /healthz and /readyz (\"\" disables)")
	fs.StringVar(&f.metricsAddr, "metrics-addr", "127.0.0.1:9964", "address for Prometheus /metrics (\"\" disables)")
	fs.StringVar(&f.cfg.Flows.FlowLog, "flow-log", "", "write flow records (JSON lines, schema netseg.flow/v1) to this file, \"-\" for stdout; \"\" disables")
	fs.StringVar(&f.cfg.Flows.AlertLog, "alert-log", "", "write alerts for unexpected connections here (default: alerts.log beside --flow-log)")
	fs.Int64Var(&f.cfg.Flows.MaxBytes, "flow-log-max-bytes", 100<<20, "rotate the flow and alert logs past this size")
	fs.IntVar(&f.cfg.Flows.Keep, "flow-log-keep", 5, "rotated files kept (FILE.1 ... FILE.N)")
	fs.DurationVar(&f.cfg.Flows.Interval, "flow-interval", time.Minute, "interim records of long connections, denied aggregates and alert updates at most this often")
	fs.BoolVar(&f.installCNI, "install-cni", false, "copy the plugin into --cni-bin-dir, chain netseg last in the first conflist of --cni-conf-dir, then exit")
	fs.BoolVar(&f.uninstallCNI, "uninstall-cni", false, "remove netseg from every conflist of --cni-conf-dir and the plugin from --cni-bin-dir, then exit")
	fs.StringVar(&f.cni.BinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	fs.StringVar(&f.cni.ConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	fs.StringVar(&f.cniStateDir, "cni-state-dir", "/run/netseg", "the CNI plugin's stateDir: its fail-open counter becomes the metric netseg_cni_fail_open_total, and the containers it started unsegmented (failurePolicy open) are adopted from its failopen/ records every second")
	fs.StringVar(&f.cni.Plugin, "plugin", "/usr/local/bin/netseg", "the netseg CNI plugin binary to install")
	fs.BoolVar(&f.keepChained, "keep-chained", false, "check every second that the active configuration in --cni-conf-dir chains netseg last, chain it again (with the netseg entry it had) when the network plugin rewrote it, and report not ready while it cannot")
	fs.BoolVar(&f.fixBrNetfilter, "fix-br-netfilter", true, "when a bridge's traffic bypasses the forward chain because br_netfilter's sysctls are off in the node, set them on again (checked every second; while they stay off the agent is not ready, refuses ADDs, and the bridge guard drops pod traffic bridged without policy)")
	fs.Uint64Var(&f.forwardMark, "forward-mark", 0x00400000, "the packet mark bit the forward chain sets for the bridge guard (change it when another component of the node uses this bit)")
	fs.BoolVar(&f.cleanup, "cleanup", false, "remove netseg's nftables table, registry and socket, then exit")
	fs.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&f.logFormat, "log-format", "json", "json or text")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if group > 65535 {
		return nil, fmt.Errorf("--nflog-group %d: want 0-65535", group)
	}
	f.cfg.Dataplane.NFLOGGroup = uint16(group)
	f.cfg.Flows.Node = f.kube.NodeName
	f.kube.UnzonedDefault = f.cfg.UnzonedDefault
	f.kube.EntryBudget = f.cfg.EntryBudget
	if f.cfg.PolicyDir != "" && f.kubeconfig != "" {
		return nil, errors.New("--policy-dir (standalone) and --kubeconfig (Kubernetes) exclude each other")
	}
	return f, nil
}

func logger(level, format string, w io.Writer) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want json or text", format)
}

func run(args []string, stderr io.Writer) int {
	f, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
		return 2
	}
	log, err := logger(f.logLevel, f.logFormat, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
		return 2
	}
	if f.installCNI || f.uninstallCNI {
		return installCNI(f, log)
	}
	if !f.cleanup && f.cfg.PolicyDir == "" && !f.kubernetes() {
		fmt.Fprintln(stderr, "netseg-agent: give --policy-dir (standalone) or --kubeconfig (Kubernetes); see --help")
		return 2
	}
	metrics := node.NewMetrics()
	parts := node.Parts{Log: log, Metrics: metrics}
	cfg := f.cfg.Defaults()
	switch {
	case f.cleanup:
	case f.kubernetes():
		ks, err := kubeSource(f, log)
		if err != nil {
			fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
			return 2
		}
		parts.Source, parts.OnRecord = ks, ks.ObserveRecord
		metrics.RegisterEventCaps(ks.EventsSuppressed)
	default:
		parts.Source = node.NewDirSource(cfg.PolicyDir, cfg.PollInterval, log, metrics.PolicyErrors.Inc)
	}
	ns, err := dataplane.OpenNamespace(cfg.NetNS)
	if err != nil {
		fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
		return 2
	}
	defer ns.Close()
	parts.Kernel = ns
	if f.keepChained {
		o := f.cni
		o.Entry = cniEntry(f)
		parts.KeepChained = func() (string, error) {
			entry, _, err := cniconf.ChainedEntry(o.ConfDir)
			if err != nil {
				return "", err
			}
			if entry != nil {
				o.Entry = entry // chain it again as it was (stateDir, capabilities, timeout)
				return "", nil
			}
			return cniconf.Chain(o)
		}
	}
	fix := f.fixBrNetfilter
	parts.CheckHost = func() ([]string, error) { return ns.CheckBrNetfilter(fix) }
	parts.ConntrackFill = ns.ConntrackFill
	parts.Remark = ns.Remark
	parts.NodeAddrs = ns.NodeAddrs
	if f.cniStateDir != "" {
		parts.FailOpenDir = filepath.Join(f.cniStateDir, agent.FailOpenDir)
	}
	if f.forwardMark > 0xffffffff {
		fmt.Fprintf(stderr, "netseg-agent: --forward-mark %#x is wider than a packet mark (32 bits)\n", f.forwardMark)
		return 2
	}
	cfg.Dataplane.ForwardMark = uint32(f.forwardMark)
	parts.Dataplane = dataplane.New(cfg.Dataplane, ns.Dial, ns.LinkExists)
	if parts.Registry, err = node.OpenRegistry(cfg.StateDir); err != nil {
		fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
		return 2
	}
	a, err := node.New(cfg, parts)
	if err != nil {
		fmt.Fprintf(stderr, "netseg-agent: %v\n", err)
		return 2
	}
	if f.cleanup {
		if err := a.Cleanup(); err != nil {
			log.Error("cleanup", "err", err)
			return 1
		}
		log.Info("removed netseg's nftables table, registry and socket")
		return 0
	}
	metrics.RegisterKernel(a)
	metrics.RegisterFailOpen(f.cniStateDir)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	httpCtx, stopHTTP := context.WithCancel(ctx)
	waitHTTP, err := a.ServeHTTP(httpCtx, f.healthAddr, f.metricsAddr)
	// Stop the servers and wait for them before ns.Close (deferred earlier,
	// so run later): a scrape in flight reads the kernel's counters.
	defer func() { stopHTTP(); waitHTTP() }()
	if err != nil {
		log.Error("http", "err", err)
		return 1
	}
	if src := parts.Source; src.Mode() != "standalone" {
		log.Info("netseg-agent starting", "mode", src.Mode(), "apiServer", src.Name(), "node", f.kube.NodeName, "socket", f.cfg.Socket, "stateDir", f.cfg.StateDir)
	} else {
		log.Info("netseg-agent starting", "mode", "standalone", "policyDir", f.cfg.PolicyDir, "socket", f.cfg.Socket, "stateDir", f.cfg.StateDir)
	}
	if err := a.Run(ctx); err != nil {
		log.Error("agent stopped", "err", err)
		return 1
	}
	log.Info("netseg-agent stopped; rules stay in the kernel")
	return 0
}

func installCNI(f *flags, log *slog.Logger) int {
	if f.uninstallCNI {
		if err := cniconf.Uninstall(f.cni); err != nil {
			log.Error("uninstall CNI plugin", "err", err)
			return 1
		}
		log.Info("removed netseg from the CNI configuration", "confDir", f.cni.ConfDir, "binDir", f.cni.BinDir)
		return 0
	}
	f.cni.Entry = cniEntry(f)
	path, err := cniconf.Install(f.cni)
	if err != nil {
		log.Error("install CNI plugin", "err", err)
		return 1
	}
	log.Info("chained netseg last in the node's network configuration", "file", path, "plugin", f.cni.BinDir+"/netseg")
	return 0
}

// cniEntry is netseg's entry in the node's conflist.
func cniEntry(f *flags) map[string]any {
	return map[string]any{"socket": f.cfg.Socket, "failurePolicy": "closed"}
}

func kubeSource(f *flags, log *slog.Logger) (*kube.Source, error) {
	rc, err := kube.RESTConfig(f.kubeconfig)
	if err != nil {
		return nil, err
	}
	return kube.New(f.kube, rc, log)
}
