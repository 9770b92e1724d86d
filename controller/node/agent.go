// Package node is netseg's node agent: it joins a policy source, the
// endpoint registry fed by the CNI plugin, the policy compiler and the
// dataplane. One loop compiles and syncs; CNI requests wait for the sync
// that includes them, so an ADD returns only once the rules are in the
// kernel.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/enforce"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/dataplane"
)

// Config configures the agent.
type Config struct {
	// PolicyDir is the standalone policy directory (YAML of the CRD kinds).
	PolicyDir string
	// StateDir keeps the endpoint registry across restarts.
	StateDir string
	// Socket is the unix socket the CNI plugin and netsegctl talk to.
	Socket string
	// NetNS is the network namespace to program: "" for the agent's own.
	NetNS string
	// Dataplane tunes the nftables ruleset.
	Dataplane dataplane.Config
	// UnzonedDefault is the default action of the implicit unzoned zone.
	UnzonedDefault segment.Action
	// EntryBudget is the dependency entries one namespace may hold
	// (policy.Config.EntryBudget; 0: the default).
	EntryBudget int
	// PollInterval is how often the policy directory is checked.
	PollInterval time.Duration
	// DriftInterval is how often the kernel is compared with the ruleset.
	DriftInterval time.Duration
	// Flows configures the flow and alert logs (off without a path).
	Flows FlowConfig
}

// Defaults fills unset fields.
func (c Config) Defaults() Config {
	if c.StateDir == "" {
		c.StateDir = "/var/lib/netseg"
	}
	if c.Socket == "" {
		c.Socket = agent.DefaultSocket
	}
	if c.UnzonedDefault == 0 {
		c.UnzonedDefault = segment.Allow
	}
	if c.PollInterval == 0 {
		c.PollInterval = 200 * time.Millisecond
	}
	if c.DriftInterval == 0 {
		c.DriftInterval = 10 * time.Second
	}
	c.Dataplane = c.Dataplane.Defaults()
	if c.Flows.FlowLog != "" && c.Flows.AlertLog == "" {
		if c.Flows.FlowLog == "-" {
			c.Flows.AlertLog = "-"
		} else {
			c.Flows.AlertLog = filepath.Join(filepath.Dir(c.Flows.FlowLog), "alerts.log")
		}
	}
	if c.Flows.MaxBytes == 0 {
		c.Flows.MaxBytes = 100 << 20
	}
	if c.Flows.Keep == 0 {
		c.Flows.Keep = 5
	}
	if c.Flows.Interval == 0 {
		c.Flows.Interval = time.Minute
	}
	if c.Flows.Node == "" {
		c.Flows.Node, _ = os.Hostname()
	}
	return c
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.EntryBudget < 0 {
		errs = append(errs, fmt.Errorf("--entry-budget %d: want 0 (the default, %d) or more", c.EntryBudget, policy.DefaultEntryBudget))
	}
	if c.UnzonedDefault != segment.Allow && c.UnzonedDefault != segment.Deny {
		errs = append(errs, fmt.Errorf("--unzoned-default %q: want Allow or Deny", c.UnzonedDefault))
	}
	if c.PollInterval < 10*time.Millisecond {
		errs = append(errs, fmt.Errorf("--poll-interval %v: want at least 10ms", c.PollInterval))
	}
	if c.DriftInterval < time.Second {
		errs = append(errs, fmt.Errorf("--drift-interval %v: want at least 1s", c.DriftInterval))
	}
	if c.Flows.Interval < time.Second {
		errs = append(errs, fmt.Errorf("--flow-interval %v: want at least 1s", c.Flows.Interval))
	}
	if c.Flows.MaxBytes < 1<<20 || c.Flows.Keep < 1 {
		errs = append(errs, fmt.Errorf("--flow-log-max-bytes %d / --flow-log-keep %d: want at least 1 MiB and 1 file", c.Flows.MaxBytes, c.Flows.Keep))
	}
	return errors.Join(errs...)
}

// Agent is the running node agent.
type Agent struct {
	cfg         Config
	log         *slog.Logger
	metrics     *Metrics
	kernel      Kernel
	dp          Dataplane
	reg         *Registry
	source      Source
	onRecord    func(*flow.Record)
	chain       func() (string, error)
	host        func() ([]string, error)
	ctFill      func() (int, int, error)
	remark      func(dataplane.Decider) (dataplane.Remarked, error)
	nodeAddrsOf func() ([]netip.Addr, error)
	failOpenDir string
	// remarkJobs holds the next remark (capacity 1, the latest wins);
	// lastRemark is the remarkKey of the last one asked for (sync loop).
	remarkJobs chan remarkJob
	// labels: the last labels read for each registered endpoint (sync
	// loop only; enrich).
	labels     map[string]knownLabels
	lastRemark string
	// adoptedAddrs (under mu) are addresses of fail-open containers
	// adopted since the last remark.
	adoptedAddrs map[netip.Addr]bool

	kick     chan struct{}
	conns    atomic.Int64  // socket connections open
	handling chan struct{} // requests being handled (capacity maxHandling)
	// policyLoaded is closed once a sync had a valid policy.
	policyLoaded chan struct{}
	loadedOnce   sync.Once
	flows        *flowLog
	handlers     sync.WaitGroup // requests being answered

	mu          sync.Mutex
	cond        *sync.Cond
	want        uint64 // changes requested
	done        uint64 // changes included in the last finished sync
	doneErr     error  // that sync's error
	compiled    *policy.Compiled
	local       []policy.Endpoint // this node's endpoints as compiled (labels completed)
	model       compileModel      // owned by the sync loop
	merged      mergedEndpoints   // owned by the sync loop
	lastSync    time.Time
	syncErr     error
	endpoints   int
	warnings    []string
	ready       bool
	readerErr   map[string]error // flow readers that stopped, by name
	serveErr    error            // the socket server stopped for good
	acceptErr   error            // the socket's accept fails now; it retries
	logErr      error            // the flow or alert log cannot be written now
	chainErr    error            // the CNI configuration does not chain netseg, and could not be fixed
	hostErr     error            // bridged traffic bypasses the forward chain, and it could not be fixed
	ctErr       error            // the conntrack table is (nearly) full: a warning, the agent stays ready
	remarkErr   error            // live connections could not be decided again
	failOpenErr error            // containers started unsegmented and not adopted yet
	nodeAddrs   []netip.Addr     // the node's own addresses (sorted): never in the catch-all
	nodeErr     error            // the node's addresses could not be read
}

// New builds an agent from its parts, for cfg. It opens nothing: the
// caller made the parts and closes them after Run.
func New(cfg Config, p Parts) (*Agent, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if p.Kernel == nil || p.Dataplane == nil || p.Registry == nil || p.Log == nil || p.Metrics == nil {
		return nil, errors.New("agent: kernel, dataplane, registry, log and metrics are required")
	}
	a := &Agent{cfg: cfg, log: p.Log, metrics: p.Metrics, kernel: p.Kernel, dp: p.Dataplane, reg: p.Registry,
		source: p.Source, onRecord: p.OnRecord, chain: p.KeepChained, host: p.CheckHost, ctFill: p.ConntrackFill, remark: p.Remark, nodeAddrsOf: p.NodeAddrs, failOpenDir: p.FailOpenDir, remarkJobs: make(chan remarkJob, 1), adoptedAddrs: map[netip.Addr]bool{}, kick: make(chan struct{}, 1),
		policyLoaded: make(chan struct{}), handling: make(chan struct{}, maxHandling)}
	a.cond = sync.NewCond(&a.mu)
	return a, nil
}

// Cleanup removes everything netseg made on this node: the nftables table,
// the registry and the socket.
func (a *Agent) Cleanup() error {
	return errors.Join(a.dp.Cleanup(), a.reg.Remove(), removeSocket(a.cfg.Socket))
}

