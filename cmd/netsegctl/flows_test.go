package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/flowlog"
	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

// Test conventions: pods on 10.88.0.0/24, a partner at 203.0.113.10.
var tFlow = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)

func flowRec(i int, src, dst flow.Endpoint, verdict string, expected bool, kind segment.OriginKind) flow.Record {
	e := expected
	return flow.Record{Schema: flow.Schema, Kind: flow.KindFlow, Report: flow.ReportFinal, Node: "n1",
		Start: tFlow.Add(time.Duration(i) * time.Minute), End: tFlow.Add(time.Duration(i)*time.Minute + time.Second),
		Protocol: "TCP", Src: &src, Dst: &dst, Direction: "egress", Verdict: verdict, Expected: &e,
		Origin: &segment.Origin{ID: uint16(i), Kind: kind, Name: "p", Rule: "r"}, PacketsToDst: 3, BytesToDst: 300}
}

var (
	web     = flow.Endpoint{IP: "10.88.0.2", Port: 40000, Namespace: "shop", Name: "web-1", Zone: "web", Labels: map[string]string{"app": "web"}}
	api     = flow.Endpoint{IP: "10.88.0.3", Port: 8443, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}
	apiSSH  = flow.Endpoint{IP: "10.88.0.3", Port: 22, Namespace: "shop", Name: "api-1", Zone: "api", Labels: map[string]string{"app": "api"}}
	batch   = flow.Endpoint{IP: "10.88.0.4", Port: 41000, Namespace: "jobs", Name: "batch-7", Zone: "unzoned"}
	partner = flow.Endpoint{IP: "203.0.113.10", Port: 443, Zone: "partners"}
)

