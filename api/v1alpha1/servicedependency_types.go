package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ServiceDependencySpec lists what a workload needs to reach.
type ServiceDependencySpec struct {
	// Workload selects the client endpoints in this namespace.
	// +required
	Workload metav1.LabelSelector `json:"workload"`
	// DependsOn are the destinations the workload needs.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	DependsOn []Dependency `json:"dependsOn"`
}

// Dependency is one destination: a Service, a workload or a CIDR.
// +kubebuilder:validation:XValidation:rule="[has(self.service), has(self.workload), has(self.cidr)].filter(x, x).size() == 1",message="exactly one of service, workload or cidr must be set"
type Dependency struct {
	// Name identifies the dependency in status, flow logs and explanations.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// Service is a Kubernetes Service: the endpoints it selects.
	// +optional
	Service *ServiceRef `json:"service,omitempty"`
	// Workload selects endpoints by labels in a namespace.
	// +optional
	Workload *WorkloadRef `json:"workload,omitempty"`
	// CIDR is a network outside the cluster.
	// +optional
	// +kubebuilder:validation:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.0.0.0/8"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="must be a network address, without host bits (10.0.0.0/8, not 10.0.0.5/8)"
	CIDR string `json:"cidr,omitempty"`
	// Ports the workload connects to; empty means the Service's ports for
	// a service, and every protocol and port otherwise.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Ports []PortRange `json:"ports,omitempty"`
}

// ServiceRef names a Service.
type ServiceRef struct {
	// Namespace defaults to the ServiceDependency's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
	// Name is the Service's name.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// WorkloadRef selects endpoints by labels in one namespace.
type WorkloadRef struct {
	// Namespace defaults to the ServiceDependency's namespace.
	// +optional
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace,omitempty"`
	// The label selector; an empty one selects every endpoint of the
	// namespace.
	metav1.LabelSelector `json:",inline"`
}

// DependencyState says whether the zone rules let a dependency through.
// +kubebuilder:validation:Enum=Allowed;Blocked
type DependencyState string

// Dependency states.
const (
	DependencyAllowed DependencyState = "Allowed"
	DependencyBlocked DependencyState = "Blocked"
)

// DependencyStatus is the observed state of one dependency.
type DependencyStatus struct {
	// Name is the dependency's name.
	Name string `json:"name"`
	// State is Allowed, or Blocked when a ZonePolicy rule denies it.
	// +optional
	State DependencyState `json:"state,omitempty"`
	// BlockedBy names the rule that blocks it, e.g. "ZonePolicy/x rule y".
	// +optional
	BlockedBy string `json:"blockedBy,omitempty"`
	// LastSeen is when a connection for this dependency was last seen.
	// +optional
	LastSeen *metav1.Time `json:"lastSeen,omitempty"`
}

// ServiceDependencyStatus is the observed state of a ServiceDependency.
type ServiceDependencyStatus struct {
	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Dependencies is the state of each dependency.
	// +optional
	// +listType=map
	// +listMapKey=name
	Dependencies []DependencyStatus `json:"dependencies,omitempty"`
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// ServiceDependency declares the destinations a workload needs.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Namespaced,shortName=sdep
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ServiceDependency struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ServiceDependencySpec   `json:"spec"`
	Status ServiceDependencyStatus `json:"status,omitempty"`
}

// ServiceDependencyList is a list of ServiceDependencies.
//
// +kubebuilder:object:root=true
type ServiceDependencyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ServiceDependency `json:"items"`
}