// Run serves until ctx ends. On return the rules stay in the kernel:
// containers remain protected while the agent is down.
func (a *Agent) Run(ctx context.Context) error {
	if a.source == nil {
		return errors.New("no policy source: give a policy directory (standalone) or a Kubernetes source")
	}
	a.reconcileRegistry()
	fl, err := a.startFlows(ctx)
	if err != nil {
		return err
	}
	a.flows = fl
	defer fl.stop()
	srv, err := a.listen()
	if err != nil {
		return err
	}
	defer srv.Close()
	var wg sync.WaitGroup
	if a.nodeAddrsOf != nil {
		first := a.readNodeAddrs() // before the first sync
		wg.Go(func() { a.keepAfter(ctx, HostCheckInterval, &a.nodeErr, "warning", a.readNodeAddrs, first) })
	}
	wg.Go(func() { a.keepChained(ctx) })
	wg.Go(func() { a.keepBrNetfilter(ctx) })
	wg.Go(func() { a.watchConntrack(ctx) })
	wg.Go(func() { a.remarkLoop(ctx) })
	wg.Go(func() { a.keepAdopting(ctx) })
	wg.Go(func() { a.serve(ctx, srv) })
	wg.Go(func() { a.source.Run(ctx, func() { a.requestSync() }) })
	wg.Go(func() { a.checkDrift(ctx) })
	a.loop(ctx)
	srv.Close()
	wg.Wait()
	// Answers still being written use the dataplane: wait for them before
	// the caller closes the namespace.
	a.handlers.Wait()
	return nil
}

// reconcileRegistry drops registered endpoints whose host interface is
// gone (the container died while the agent was down); the first sync then
// removes their rules.
func (a *Agent) reconcileRegistry() {
	for _, d := range a.reg.Damaged {
		a.metrics.RegistryDamaged.Inc()
		a.log.Error("registry entry unreadable; moved aside, its endpoint stays unprogrammed until its runtime adds it again", "entry", d)
	}
	a.reg.Damaged = nil
	removed, err := a.reg.Retain(func(ep agent.Endpoint) bool {
		if ep.HostIface == "" {
			return true
		}
		ok, err := a.kernel.LinkExists(ep.HostIface)
		if err != nil {
			// Unknown is not gone: erasing a live container's
			// registration would leave it unprogrammed.
			a.log.Error("could not tell whether a registered endpoint's interface exists; kept", "id", EndpointID(ep.Attachment), "hostIface", ep.HostIface, "err", err)
			return true
		}
		return ok
	})
	if err != nil {
		a.log.Error("save registry", "err", err)
	}
	for _, ep := range removed {
		a.log.Info("removed stale endpoint", "id", EndpointID(ep.Attachment), "pod", ep.Namespace+"/"+ep.Name, "hostIface", ep.HostIface)
	}
}

// requestSync asks the loop for a sync and returns a ticket to wait on.
func (a *Agent) requestSync() uint64 {
	a.mu.Lock()
	a.want++
	t := a.want
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return t
}

// waitSynced waits until a sync that includes ticket has finished, and
// returns that sync's error.
func (a *Agent) waitSynced(ctx context.Context, ticket uint64) error {
	stop := context.AfterFunc(ctx, func() {
		a.mu.Lock()
		a.cond.Broadcast()
		a.mu.Unlock()
	})
	defer stop()
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.done < ticket {
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for the rules to reach the kernel: %w", ctx.Err())
		}
		a.cond.Wait()
	}
	return a.doneErr
}

// loop runs syncs one at a time; requests that arrive during a sync are
// folded into the next one.
func (a *Agent) loop(ctx context.Context) {
	// Deleting what syncs left behind costs the kernel an RCU grace period
	// per batch: it is done once things have been quiet for a moment.
	collect := time.NewTimer(time.Hour)
	collect.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-collect.C:
			if err := a.dp.Collect(); err != nil {
				a.log.Error("collect stale nftables objects", "err", err)
			}
			continue
		case <-a.kick:
		}
		a.mu.Lock()
		ticket := a.want
		a.mu.Unlock()
		err := a.syncOnce()
		a.mu.Lock()
		a.done, a.doneErr = ticket, err
		a.cond.Broadcast()
		a.mu.Unlock()
		if a.dp.Garbage() {
			collect.Reset(time.Second)
		}
	}
}

// checkDrift compares the kernel with the applied rules every
// DriftInterval, apart from the sync loop: reading a large table back
// takes long, and a change or a new container must not wait for it.
func (a *Agent) checkDrift(ctx context.Context) {
	drift := time.NewTicker(a.cfg.DriftInterval)
	defer drift.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-drift.C:
		}
		if diff, err := a.dp.CheckDrift(); err != nil {
			a.log.Error("drift check", "err", err)
		} else if diff != "" {
			a.metrics.DriftRepairs.Inc()
			a.log.Warn("kernel ruleset drifted; rebuilt it", "found", diff)
		}
	}
}

