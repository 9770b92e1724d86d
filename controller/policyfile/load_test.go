package policyfile

import (
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/netseg/netseg/controller/policy"
)

func TestLoadExamples(t *testing.T) {
	p, err := Load("../../examples")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	got := p.Summary()
	want := Summary{Zones: 5, ZonePolicies: 3, Rules: 7, ServiceDependencies: 3, Dependencies: 6, Namespaces: 4}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("summary (-want +got):\n%s", diff)
	}
	c := policy.Compile(p.Input(policy.Config{}, nil, nil))
	if len(c.Errors) > 0 {
		t.Errorf("compile errors: %v", c.Errors)
	}
}

const zoneHead = "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: z}\n"
const policyHead = "apiVersion: netseg.io/v1alpha1\nkind: ZonePolicy\nmetadata: {name: p}\n"
const sdHead = "apiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata: {name: sd, namespace: shop}\n"

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       []string
	}{
		{"bad yaml", "kind: Zone\nspec: [\n", []string{"x.yaml: document 1: invalid YAML: "}},
		{"not an object", "- a\n- b\n", []string{"x.yaml: document 1: not a YAML object (want apiVersion, kind, metadata, spec)"}},
		{"unknown kind", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
			[]string{`x.yaml: document 1 (Pod p): unknown kind "Pod" of apiVersion "v1" (want Zone, ZonePolicy, ServiceDependency or Workload of netseg.io/v1alpha1, or Namespace of v1)`}},
		{"unknown field", zoneHead + "spec: {defaultAction: Deny, colour: red, podSelector: {matchLabel: {a: b}}}\n",
			[]string{"x.yaml: document 1 (Zone z): spec.colour: unknown field", "x.yaml: document 1 (Zone z): spec.podSelector.matchLabel: unknown field"}},
		{"endPort below port in the second document", zoneHead + "spec: {defaultAction: Deny}\n---\n" + policyHead +
			"spec:\n  rules:\n  - {name: a, action: Allow, from: [{zone: z}], to: [{zone: z}]}\n  - {name: b, action: Allow, from: [{zone: z}], to: [{zone: z}], ports: [{port: 8000, endPort: 80}]}\n",
			[]string{"x.yaml: document 2 (ZonePolicy p): spec.rules[1].ports[0].endPort: must be >= port (8000)"}},
		{"enum", zoneHead + "spec: {defaultAction: Maybe, mode: Audit}\n",
			[]string{`x.yaml: document 1 (Zone z): spec.defaultAction: unsupported value "Maybe": supported values: Deny, Allow`,
				`x.yaml: document 1 (Zone z): spec.mode: unsupported value "Audit": supported values: Enforce, Monitor`}},
		{"required", zoneHead + "spec: {}\n", []string{"x.yaml: document 1 (Zone z): spec.defaultAction: required"}},
		{"cidr", zoneHead + "spec: {defaultAction: Deny, cidrs: [10.0.0.1, 10.0.0.0/8, 10.0.0.0/8]}\n",
			[]string{`x.yaml: document 1 (Zone z): spec.cidrs[0]: must be a CIDR such as 10.0.0.0/8, not "10.0.0.1"`,
				`x.yaml: document 1 (Zone z): spec.cidrs[2]: duplicate value "10.0.0.0/8"`}},
		{"reserved zone name", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: unzoned}\nspec: {defaultAction: Deny}\n",
			[]string{"x.yaml: document 1 (Zone unzoned): metadata.name: the name unzoned is reserved for endpoints in no zone"}},
		{"wrong type", zoneHead + "spec: {defaultAction: Deny, priority: high}\n",
			[]string{"x.yaml: document 1 (Zone z): spec.priority: must be of type int32, not string"}},
		{"port out of range and bad protocol", policyHead + "spec:\n  rules:\n  - {name: a, action: Allow, from: [{zone: '*'}], to: [{zone: z}], ports: [{protocol: ICMP, port: 70000}]}\n",
			[]string{`x.yaml: document 1 (ZonePolicy p): spec.rules[0].ports[0].protocol: unsupported value "ICMP": supported values: TCP, UDP, SCTP`,
				"x.yaml: document 1 (ZonePolicy p): spec.rules[0].ports[0].port: must be between 1 and 65535, not 70000"}},
		{"duplicate rule names and bad action", policyHead + "spec:\n  rules:\n  - {name: a, action: Allow, from: [{zone: z}], to: [{zone: z}]}\n  - {name: a, action: Permit, from: [], to: [{zone: Z}]}\n",
			[]string{`x.yaml: document 1 (ZonePolicy p): spec.rules[1].name: duplicate rule name "a" (also spec.rules[0])`,
				`x.yaml: document 1 (ZonePolicy p): spec.rules[1].action: unsupported value "Permit": supported values: Allow, Deny, Delegate`,
				"x.yaml: document 1 (ZonePolicy p): spec.rules[1].from: required: at least one zone",
				`x.yaml: document 1 (ZonePolicy p): spec.rules[1].to[0].zone: must be a zone name or "*", not "Z"`}},
		{"dependency with two targets", sdHead + "spec:\n  workload: {}\n  dependsOn:\n  - {name: a, cidr: 192.0.2.0/24, workload: {matchLabels: {app: x}}}\n  - {name: b}\n",
			[]string{"x.yaml: document 1 (ServiceDependency shop/sd): spec.dependsOn[0]: exactly one of service, workload or cidr must be set",
				"x.yaml: document 1 (ServiceDependency shop/sd): spec.dependsOn[1]: exactly one of service, workload or cidr must be set"}},
		{"dependency without workload or namespace", "apiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata: {name: sd}\nspec:\n  dependsOn:\n  - {name: a, cidr: 192.0.2.0/33}\n",
			[]string{"x.yaml: document 1 (ServiceDependency sd): metadata.namespace: required",
				"x.yaml: document 1 (ServiceDependency sd): spec.workload: required",
				`x.yaml: document 1 (ServiceDependency sd): spec.dependsOn[0].cidr: must be a CIDR such as 10.0.0.0/8, not "192.0.2.0/33"`}},
		{"duplicate object", zoneHead + "spec: {defaultAction: Deny}\n---\n# again\n" + zoneHead + "spec: {defaultAction: Allow}\n",
			[]string{"x.yaml: document 2 (Zone z): metadata.name: Zone z is already defined in x.yaml: document 1 (Zone z)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := &Policy{}
			var got []string
			for _, e := range flatten(p.Add("x.yaml", []byte(tc.yaml))) {
				got = append(got, e.Error())
			}
			if tc.name == "bad yaml" && len(got) == 1 && strings.HasPrefix(got[0], tc.want[0]) {
				return
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("errors (-want +got):\n%s", diff)
			}
		})
	}
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func TestLocateCompileProblems(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"a-zones.yaml": zoneHead + "spec: {defaultAction: Deny, cidrs: [192.0.2.0/24]}\n---\n" +
			"apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: lab}\nspec: {defaultAction: Deny, cidrs: [192.0.2.128/25]}\n",
		"b-policy.yml": policyHead + "spec:\n  rules:\n  - {name: a, action: Allow, from: [{zone: z}], to: [{zone: nowhere}]}\n" +
			"  - {name: b, action: Deny, from: [{zone: '*'}], to: [{zone: '*'}]}\n  - {name: c, action: Allow, from: [{zone: z}], to: [{zone: lab}]}\n",
		"ignored.txt": "not yaml at all: [",
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p, err := Load(dir)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	c := policy.Compile(p.Input(policy.Config{}, nil, nil))
	var got []string
	for _, pr := range append(c.Errors, c.Warnings...) {
		got = append(got, strings.TrimPrefix(p.Locate(pr), dir+string(filepath.Separator)))
	}
	want := []string{
		"a-zones.yaml: document 1 (Zone z): spec.priority: zones lab and z have the same priority 100 and overlapping networks 192.0.2.128/25 and 192.0.2.0/24; lab wins by name",
		`b-policy.yml: document 1 (ZonePolicy p): spec.rules[0].to[0].zone: zone "nowhere" does not exist`,
		"b-policy.yml: document 1 (ZonePolicy p): spec.rules[2]: rule c is shadowed by rule b of ZonePolicy p, which matches everything it matches first",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("problems (-want +got):\n%s", diff)
	}
}

