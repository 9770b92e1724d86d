package flowlog

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	records, lost, unexpected *prometheus.CounterVec
	writeErrors, untracked    prometheus.Counter
	nflogIgnored              prometheus.Counter
	open, denied, alerts      prometheus.Gauge
	alertsEvicted             prometheus.Counter
	alertsScanned             prometheus.Counter
	queue                     prometheus.GaugeFunc
}

func newMetrics(p *Pipeline) *metrics {
	return &metrics{
		records: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netseg_flow_records_total",
			Help: "Records written, by kind (flow, lost, alert) and verdict."}, []string{"kind", "verdict"}),
		lost: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netseg_flow_lost_total",
			Help: "Losses reported in lost records, by cause and unit."}, []string{"cause", "unit"}),
		unexpected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netseg_flow_unexpected_total",
			Help: "Unexpected connections (attempts for denied), by source zone, destination zone and verdict."},
			[]string{"src_zone", "dst_zone", "verdict"}),
		writeErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_write_errors_total",
			Help: "Records that could not be encoded or written."}),
		untracked: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_untracked_total",
			Help: "NEW events not tracked because the open-flow table was full (their final records are still written)."}),
		nflogIgnored: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_nflog_accepted_total",
			Help: "NFLOG messages of accepted connections (reported from conntrack instead)."}),
		open: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_flow_open_flows",
			Help: "Connections tracked for interim records."}),
		denied: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_flow_denied_aggregates",
			Help: "Denied 5-tuples aggregated in the current interval."}),
		alerts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "netseg_flow_alert_keys",
			Help: "Alert keys held in memory."}),
		alertsEvicted: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_alert_evictions_total",
			Help: "Alert keys forgotten to make room for a new one (the least recently seen; each was written before)."}),
		alertsScanned: prometheus.NewCounter(prometheus.CounterOpts{Name: "netseg_flow_alert_scan_keys_total",
			Help: "New alert keys of a source past its share (MaxAlertsPerSource), folded into that source's scan alert."}),
		queue: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "netseg_flow_queue_length",
			Help: "Events waiting for the pipeline."}, func() float64 { return float64(p.QueueLen()) }),
	}
}

func (m *metrics) setGauges(open, denied, alerts int) {
	m.open.Set(float64(open))
	m.denied.Set(float64(denied))
	m.alerts.Set(float64(alerts))
}

// Collectors returns the pipeline's metrics for the agent to register.
func (p *Pipeline) Collectors() []prometheus.Collector {
	m := p.m
	return []prometheus.Collector{m.records, m.lost, m.unexpected, m.writeErrors, m.untracked, m.nflogIgnored, m.open, m.denied, m.alerts, m.alertsEvicted, m.alertsScanned, m.queue}
}