func writeLog(t *testing.T, recs ...flow.Record) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "flows.log")
	var b strings.Builder
	for _, r := range recs {
		line, _ := json.Marshal(r)
		b.Write(append(line, '\n'))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func sampleLog(t *testing.T) string {
	return writeLog(t,
		flowRec(1, web, api, "allowed", true, segment.OriginZonePolicy),
		flowRec(2, web, partner, "allowed", false, segment.OriginZoneDefault),
		flowRec(3, web, apiSSH, "would-deny", false, segment.OriginZonePolicy),
		flowRec(4, batch, api, "denied", false, segment.OriginZoneDefault),
		flowRec(5, batch, api, "allowed", false, segment.OriginZoneDefault),
		flow.Record{Schema: flow.Schema, Kind: flow.KindLost, Start: tFlow, End: tFlow.Add(time.Minute), Cause: "queue-full", Unit: "connections", Count: 2},
	)
}

// jsonStarts runs a command with -o json and returns each record's minute.
func jsonStarts(t *testing.T, args ...string) []int {
	t.Helper()
	code, out, errOut := runCmd(append(args, "-o", "json")...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got []int
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var r flow.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == flow.KindLost {
			got = append(got, -1)
			continue
		}
		got = append(got, int(r.Start.Sub(tFlow)/time.Minute))
	}
	return got
}

func TestFlowsFilters(t *testing.T) {
	path := sampleLog(t)
	tests := []struct {
		args []string
		want []int
	}{
		{nil, []int{1, 2, 3, 4, 5, -1}},
		{[]string{"--unexpected"}, []int{2, 3, 4, 5}},
		{[]string{"--from", "shop/web-1"}, []int{1, 2, 3}},
		{[]string{"--to", "zone:partners"}, []int{2}},
		{[]string{"--to", "203.0.113.0/24"}, []int{2}},
		{[]string{"--from", "10.88.0.4"}, []int{4, 5}},
		{[]string{"--port", "22/tcp"}, []int{3}},
		{[]string{"--port", "8443/udp"}, nil},
		{[]string{"--verdict", "denied"}, []int{4}},
		{[]string{"--since", tFlow.Add(3 * time.Minute).Format(time.RFC3339)}, []int{3, 4, 5}},
		{[]string{"--until", tFlow.Add(2 * time.Minute).Format(time.RFC3339)}, []int{1, 2, -1}},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			got := jsonStarts(t, append([]string{"flows", "-f", path}, tt.args...)...)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if code, _, _ := runCmd("flows", "-f", path, "--from", "nope"); code != 2 {
		t.Errorf("bad --from: exit %d, want 2", code)
	}
}

func TestFlowsTable(t *testing.T) {
	code, out, errOut := runCmd("flows", "-f", sampleLog(t), "--unexpected", "--verdict", "would-deny")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "START") ||
		!strings.Contains(lines[1], "shop/web-1 [web]") || !strings.Contains(lines[1], "shop/api-1 [api]") ||
		!strings.Contains(lines[1], "22/TCP") || !strings.Contains(lines[1], "would-deny") {
		t.Errorf("table:\n%s", out)
	}
}

func TestFlowsReadsRotatedFilesAndFollows(t *testing.T) {
	path := writeLog(t, flowRec(1, web, api, "allowed", true, segment.OriginZonePolicy))
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	l, err := flowlog.OpenLog(path, 1, 3) // rotates before every record
	if err != nil {
		t.Fatal(err)
	}
	write := func(r flow.Record) {
		b, _ := json.Marshal(r)
		if _, err := l.Write(append(b, '\n')); err != nil {
			t.Fatal(err)
		}
		if err := l.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	write(flowRec(2, web, partner, "allowed", false, segment.OriginZoneDefault))
	if got := jsonStarts(t, "flows", "-f", path); !cmp.Equal(got, []int{1, 2}) {
		t.Errorf("rotated files: got %v, want [1 2]", got)
	}

	ctx, cancel := context.WithCancel(context.Background())
	followCtx = func() (context.Context, context.CancelFunc) { return ctx, cancel }
	defer func() {
		followCtx = func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	}()
	done := make(chan []int)
	go func() { done <- jsonStarts(t, "flows", "-f", path, "--follow", "--unexpected") }()
	time.Sleep(700 * time.Millisecond) // follow starts at the end
	write(flowRec(3, web, apiSSH, "would-deny", false, segment.OriginZonePolicy))
	time.Sleep(700 * time.Millisecond)
	write(flowRec(4, batch, api, "allowed", true, segment.OriginZonePolicy))  // rotates; expected: filtered out
	write(flowRec(5, batch, api, "denied", false, segment.OriginZoneDefault)) // rotates again
	time.Sleep(1500 * time.Millisecond)
	cancel()
	got := <-done
	l.Close()
	if diff := cmp.Diff([]int{3, 5}, got); diff != "" {
		t.Errorf("follow (-want +got):\n%s", diff)
	}
}

func TestAlerts(t *testing.T) {
	f := false
	alert := flow.Record{Schema: flow.Schema, Kind: flow.KindAlert, Start: tFlow, End: tFlow.Add(time.Hour), Protocol: "TCP",
		Src: &flow.Endpoint{IP: "10.88.0.2", Namespace: "shop", Name: "web-1", Zone: "web"}, Dst: &partner, Verdict: "allowed",
		Expected: &f, Count: 7, Origin: &segment.Origin{ID: 3, Kind: segment.OriginZoneDefault, FromZone: "web", ToZone: "partners"}}
	path := writeLog(t, alert)
	code, out, errOut := runCmd("alerts", "-f", path, "--to", "zone:partners")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "shop/web-1 [web]") || !strings.Contains(out, "443/TCP") || !strings.Contains(out, " 7 ") ||
		!strings.Contains(out, "ZoneDefault web -> partners") {
		t.Errorf("alerts table:\n%s", out)
	}
	if code, out, _ := runCmd("alerts", "-f", path, "--verdict", "denied"); code != 0 || strings.Count(out, "\n") != 0 {
		t.Errorf("filtered alerts: exit %d:\n%s", code, out)
	}
}

// TestRecommend: one ServiceDependency per client workload, entries by
// destination and ports with flow counts; the output validates, and
// applied it makes the flows expected.
func TestRecommend(t *testing.T) {
	web2 := web
	web2.Name, web2.IP = "web-2", "10.88.0.5"
	path := writeLog(t,
		flowRec(1, web, api, "allowed", false, segment.OriginZoneDefault),
		flowRec(2, web2, api, "allowed", false, segment.OriginZoneDefault),
		flowRec(3, web, partner, "allowed", false, segment.OriginZoneDefault),
		flowRec(4, batch, api, "allowed", false, segment.OriginZoneDefault),
		flowRec(5, web, apiSSH, "would-deny", false, segment.OriginZonePolicy), // not allowed: no entry
		flowRec(6, web, api, "allowed", true, segment.OriginZonePolicy),        // expected: no entry
	)
	code, out, errOut := runCmd("recommend", "-f", path, "--since", "87600h")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"name: web-observed", "namespace: shop", "# 2 flows\n  - name: api", "cidr: 203.0.113.10/32",
		"- {protocol: TCP, port: 8443}  # 2 flows", "name: batch-7-observed", `pods without an "app" label: batch-7`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "port: 22") {
		t.Errorf("would-deny flow recommended:\n%s", out)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "observed.yaml"), []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := runCmd("validate", "-f", dir); code != 0 {
		t.Fatalf("recommendation does not validate:\n%s\n%s", errOut, out)
	}
	pol, err := policyfile.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	eps := []policy.Endpoint{{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		{Namespace: "shop", Name: "api-1", Labels: map[string]string{"app": "api"}}}
	c := policy.Compile(pol.Input(policy.Config{}, eps, nil))
	if d := c.Decide(policy.Peer{Namespace: "shop", Name: "web-1"}, policy.Peer{Namespace: "shop", Name: "api-1"}, 8443, segment.TCP); !d.Expected {
		t.Errorf("web-1 -> api-1:8443 still unexpected with the recommendation: %+v", d)
	}
	// With the recommendation as the current policy nothing is left.
	if code, out, errOut := runCmd("recommend", "-f", path, "--policy-dir", dir); code != 0 || strings.Contains(out, "web-observed") {
		t.Errorf("with --policy-dir: exit %d\n%s\n%s", code, out, errOut)
	}
}