// syncOnce compiles the last good policy with the registered endpoints and
// makes the kernel match.
func (a *Agent) syncOnce() error {
	start := time.Now()
	snap := a.source.Snapshot()
	if !snap.Valid {
		err := errors.New("no valid policy loaded yet")
		a.setSynced(nil, err, nil, 0)
		return err
	}
	a.loadedOnce.Do(func() { close(a.policyLoaded) })
	listing := a.reg.Listing()
	eps, quarantined := listing.Endpoints, listing.Quarantined
	local, uids := a.merged.of(listing)
	var unlabelled []string
	if snap.Enrich != nil {
		local, unlabelled = a.enrich(snap.Enrich, local, uids)
	}
	compiled := a.model.compile(snap, policy.Config{UnzonedDefault: a.cfg.UnzonedDefault, EntryBudget: a.cfg.EntryBudget}, local)
	compiledAt := time.Now()
	locals := make([]segment.Endpoint, 0, len(eps))
	for _, ep := range eps {
		locals = append(locals, ep.Interface)
	}
	rs, errs := enforce.Ruleset(compiled, locals)
	a.mu.Lock()
	rs.Node = a.nodeAddrs
	a.mu.Unlock()
	for _, ep := range quarantined {
		for _, p := range ep.Interface.IPs {
			rs.Quarantine = append(rs.Quarantine, p.Addr())
		}
	}
	warnings := unlabelled
	for _, e := range errs {
		warnings = append(warnings, e.Error())
	}
	// The policy's errors (objects not compiled) and warnings (objects
	// compiled, but likely not as meant), for netsegctl status.
	for _, p := range slices.Concat(compiled.Errors, compiled.Warnings) {
		if snap.Locate != nil {
			warnings = append(warnings, snap.Locate(p))
		} else {
			warnings = append(warnings, p.String())
		}
	}
	enforcedAt := time.Now()
	err := a.dp.Sync(rs)
	a.metrics.SyncDuration.Observe(time.Since(start).Seconds())
	if err != nil {
		a.metrics.SyncErrors.Inc()
		a.log.Error("sync failed", "err", err)
	} else {
		render, commit := a.dp.LastSyncParts()
		a.log.Debug("synced", "endpoints", len(rs.Endpoints), "sets", len(rs.Sets), "took", time.Since(start),
			"compile", compiledAt.Sub(start), "ruleset", enforcedAt.Sub(compiledAt), "dataplane", time.Since(enforcedAt),
			"render", render, "commit", commit)
	}
	a.metrics.Endpoints.Set(float64(len(eps)))
	a.setSynced(compiled, err, warnings, len(eps))
	a.mu.Lock()
	a.local = local
	a.mu.Unlock()
	a.flows.setResolver(compiled, snap.Input.Endpoints, local)
	if err == nil && a.remark != nil {
		var q []netip.Addr
		for _, ep := range quarantined {
			for _, p := range ep.Interface.IPs {
				q = append(q, p.Addr().Unmap())
			}
		}
		a.mu.Lock()
		adopted := a.adoptedAddrs
		if len(adopted) > 0 {
			a.adoptedAddrs = map[netip.Addr]bool{}
		}
		a.mu.Unlock()
		if key := remarkKey(snap.Generation, q); key != a.lastRemark || len(adopted) > 0 {
			a.lastRemark = key
			qs := make(map[netip.Addr]bool, len(q))
			for _, addr := range q {
				qs[addr] = true
			}
			all := append(append([]policy.Endpoint(nil), snap.Input.Endpoints...), local...)
			a.requestRemark(remarkJob{compiled: compiled, endpoints: all, quarantined: qs, adopted: adopted})
		}
	}
	return err
}

func (a *Agent) setSynced(c *policy.Compiled, err error, warnings []string, endpoints int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if c != nil {
		a.compiled = c
	}
	a.syncErr, a.warnings, a.endpoints = err, warnings, endpoints
	a.lastSync = time.Now()
	// Ready follows the last sync: a node whose syncs fail is not ready
	// for new containers (CNI STATUS, /readyz), though its rules stay.
	a.ready = err == nil
}

