package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netseg/netseg/controller/flowlog"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/dataplane/flows"
)

// FlowConfig configures the flow log (off when FlowLog is "").
type FlowConfig struct {
	// FlowLog is the flow log's path ("-" for stdout); AlertLog the alert
	// log's (default: FlowLog's directory, alerts.log; "" with FlowLog
	// "-" means stdout too).
	FlowLog, AlertLog string
	// MaxBytes rotates a log file when it grows past it; Keep is how many
	// rotated files are kept. Defaults 100 MB and 5.
	MaxBytes int64
	Keep     int
	// Interval of interim records, denied aggregates, losses and alert
	// updates. Default 60s.
	Interval time.Duration
	// Node names this node in the records.
	Node string
}

// flowLog runs the readers and the pipeline.
type flowLog struct {
	pipe            *flowlog.Pipeline
	nl              *flows.NFLOG
	ct              *flows.Conntrack
	flowOut, alerts *flowlog.LogFile
	cancel          context.CancelFunc
	wg              sync.WaitGroup
}

// startFlows opens the NFLOG and conntrack readers in the node's namespace
// and starts the pipeline. The resolver is set after every sync.
func (a *Agent) startFlows(ctx context.Context) (*flowLog, error) {
	fc := a.cfg.Flows
	if fc.FlowLog == "" {
		return nil, nil
	}
	fd := a.kernel.Fd()
	if err := flows.EnableAccounting(fd); err != nil {
		return nil, fmt.Errorf("flow log: %w", err)
	}
	f := &flowLog{}
	var err error
	if f.flowOut, err = flowlog.OpenLog(fc.FlowLog, fc.MaxBytes, fc.Keep); err != nil {
		return nil, fmt.Errorf("flow log: %w", err)
	}
	if f.alerts, err = flowlog.OpenLog(fc.AlertLog, fc.MaxBytes, fc.Keep); err != nil {
		f.flowOut.Close()
		return nil, fmt.Errorf("alert log: %w", err)
	}
	if f.nl, err = flows.OpenNFLOG(fd, flows.NFLOGConfig{Group: a.cfg.Dataplane.NFLOGGroup}); err != nil {
		f.close()
		return nil, fmt.Errorf("flow log: %w", err)
	}
	if f.ct, err = flows.OpenConntrack(fd, flows.ConntrackConfig{}); err != nil {
		f.close()
		return nil, fmt.Errorf("flow log: %w", err)
	}
	empty := flowlog.NewPolicyResolver(policy.Compile(policy.Input{}), nil, nil)
	pcfg := flowlog.Config{Node: fc.Node, FlowInterval: fc.Interval}
	pcfg.OnRecord = a.onRecord
	pcfg.OnWriteError = func(err error) {
		if err != nil {
			a.log.Error("flow log: writing failed; records are dropped and counted (lost, write-error) until it works again", "err", err)
		} else {
			a.log.Info("flow log: writing works again")
		}
		a.mu.Lock()
		a.logErr = err
		a.mu.Unlock()
	}
	f.pipe = flowlog.New(pcfg, f.flowOut, f.alerts, empty,
		flowlog.Sources{Dump: f.ct.Dump, Counters: a.dp.CounterValues, Overflows: flowlog.ReaderOverflows(f.nl, f.ct)})
	a.metrics.Registry.MustRegister(f.pipe.Collectors()...)
	pctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f.cancel = cancel
	f.wg.Add(3)
	failures := a.metrics.registerFlowReaderErrors()
	go func() { defer f.wg.Done(); a.readerStopped("nflog", f.nl.Run(f.pipe.Packets), failures) }()
	go func() { defer f.wg.Done(); a.readerStopped("conntrack", f.ct.Run(f.pipe.Conns), failures) }()
	go func() { defer f.wg.Done(); _ = f.pipe.Run(pctx) }()
	a.log.Info("flow log on", "flowLog", fc.FlowLog, "alertLog", fc.AlertLog, "nflogGroup", a.cfg.Dataplane.NFLOGGroup)
	return f, nil
}

// readerStopped records a flow reader that ended with an error: logged,
// counted, and shown by netsegctl status until the agent restarts.
func (a *Agent) readerStopped(name string, err error, failures prometheus.Counter) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	a.log.Error("flow reader stopped; the flow log misses records until the agent restarts", "reader", name, "err", err)
	failures.Inc()
	a.mu.Lock()
	if a.readerErr == nil {
		a.readerErr = map[string]error{}
	}
	a.readerErr[name] = fmt.Errorf("flow reader %s stopped: %w", name, err)
	a.mu.Unlock()
}

// stop closes the readers first, then lets the pipeline write what it
// holds (denied aggregates, losses, alert updates), then closes the logs.
func (f *flowLog) stop() {
	if f == nil {
		return
	}
	f.nl.Close()
	f.ct.Close()
	f.cancel()
	f.wg.Wait()
	f.flowOut.Close()
	f.alerts.Close()
}

func (f *flowLog) close() {
	if f.nl != nil {
		f.nl.Close()
	}
	if f.ct != nil {
		f.ct.Close()
	}
	if f.flowOut != nil {
		f.flowOut.Close()
	}
	if f.alerts != nil {
		f.alerts.Close()
	}
}

// setResolver gives the pipeline the policy and endpoints of a sync
// (remote: the snapshot's endpoints of other nodes; local: this node's).
func (f *flowLog) setResolver(c *policy.Compiled, remote, local []policy.Endpoint) {
	if f == nil || c == nil {
		return
	}
	var ips []netip.Addr
	for _, ep := range local {
		ips = append(ips, ep.IPs...)
	}
	all := append(append([]policy.Endpoint(nil), remote...), local...)
	f.pipe.SetResolver(flowlog.NewPolicyResolver(c, all, ips))
}
