package e2e_test

import (
	"context"
	"strings"
	"testing"

	"github.com/netseg/netseg/e2e/controlplane"
)

// TestCRDValidation: the generated CRDs install, and the API server
// rejects invalid objects with a message naming the field.
func TestCRDValidation(t *testing.T) {
	cp := controlplane.Start(t)
	cp.InstallCRDs("../deploy/crds")
	cp.Apply("../examples/namespaces.yaml", "../examples/zones.yaml", "../examples/policies.yaml", "../examples/dependencies.yaml")
	c := cp.Client()

	const zp = "apiVersion: netseg.io/v1alpha1\nkind: ZonePolicy\nmetadata: {name: bad}\nspec:\n  rules:\n"
	const sd = "apiVersion: netseg.io/v1alpha1\nkind: ServiceDependency\nmetadata: {name: bad, namespace: shop}\nspec:\n  workload: {matchLabels: {app: x}}\n  dependsOn:\n"
	for _, tc := range []struct {
		name, yaml string
		want       []string // all must appear in the error
	}{
		{"zone bad enum", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: bad}\nspec: {defaultAction: Maybe}\n",
			[]string{"spec.defaultAction", "Unsupported value"}},
		{"zone bad admitDependencies", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: bad}\nspec: {defaultAction: Deny, admitDependencies: Nobody}\n",
			[]string{"spec.admitDependencies", "Unsupported value"}},
		{"zone bad CIDR", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: bad}\nspec: {defaultAction: Deny, cidrs: [10.0.0.0/33]}\n",
			[]string{"spec.cidrs[0]", "must be a CIDR"}},
		{"zone reserved name", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: unzoned}\nspec: {defaultAction: Deny}\n",
			[]string{"reserved"}},
		{"rule bad action", zp + "  - {name: r, action: Maybe, from: [{zone: web}], to: [{zone: web}]}\n",
			[]string{"spec.rules[0].action", "Unsupported value"}},
		{"port out of range", zp + "  - {name: r, action: Allow, from: [{zone: web}], to: [{zone: web}], ports: [{port: 70000}]}\n",
			[]string{"spec.rules[0].ports[0].port", "65535"}},
		{"endPort below port", zp + "  - {name: r, action: Allow, from: [{zone: web}], to: [{zone: web}], ports: [{port: 8000, endPort: 80}]}\n",
			[]string{"spec.rules[0].ports[0]", "endPort must be >= port"}},
		{"bad protocol", zp + "  - {name: r, action: Allow, from: [{zone: web}], to: [{zone: web}], ports: [{protocol: ICMP, port: 1}]}\n",
			[]string{"spec.rules[0].ports[0].protocol", "Unsupported value"}},
		{"duplicate rule names", zp + "  - {name: r, action: Allow, from: [{zone: web}], to: [{zone: web}]}\n  - {name: r, action: Deny, from: [{zone: web}], to: [{zone: web}]}\n",
			[]string{"spec.rules[1]", "Duplicate value"}},
		{"dependency with two targets", sd + "  - {name: d, cidr: 10.0.0.0/8, workload: {matchLabels: {app: other}}}\n",
			[]string{"spec.dependsOn[0]", "exactly one of service, workload or cidr"}},
		{"dependency bad CIDR", sd + "  - {name: d, cidr: nonsense}\n",
			[]string{"spec.dependsOn[0].cidr", "must be a CIDR"}},
		{"dependency CIDR with host bits", sd + "  - {name: d, cidr: 10.0.0.5/8}\n",
			[]string{"spec.dependsOn[0].cidr", "without host bits"}},
		{"dependency IPv4-mapped CIDR", sd + "  - {name: d, cidr: \"::ffff:0:0/96\"}\n",
			[]string{"spec.dependsOn[0].cidr", "must be a CIDR"}},
		{"zone CIDR with host bits", "apiVersion: netseg.io/v1alpha1\nkind: Zone\nmetadata: {name: bad}\nspec: {defaultAction: Deny, cidrs: [192.168.1.1/24]}\n",
			[]string{"spec.cidrs[0]", "without host bits"}},
		{"duplicate dependency names", sd + "  - {name: d, cidr: 10.0.0.0/8}\n  - {name: d, cidr: 10.1.0.0/16}\n",
			[]string{"spec.dependsOn[1]", "Duplicate value"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := controlplane.DecodeObjects([]byte(tc.yaml))
			if err != nil || len(objs) != 1 {
				t.Fatalf("test YAML: %v", err)
			}
			err = c.Create(context.Background(), objs[0])
			if err == nil {
				t.Fatalf("created an invalid %s; want it rejected", objs[0].GetKind())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Fatalf("error does not say %q:\n%v", w, err)
				}
			}
			t.Logf("rejected: %v", err)
		})
	}
}
