// Package v1alpha1 holds the netseg.io/v1alpha1 API: Zone and ZonePolicy
// (cluster-scoped, written by network engineers) and ServiceDependency
// (namespaced, written by app teams). It imports nothing else of netseg.
//
// +kubebuilder:object:generate=true
// +groupName=netseg.io
package v1alpha1
