package policyfile

import (
	"fmt"
	"maps"
	"path"
	"sort"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/netseg/netseg/controller/policy"
)

// Workload is the standalone inventory kind: it gives labels to endpoints
// whose runtime cannot pass them (podman, plain CNI), by namespace and pod
// name pattern. Labels the runtime passed win over the inventory's.
//
//	apiVersion: netseg.io/v1alpha1
//	kind: Workload
//	metadata: {name: legacy-db, namespace: default}
//	spec:
//	  podName: "db-*"          # shell pattern on K8S_POD_NAME; default "*"
//	  labels: {app: db}
type Workload struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              WorkloadSpec `json:"spec"`
}

// WorkloadSpec selects pods by name pattern and gives them labels.
type WorkloadSpec struct {
	PodName string            `json:"podName,omitempty"`
	Labels  map[string]string `json:"labels"`
}

func validateWorkload(w *Workload) []fieldError {
	var errs []fieldError
	if w.Namespace == "" {
		errs = append(errs, fieldError{"metadata.namespace", "required: the namespace of the pods it labels"})
	}
	if w.Spec.PodName != "" {
		if _, err := path.Match(w.Spec.PodName, ""); err != nil {
			errs = append(errs, fieldError{"spec.podName", fmt.Sprintf("bad pattern %q: %v", w.Spec.PodName, err)})
		}
	}
	if len(w.Spec.Labels) == 0 {
		errs = append(errs, fieldError{"spec.labels", "required: at least one label"})
	}
	keys := make([]string, 0, len(w.Spec.Labels))
	for k := range w.Spec.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, msg := range validation.IsQualifiedName(k) {
			errs = append(errs, fieldError{"spec.labels[" + k + "]", "bad label key: " + msg})
		}
		for _, msg := range validation.IsValidLabelValue(w.Spec.Labels[k]) {
			errs = append(errs, fieldError{"spec.labels[" + k + "]", "bad label value: " + msg})
		}
	}
	return errs
}

// Label completes an endpoint's labels from the inventory: every Workload
// of its namespace whose pattern matches its name adds its labels, in file
// order; labels the endpoint already has are kept. The map ep had is never
// changed: added labels go into a copy. It reports whether any Workload
// matched.
func (p *Policy) Label(ep *policy.Endpoint) bool {
	matched, copied := false, false
	for _, w := range p.Workloads {
		pattern := w.Spec.PodName
		if pattern == "" {
			pattern = "*"
		}
		if w.Namespace != ep.Namespace {
			continue
		}
		if ok, _ := path.Match(pattern, ep.Name); !ok {
			continue
		}
		matched = true
		for k, v := range w.Spec.Labels {
			if _, set := ep.Labels[k]; set {
				continue
			}
			if !copied {
				// ep's map may be shared (the agent's registry): the
				// labels added go into a copy.
				ep.Labels, copied = maps.Clone(ep.Labels), true
				if ep.Labels == nil {
					ep.Labels = map[string]string{}
				}
			}
			ep.Labels[k] = v
		}
	}
	return matched
}