// FuzzLoad feeds arbitrary bytes to the loader and the compiler: nothing
// may panic, and what loads must compile.
func FuzzLoad(f *testing.F) {
	for _, name := range []string{"zones.yaml", "policies.yaml", "dependencies.yaml", "namespaces.yaml"} {
		data, err := os.ReadFile(filepath.Join("../../examples", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p := &Policy{}
		_ = p.Add("fuzz.yaml", data)
		c := policy.Compile(p.Input(policy.Config{}, nil, nil))
		for _, pr := range c.Errors {
			_ = p.Locate(pr)
		}
	})
}

func TestWorkloadInventory(t *testing.T) {
	p := &Policy{}
	err := p.Add("inv.yaml", []byte(`apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: checkout, namespace: shop}
spec: {podName: "checkout*", labels: {app: checkout, tier: web}}
---
apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: everything, namespace: shop}
spec: {labels: {team: shop}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ep   policy.Endpoint
		want map[string]string
		ok   bool
	}{
		{policy.Endpoint{Namespace: "shop", Name: "checkout-7"}, map[string]string{"app": "checkout", "tier": "web", "team": "shop"}, true},
		{policy.Endpoint{Namespace: "shop", Name: "checkout-7", Labels: map[string]string{"app": "given"}}, map[string]string{"app": "given", "tier": "web", "team": "shop"}, true},
		{policy.Endpoint{Namespace: "shop", Name: "redis"}, map[string]string{"team": "shop"}, true},
		{policy.Endpoint{Namespace: "web", Name: "checkout"}, nil, false},
	} {
		ep := tc.ep
		given := maps.Clone(tc.ep.Labels)
		if ok := p.Label(&ep); ok != tc.ok || !cmp.Equal(ep.Labels, tc.want, cmpopts.EquateEmpty()) {
			t.Errorf("Label(%s/%s) = %v %v, want %v %v", tc.ep.Namespace, tc.ep.Name, ok, ep.Labels, tc.ok, tc.want)
		}
		// The map passed in may be the agent's registry's: never changed.
		if !maps.Equal(tc.ep.Labels, given) {
			t.Errorf("Label(%s/%s) changed the map it was given: %v, was %v", tc.ep.Namespace, tc.ep.Name, tc.ep.Labels, given)
		}
	}
	bad := (&Policy{}).Add("bad.yaml", []byte(`apiVersion: netseg.io/v1alpha1
kind: Workload
metadata: {name: x}
spec: {podName: "[", labels: {"bad key!": v}}
`))
	for _, want := range []string{"metadata.namespace", "spec.podName", "spec.labels[bad key!]"} {
		if bad == nil || !strings.Contains(bad.Error(), "bad.yaml: document 1 (Workload x): "+want) {
			t.Errorf("bad Workload: want an error at %s, got %v", want, bad)
		}
	}
}
