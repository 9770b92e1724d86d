package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ZoneSpec says which endpoints and addresses belong to a zone and what
// happens to traffic into and out of it that nothing else decides.
type ZoneSpec struct {
	// Description is free text for humans.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Description string `json:"description,omitempty"`
	// NamespaceSelector selects endpoints by their namespace's labels. With
	// PodSelector, both must match.
	// +optional
	NamespaceSelector *metav1.LabelSelector `json:"namespaceSelector,omitempty"`
	// PodSelector selects endpoints by their own labels, in any namespace
	// unless NamespaceSelector is set too.
	// +optional
	PodSelector *metav1.LabelSelector `json:"podSelector,omitempty"`
	// CIDRs are networks outside the cluster that belong to the zone. They
	// apply to addresses that are not endpoints.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="must be a CIDR such as 10.0.0.0/8"
	// +kubebuilder:validation:items:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="must be a network address, without host bits (10.0.0.0/8, not 10.0.0.5/8)"
	CIDRs []string `json:"cidrs,omitempty"`
	// Priority decides between zones that select the same endpoint or
	// address: the lowest number wins; a tie is an error.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Priority int32 `json:"priority"`
	// DefaultAction applies to traffic into or out of the zone that no
	// ZonePolicy rule and no ServiceDependency decides.
	// +required
	// +kubebuilder:validation:Enum=Deny;Allow
	DefaultAction Action `json:"defaultAction"`
	// Mode Monitor logs the zone's default denies as would-deny instead of
	// enforcing them.
	// +optional
	// +kubebuilder:default=Enforce
	Mode Mode `json:"mode,omitempty"`
	// AdmitDependencies says whose ServiceDependencies may open a path
	// into the zone: Any namespace's (the default), only ZoneNamespaces
	// (the namespaces NamespaceSelector selects; with none, no namespace),
	// or None. From an endpoint of a namespace it refuses, a connection
	// into the zone that no ZonePolicy rule decides goes to the zone
	// defaults without consulting dependencies; the flow log and explain
	// then name the ZonePerimeter when it is denied. Only a network
	// engineer's ZonePolicy can open such a zone to other namespaces.
	// +optional
	// +kubebuilder:default=Any
	AdmitDependencies Admission `json:"admitDependencies,omitempty"`
}

// Admission says whose ServiceDependencies a zone admits.
// +kubebuilder:validation:Enum=Any;ZoneNamespaces;None
type Admission string

// Admissions.
const (
	AdmitAny            Admission = "Any"
	AdmitZoneNamespaces Admission = "ZoneNamespaces"
	AdmitNone           Admission = "None"
)

// ZoneStatus is the observed state of a Zone.
type ZoneStatus struct {
	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// Endpoints is the number of endpoints in the zone.
	// +optional
	Endpoints int32 `json:"endpoints,omitempty"`
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// Zone groups endpoints and external networks that share a security level.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nz
// +kubebuilder:validation:XValidation:rule="self.metadata.name != 'unzoned'",message="the name unzoned is reserved for endpoints in no zone"
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Default",type=string,JSONPath=`.spec.defaultAction`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Admits",type=string,JSONPath=`.spec.admitDependencies`,priority=1
// +kubebuilder:printcolumn:name="Endpoints",type=integer,JSONPath=`.status.endpoints`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Zone struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ZoneSpec   `json:"spec"`
	Status ZoneStatus `json:"status,omitempty"`
}

// ZoneList is a list of Zones.
//
// +kubebuilder:object:root=true
type ZoneList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Zone `json:"items"`
}