// Ready reports whether a policy is in force, the kernel was synced, and
// (with KeepChained) the node's CNI configuration chains netseg.
func (a *Agent) Ready() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.readyLocked()
}

// notReadyReason says why the agent is not ready ("" when it is).
func (a *Agent) notReadyReason() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.chainErr != nil:
		return a.chainErr.Error()
	case bypassed(a.hostErr):
		return a.hostErr.Error()
	case !a.ready && a.syncErr != nil:
		return "the last sync failed: " + a.syncErr.Error()
	case !a.ready:
		return "no policy applied to the kernel yet"
	}
	return ""
}

// readyLocked is Ready with a.mu held: the last sync worked and the CNI
// chain holds netseg (or is not watched).
func (a *Agent) readyLocked() bool { return a.ready && a.chainErr == nil && !bypassed(a.hostErr) }

// bypassed reports whether the host check found that bridged traffic
// bypasses the forward chain. A check that could not run (out of file
// descriptors, say) is shown in status but does not make the agent
// unready: the last finding stands until a check says otherwise.
func bypassed(hostErr error) bool { return errors.Is(hostErr, dataplane.ErrBrNetfilterOff) }

// keepChained runs the chain check at start and every ChainCheckInterval.
func (a *Agent) keepChained(ctx context.Context) {
	if a.chain == nil {
		return
	}
	a.keep(ctx, ChainCheckInterval, &a.chainErr, "not ready", func() error {
		changed, err := a.chain()
		if err != nil {
			return fmt.Errorf("the CNI configuration does not chain netseg and could not be fixed: %w", err)
		}
		if changed != "" {
			a.metrics.Rechained.Inc()
			a.log.Warn("the network plugin's CNI configuration dropped netseg; chained it again", "file", changed)
		}
		return nil
	})
}

