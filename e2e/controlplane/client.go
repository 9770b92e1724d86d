package controlplane

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/v1alpha1"
)

// Scheme holds client-go's types, apiextensions/v1 and netseg's API.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, v1alpha1.AddToScheme} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("controlplane: build scheme: %v", err)) // static registrations: cannot fail
		}
	}
	return s
}

// RESTConfig returns the admin's client configuration.
func (cp *ControlPlane) RESTConfig() *rest.Config {
	cp.t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		cp.t.Fatalf("controlplane: %v", err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	return cfg
}

// Client returns an admin client with Scheme.
func (cp *ControlPlane) Client() client.Client {
	cp.t.Helper()
	c, err := client.New(cp.RESTConfig(), client.Options{Scheme: Scheme()})
	if err != nil {
		cp.t.Fatalf("controlplane: client: %v", err)
	}
	return c
}

// Apply creates (or updates) every object of the YAML files, in order.
func (cp *ControlPlane) Apply(files ...string) {
	cp.t.Helper()
	c := cp.Client()
	for _, f := range files {
		objs, err := ReadObjects(f)
		if err != nil {
			cp.t.Fatalf("controlplane: %v", err)
		}
		for _, o := range objs {
			if err := CreateOrUpdate(context.Background(), c, o); err != nil {
				cp.t.Fatalf("controlplane: apply %s %s from %s: %v", o.GetKind(), o.GetName(), f, err)
			}
		}
	}
}

// CreateOrUpdate creates o, or replaces the spec of the existing object.
func CreateOrUpdate(ctx context.Context, c client.Client, o *unstructured.Unstructured) error {
	err := c.Create(ctx, o.DeepCopy())
	if !apierrors.IsAlreadyExists(err) {
		return err
	}
	cur := &unstructured.Unstructured{}
	cur.SetGroupVersionKind(o.GroupVersionKind())
	if err := c.Get(ctx, client.ObjectKeyFromObject(o), cur); err != nil {
		return err
	}
	o = o.DeepCopy()
	o.SetResourceVersion(cur.GetResourceVersion())
	return c.Update(ctx, o)
}

// InstallCRDs applies the CRD manifests in dir (deploy/crds) and waits
// until the API server serves them.
func (cp *ControlPlane) InstallCRDs(dir string) {
	cp.t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		cp.t.Fatalf("controlplane: no CRDs in %s (%v)", dir, err)
	}
	cp.Apply(files...)
	c := cp.Client()
	deadline := time.Now().Add(30 * time.Second)
	for _, f := range files {
		objs, _ := ReadObjects(f)
		for _, o := range objs {
			for {
				crd := &apiextensionsv1.CustomResourceDefinition{}
				if err := c.Get(context.Background(), client.ObjectKeyFromObject(o), crd); err == nil && established(crd) {
					break
				}
				if time.Now().After(deadline) {
					cp.t.Fatalf("controlplane: CRD %s not established after 30s", o.GetName())
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	}
	// Discovery (and so the RESTMapper of a new client) lags a little
	// behind Established: wait until a list works.
	for _, l := range []client.ObjectList{&v1alpha1.ZoneList{}, &v1alpha1.ZonePolicyList{}, &v1alpha1.ServiceDependencyList{}} {
		for {
			if err := cp.Client().List(context.Background(), l); err == nil {
				break
			} else if time.Now().After(deadline) {
				cp.t.Fatalf("controlplane: list %T: %v", l, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func established(crd *apiextensionsv1.CustomResourceDefinition) bool {
	for _, c := range crd.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			return true
		}
	}
	return false
}

// ReadObjects reads the objects of a multi-document YAML file.
func ReadObjects(path string) ([]*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return DecodeObjects(b)
}

// DecodeObjects decodes multi-document YAML; empty documents are skipped.
func DecodeObjects(b []byte) ([]*unstructured.Unstructured, error) {
	d := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		err := d.Decode(&m)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("decode YAML: %w", err)
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}
