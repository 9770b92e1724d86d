package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func runCmd(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestValidateExamples(t *testing.T) {
	code, out, errOut := runCmd("validate", "-f", "../../examples")
	if code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", code, errOut)
	}
	want := "ok: 5 zones, 3 zone policies (7 rules), 3 service dependencies (6 entries), 4 namespaces; 1 warning\n"
	if out != want {
		t.Errorf("stdout = %q, want %q", out, want)
	}
	if !strings.Contains(errOut, "warning: ../../examples/dependencies.yaml: document 1 (ServiceDependency shop/checkout): spec.dependsOn[0].service: service pay/payments not found") {
		t.Errorf("stderr lacks the unresolved service warning:\n%s", errOut)
	}
}

func TestValidateErrors(t *testing.T) {
	dir := t.TempDir()
	data := "apiVersion: netseg.io/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\nspec:\n  rules:\n" +
		"  - {name: a, action: Allow, from: [{zone: web}], to: [{zone: '*'}], ports: [{port: 8000, endPort: 7000}]}\n" +
		"---\napiVersion: netseg.io/v1alpha1\nkind: ZonePolicy\nmetadata: {name: q}\nspec:\n  rules:\n" +
		"  - {name: a, action: Allow, from: [{zone: web}], to: [{zone: '*'}]}\n"
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCmd("validate", "-f", dir)
	if code != 1 || out != "" {
		t.Fatalf("exit %d, stdout %q", code, out)
	}
	got := strings.Split(strings.TrimSpace(strings.ReplaceAll(errOut, dir+"/", "")), "\n")
	want := []string{
		"error: p.yaml: document 1 (ZonePolicy p): spec.rules[0].ports[0].endPort: must be >= port (8000)",
		`error: p.yaml: document 2 (ZonePolicy q): spec.rules[0].from[0].zone: zone "web" does not exist`,
		"invalid: 2 errors; loaded 0 zones, 1 zone policies (1 rules), 0 service dependencies (0 entries), 0 namespaces; 0 warnings",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("stderr (-want +got):\n%s", diff)
	}
}

func TestExplain(t *testing.T) {
	base := []string{"explain", "--policy-dir", "../../examples"}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"--from", "shop/checkout", "--from-labels", "app=checkout", "--to", "pay/payments", "--to-labels", "app=payments", "--port", "8443/TCP"},
			"shop/checkout -> pay/payments 8443/TCP: allowed (expected) by ServiceDependency shop/checkout entry payments-pods; zones web -> payments\n"},
		{[]string{"--from", "shop/checkout", "--from-labels", "app=checkout", "--to", "pay/payments", "--port", "22/tcp"},
			"shop/checkout -> pay/payments 22/TCP: denied (unexpected) by ZonePolicy payments-perimeter rule nothing-else-into-payments; zones web -> payments\n"},
		{[]string{"--from", "shop/checkout", "--from-labels", "app=checkout", "--to", "203.0.113.0/25", "--port", "443"},
			"shop/checkout -> 203.0.113.0 443/TCP: allowed (expected) by ServiceDependency shop/checkout entry card-network; zones web -> partners\n"},
		{[]string{"--from", "ops/monitoring", "--to", "web/frontend", "--port", "ICMP"},
			"ops/monitoring -> web/frontend ICMP: denied (unexpected) by ZoneDefault ops -> web; zones ops -> web\n"},
		{[]string{"--from", "ops/monitoring", "--to", "192.0.2.1", "--port", "ICMP"},
			"ops/monitoring -> 192.0.2.1 ICMP: would-deny (unexpected; passes, but a staged rule denies it) by ZoneDefault ops -> unzoned; zones ops -> unzoned\n"},
		{[]string{"--from", "ops/monitoring", "--to", "192.0.2.1", "--port", "22/TCP"},
			"ops/monitoring -> 192.0.2.1 22/TCP: would-deny (unexpected; passes, but a staged rule denies it) by ZonePolicy ops-lockdown rule no-ssh-from-ops; zones ops -> unzoned\n"},
	}
	for _, tc := range tests {
		code, out, errOut := runCmd(append(base, tc.args...)...)
		if code != 0 || out != tc.want {
			t.Errorf("explain %v: exit %d\n got: %s want: %s stderr: %s", tc.args, code, out, tc.want, errOut)
		}
	}
}

func TestExplainJSON(t *testing.T) {
	code, out, errOut := runCmd("explain", "--policy-dir", "../../examples", "--from", "ops/monitoring",
		"--to", "pay/payments", "--port", "22/TCP", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var got map[string]any
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	origin := got["origin"].(map[string]any)
	if got["verdict"] != "denied" || got["expected"] != false || origin["kind"] != "ZonePolicy" ||
		origin["name"] != "payments-perimeter" || origin["rule"] != "nothing-else-into-payments" ||
		got["srcZone"] != "ops" || got["dstZone"] != "payments" {
		t.Errorf("unexpected JSON:\n%s", out)
	}
}

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		in   string // expected in stdout+stderr
	}{
		{nil, 2, "Usage:"},
		{[]string{"help"}, 0, "netsegctl validate -f DIR"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"validate", "--help"}, 0, "Usage: netsegctl validate -f DIR"},
		{[]string{"validate"}, 2, "Usage: netsegctl validate"},
		{[]string{"explain", "--help"}, 0, "-from-labels"},
		{[]string{"explain", "--policy-dir", ".", "--from", "nope", "--to", "a/b", "--port", "80"}, 2, `--from: peer "nope"`},
		{[]string{"explain", "--policy-dir", ".", "--from", "a/b", "--to", "a/b", "--port", "80/ICMPX"}, 2, "--port:"},
		{[]string{"explain", "--policy-dir", "/nonexistent", "--from", "a/b", "--to", "a/b", "--port", "80"}, 1, "load policy directory /nonexistent"},
	} {
		code, out, errOut := runCmd(tc.args...)
		if code != tc.code || !strings.Contains(out+errOut, tc.in) {
			t.Errorf("%v: exit %d, want %d; output lacks %q:\n%s%s", tc.args, code, tc.code, tc.in, out, errOut)
		}
	}
}
