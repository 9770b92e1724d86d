package node

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the agent's Prometheus metrics, on their own registry.
type Metrics struct {
	Registry     *prometheus.Registry
	SyncDuration prometheus.Histogram
	SyncErrors   prometheus.Counter
	Endpoints    prometheus.Gauge
	PolicyErrors prometheus.Counter
	DriftRepairs prometheus.Counter
	// RegistryDamaged counts registry entries that could not be read and
	// were moved aside at start.
	RegistryDamaged prometheus.Counter
	Requests        *prometheus.CounterVec
	// AcceptErrors counts accept errors of the agent socket that were
	// retried.
	AcceptErrors prometheus.Counter
	// Refused counts socket connections refused or dropped: too many open,
	// a request over the size limit, a client that sent nothing in time.
	Refused prometheus.Counter
	// Rechained counts the times the CNI configuration had dropped netseg
	// and the agent chained it again.
	Rechained prometheus.Counter
	// BrNetfilterFixed counts br_netfilter sysctls found off and set on.
	BrNetfilterFixed prometheus.Counter
	// ConntrackEntries and ConntrackMax are the node's conntrack fill.
	ConntrackEntries, ConntrackMax prometheus.Gauge
	// Revoked counts live connections cut because the policy in force
	// (or a quarantine) denies them now.
	Revoked prometheus.Counter
	// Adopted counts containers started unsegmented under failurePolicy
	// open that the agent registered afterwards.
	Adopted     prometheus.Counter
	AddToKernel prometheus.Histogram
	// Labels counts syncs in which a local endpoint's labels could not be
	// read, by what the agent did: kept the last ones, or quarantined it.
	Labels *prometheus.CounterVec
}

// NewMetrics registers the metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		SyncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netseg_sync_duration_seconds",
			Help: "Time to compile the policy and apply it to the kernel.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		SyncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_sync_errors_total",
			Help: "Syncs the kernel refused."}),
		Endpoints: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_endpoints",
			Help: "Endpoints registered on this node."}),
		PolicyErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_policy_errors_total",
			Help: "Policy loads that failed; the last good policy stayed in force."}),
		DriftRepairs: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_drift_repairs_total",
			Help: "Times the kernel ruleset differed from the desired one and was rebuilt."}),
		RegistryDamaged: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_registry_damaged_total",
			Help: "Registry entries that could not be read at start and were moved aside (endpoints-damaged in the state directory)."}),
		AcceptErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_socket_accept_errors_total",
			Help: "Accept errors of the agent socket (out of file descriptors, aborted connections), retried after a pause."}),
		BrNetfilterFixed: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_br_netfilter_fixed_total",
			Help: "Times a br_netfilter sysctl (bridge-nf-call-iptables, -ip6tables) was found off in the node and set on again; meanwhile the bridge guard dropped pod traffic bridged without policy."}),
		ConntrackEntries: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_conntrack_entries",
			Help: "Connections the node's conntrack tracks (nf_conntrack_count), read every second."}),
		ConntrackMax: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_conntrack_max",
			Help: "Connections the node's conntrack may track (nf_conntrack_max); at the limit the kernel drops new connections."}),
		Revoked: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_connections_revoked_total",
			Help: "Live connections the policy in force (or a quarantine) came to deny: their conntrack mark was rewritten and their next packets are dropped and logged."}),
		Adopted: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_cni_fail_open_adopted_total",
			Help: "Containers started unsegmented under failurePolicy open that the agent registered afterwards (their rules decide their traffic from then on)."}),
		Rechained: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_cni_rechained_total",
			Help: "Times the node's CNI configuration no longer chained netseg (the network plugin rewrote it) and the agent chained it again."}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_socket_refused_total",
			Help: "Agent socket connections refused or dropped: too many open, a request over the size limit, a client that sent nothing in time."}),
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netseg_cni_requests_total",
			Help: "Requests on the agent socket by operation and result."}, []string{"op", "result"}),
		Labels: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netseg_labels_unresolved_total",
			Help: "Times a local endpoint's labels could not be read from the policy source (the API server): kept are its last known labels, quarantined an endpoint that had none yet."}, []string{"action"}),
		AddToKernel: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "netseg_cni_add_to_kernel_seconds",
			Help: "Time from a CNI ADD reaching the agent to its rules being in the kernel.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
	}
	m.Registry.MustRegister(m.SyncDuration, m.SyncErrors, m.Endpoints, m.PolicyErrors, m.DriftRepairs, m.RegistryDamaged, m.AcceptErrors, m.Refused, m.Rechained, m.BrNetfilterFixed, m.ConntrackEntries, m.ConntrackMax, m.Revoked, m.Adopted, m.Requests, m.AddToKernel, m.Labels,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// kernelCollector exports the dataplane's in-kernel counters (log rate
// limits, spoofed, quarantined, unprogrammed, no rule matched) at scrape.
type kernelCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func (k kernelCollector) Describe(ch chan<- *prometheus.Desc) { ch <- k.desc }

func (k kernelCollector) Collect(ch chan<- prometheus.Metric) {
	values, err := k.a.dp.CounterValues()
	if err != nil {
		return // table not there yet: nothing to report
	}
	for name, v := range values {
		ch <- prometheus.MustNewConstMetric(k.desc, prometheus.CounterValue, float64(v), name)
	}
}

// RegisterKernel adds the kernel counters of a to the registry.
func (m *Metrics) RegisterKernel(a *Agent) {
	m.Registry.MustRegister(kernelCollector{a: a, desc: prometheus.NewDesc("netseg_kernel_packets_total",
		"Packets counted by netseg's named nftables counters.", []string{"counter"}, nil)})
}

// RegisterEventCaps exports what the caps on alert Events held back, by
// cap ("pod", "agent"), read from suppressed at scrape.
func (m *Metrics) RegisterEventCaps(suppressed func() map[string]uint64) {
	for _, c := range []string{"pod", "agent"} {
		m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netseg_events_suppressed_total",
			Help:        "Warning Events about unexpected connections not sent: a pod's cap (10 per 5 minutes) or the agent's rate (1/s, bursts of 30).",
			ConstLabels: prometheus.Labels{"cap": c}},
			func() float64 { return float64(suppressed()[c]) }))
	}
}

// RegisterFailOpen exports the CNI plugin's fail-open counter: the file
// <cniStateDir>/cni-fail-open the plugin increments (under a lock) each
// time it let a container start without its rules because the agent was
// unreachable and the network's failurePolicy is open.
func (m *Metrics) RegisterFailOpen(cniStateDir string) {
	path := filepath.Join(cniStateDir, "cni-fail-open")
	m.Registry.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "netseg_cni_fail_open_total",
		Help: "Containers the CNI plugin let start without rules (failurePolicy open, agent unreachable)."},
		func() float64 {
			b, err := os.ReadFile(path)
			if err != nil {
				return 0
			}
			n, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
			return n
		}))
}

// RegisterFlowReaders exports the flow readers' failures.
func (m *Metrics) registerFlowReaderErrors() prometheus.Counter {
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_reader_failures_total",
		Help: "Flow readers (NFLOG, conntrack) that stopped with an error; the flow log misses records until the agent restarts."})
	m.Registry.MustRegister(c)
	return c
}