// readNodeAddrs reads the node's own addresses and asks for a sync when
// they changed. Until a read works, the last addresses read stand. Run
// reads them before the first sync, then every HostCheckInterval.
func (a *Agent) readNodeAddrs() error {
	addrs, err := a.nodeAddrsOf()
	if err != nil {
		return fmt.Errorf("read the node's own addresses (the fail-closed catch-all keeps the last ones read out): %w", err)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	addrs = slices.Compact(addrs)
	a.mu.Lock()
	changed := !slices.Equal(a.nodeAddrs, addrs)
	if changed {
		a.nodeAddrs = addrs
	}
	a.mu.Unlock()
	if changed {
		a.requestSync()
	}
	return nil
}

// keepBrNetfilter runs the host check at start and every HostCheckInterval.
func (a *Agent) keepBrNetfilter(ctx context.Context) {
	if a.host == nil {
		return
	}
	a.keep(ctx, HostCheckInterval, &a.hostErr, "host check", func() error {
		fixed, err := a.host()
		a.mu.Lock()
		prev := a.hostErr
		a.mu.Unlock()
		if err != nil && !bypassed(err) && bypassed(prev) {
			// The check could not run: the last finding stands.
			err = fmt.Errorf("%w (checking again failed: %v)", prev, err)
		}
		for _, name := range fixed {
			a.metrics.BrNetfilterFixed.Inc()
			a.log.Warn("br_netfilter was off: bridged traffic bypassed the forward chain (the bridge guard dropped it); set it on again", "sysctl", name)
		}
		return err
	})
}

// watchConntrack reads the conntrack table's fill every
// HostCheckInterval, exports it, and warns near the limit.
func (a *Agent) watchConntrack(ctx context.Context) {
	if a.ctFill == nil {
		return
	}
	a.keep(ctx, HostCheckInterval, &a.ctErr, "warning", func() error {
		count, limit, err := a.ctFill()
		if err != nil {
			return fmt.Errorf("conntrack fill: %w", err)
		}
		a.metrics.ConntrackEntries.Set(float64(count))
		a.metrics.ConntrackMax.Set(float64(limit))
		if limit > 0 && float64(count) >= ConntrackFullRatio*float64(limit) {
			return fmt.Errorf("the conntrack table is full (%d of %d entries): the kernel drops new connections, allowed ones too (denied ones stay denied); raise net.netfilter.nf_conntrack_max on the host or find what opens them", count, limit)
		}
		return nil
	})
}

// keep runs check at start and every interval until ctx ends, and keeps
// its error in *slot (read under a.mu). A new error is logged once, with
// what, not at every check.
func (a *Agent) keep(ctx context.Context, interval time.Duration, slot *error, what string, check func() error) {
	a.keepAfter(ctx, interval, slot, what, check, check())
}

// keepAfter is keep for a check whose first run already returned first.
func (a *Agent) keepAfter(ctx context.Context, interval time.Duration, slot *error, what string, check func() error, first error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for err := first; ; err = check() {
		a.mu.Lock()
		prev := *slot
		*slot = err
		a.mu.Unlock()
		switch {
		case err != nil && (prev == nil || prev.Error() != err.Error()):
			a.log.Error(what, "err", err)
		case err == nil && prev != nil:
			a.log.Info(what+": over", "was", prev.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// enrich completes the local endpoints' labels from the policy source.
// Labels it cannot read are never taken as none (which would compile the
// pod into unzoned, Allow by default): the endpoint keeps the labels it
// last had, or, without any, is left out of the compile, which
// quarantines it until they can be read. It returns the endpoints to
// compile and a warning for each left out; a.labels keeps the last known
// labels of the endpoints registered now, and no others.
func (a *Agent) enrich(f func(*policy.Endpoint, string) error, local []policy.Endpoint, uids []string) ([]policy.Endpoint, []string) {
	known := make(map[string]knownLabels, len(local))
	out := make([]policy.Endpoint, 0, len(local)) // local is the memo's
	var left []string
	for i, ep := range local {
		key := ep.Namespace + "/" + ep.Name
		err := f(&ep, uids[i])
		switch last, ok := a.labels[key]; {
		case err == nil:
			known[key] = knownLabels{uid: uids[i], labels: ep.Labels}
		case ok && last.uid == uids[i]:
			ep.Labels = last.labels
			known[key] = last
			a.metrics.Labels.WithLabelValues("kept").Inc()
			a.log.Warn("labels of a local endpoint could not be read; keeping its last known labels", "endpoint", key, "err", err)
		default:
			a.metrics.Labels.WithLabelValues("quarantined").Inc()
			a.log.Warn("labels of a local endpoint could not be read, and none are known; quarantined until they can be", "endpoint", key, "err", err)
			left = append(left, fmt.Sprintf("endpoint %s: labels unknown (%v): quarantined until they can be read", key, err))
			continue
		}
		out = append(out, ep)
	}
	a.labels = known
	return out, left
}

// knownLabels are an endpoint's last labels read from the policy source,
// for the pod of uid.
type knownLabels struct {
	uid    string
	labels map[string]string
}

// mergedEndpoints is compilerEndpoints of the registry's last Listing,
// kept until the registry changes: a sync that follows a policy change
// or a label read does not merge every interface of the node again.
type mergedEndpoints struct {
	from  *Listing
	local []policy.Endpoint
	uids  []string
}

// of returns l's merged endpoints and their UIDs; the caller changes
// neither slice (nor the label maps, which are the registry's).
func (m *mergedEndpoints) of(l *Listing) ([]policy.Endpoint, []string) {
	if m.from != l {
		m.local, m.uids = compilerEndpoints(l.Endpoints)
		m.from = l
	}
	return m.local, m.uids
}

// compilerEndpoints merges interfaces of one pod into one endpoint; uids
// holds each merged endpoint's pod UID. The label maps are the
// registry's: a source's Enrich replaces a map, never changes it.
func compilerEndpoints(eps []Registered) (out []policy.Endpoint, uids []string) {
	index := make(map[[2]string]int, len(eps))
	out = make([]policy.Endpoint, 0, len(eps))
	uids = make([]string, 0, len(eps))
	for _, ep := range eps {
		key := [2]string{ep.Namespace, ep.Name}
		i, ok := index[key]
		if !ok {
			i = len(out)
			index[key] = i
			out = append(out, policy.Endpoint{Namespace: ep.Namespace, Name: ep.Name, Labels: ep.Labels})
			uids = append(uids, "")
		}
		uids[i] = ep.UID
		for _, p := range ep.Interface.IPs {
			out[i].IPs = append(out[i].IPs, p.Addr())
		}
	}
	return out, uids
}
