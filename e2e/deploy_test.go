package e2e_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/netseg/netseg/e2e/controlplane"
)

// TestDeployManifests applies every manifest of deploy/ (the kustomize
// layout and the uninstall one) to a real kube-apiserver with server-side
// dry-run: the API server validates each object (schemas, the CRDs,
// RBAC), without creating them. The namespace and the CRDs, which later
// objects need to exist, are created for real first.
func TestDeployManifests(t *testing.T) {
	cp := controlplane.Start(t)
	c := cp.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp.Apply("../deploy/agent/namespace.yaml")
	cp.InstallCRDs("../deploy/crds")
	total := 0
	for _, dir := range []string{"../deploy", "../deploy/uninstall"} {
		for _, res := range kustomizeResources(t, dir) {
			objs, err := controlplane.ReadObjects(filepath.Join(dir, res))
			if err != nil {
				t.Fatalf("%s: %v", res, err)
			}
			for _, o := range objs {
				o.SetManagedFields(nil)
				err := c.Apply(ctx, client.ApplyConfigurationFromUnstructured(o), client.DryRunAll, client.ForceOwnership, client.FieldOwner("netseg-e2e"))
				if err != nil {
					t.Errorf("%s: %s %s: server-side dry-run apply: %v", filepath.Join(dir, res), o.GetKind(), o.GetName(), err)
					continue
				}
				total++
			}
		}
	}
	if total < 10 {
		t.Fatalf("only %d objects applied", total)
	}
	t.Logf("%d objects accepted by the API server (server-side dry-run)", total)
}

// kustomizeResources lists a kustomization's resources (file paths).
func kustomizeResources(t *testing.T, dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var k struct {
		Resources []string `json:"resources"`
	}
	if err := yaml.Unmarshal(b, &k); err != nil {
		t.Fatalf("%s/kustomization.yaml: %v", dir, err)
	}
	if len(k.Resources) == 0 {
		t.Fatalf("%s/kustomization.yaml lists no resources", dir)
	}
	return k.Resources
}
