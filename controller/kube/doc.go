// Package kube is the agent's policy source in Kubernetes mode: it watches
// the netseg CRDs, Namespaces, Pods, Services and EndpointSlices through a
// controller-runtime manager and its informer cache, and hands the agent
// the compiler input (node.Snapshot): the CRDs, namespace labels, Services
// (selector and resolved target ports) and the pods on other nodes. Pods on
// this node are the CNI plugin's registrations; Enrich fills their labels
// from the Pod objects.
//
// It also writes the CRDs' status (Ready or Invalid with the compiler's
// reason, observedGeneration, each dependency's Allowed or Blocked) and
// Events for invalid objects. Every agent computes the same status from
// the same cluster state, compares it with what is stored, and writes only
// a difference, after a short per-node jittered delay, with optimistic
// concurrency (conflicts ignored): see docs/kubernetes.md.
//
// The RBAC markers below are the least the agent needs;
// deploy/rbac/role.yaml is generated from them (hack/generate.sh).
package kube

// +kubebuilder:rbac:groups=netseg.io,resources=zones;zonepolicies;servicedependencies,verbs=get;list;watch
// +kubebuilder:rbac:groups=netseg.io,resources=zones/status;zonepolicies/status;servicedependencies/status,verbs=update;patch
// +kubebuilder:rbac:groups="",resources=namespaces;pods;services,verbs=get;list;watch
// +kubebuilder:rbac:groups=discovery.k8s.io,resources=endpointslices,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch
