package demo

import (
	"context"
	"fmt"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/controller/flowquery"
)

// follow prints flow and alert records as the agent writes them, until the
// demo's cleanup.
func (d *demo) follow(ctx context.Context) {
	fctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	d.r.Cleanup(func() { cancel(); <-done; <-done })
	for _, f := range []struct {
		path, tag string
	}{{d.flowLog, "flow> "}, {d.alertLog, "alert>"}} {
		go func() {
			defer func() { done <- struct{}{} }()
			_ = flowquery.Follow(fctx, f.path, &flowquery.Filter{}, 200*time.Millisecond,
				func(r *flow.Record) { d.say("%s %s", f.tag, describe(r)) }, func(error) {})
		}()
	}
}

// describe renders a record on one line.
func describe(r *flow.Record) string {
	if r.Kind == flow.KindLost {
		return fmt.Sprintf("LOST %d %s (%s)", r.Count, r.Unit, r.Cause)
	}
	port := r.Protocol
	if r.Dst != nil && r.Dst.Port != 0 {
		port = fmt.Sprintf("%d/%s", r.Dst.Port, r.Protocol)
	}
	origin := "-"
	if r.Origin != nil {
		origin = r.Origin.String()
	}
	zone := func(e *flow.Endpoint) string {
		if e == nil {
			return "-"
		}
		return fmt.Sprintf("%s [%s]", e.Workload(), e.Zone)
	}
	if r.Kind == "alert" {
		return fmt.Sprintf("%-26s -> %-28s %-9s %-10s seen %d time(s)  %s", zone(r.Src), zone(r.Dst), port, r.Verdict, r.Count, origin)
	}
	how := "unexpected"
	if r.IsExpected() {
		how = "expected"
	}
	return fmt.Sprintf("%-26s -> %-28s %-9s %-10s %-10s %s  (%s, %d/%d bytes)", zone(r.Src), zone(r.Dst), port, r.Verdict, how,
		origin, r.Report, r.BytesToDst, r.BytesToSrc)
}
