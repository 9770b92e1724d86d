package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ZonePolicySpec is an ordered list of rules between zones.
type ZonePolicySpec struct {
	// Priority orders policies: lower first, across all ZonePolicies; ties
	// are broken by name.
	// +optional
	// +kubebuilder:default=100
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=1000000
	Priority int32 `json:"priority"`
	// Mode Monitor stages the policy: the enforced decision ignores it and
	// its denies are logged as would-deny.
	// +optional
	// +kubebuilder:default=Enforce
	Mode Mode `json:"mode,omitempty"`
	// Rules are tried in order; the first that matches decides.
	// +required
	// +listType=map
	// +listMapKey=name
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	Rules []ZoneRule `json:"rules"`
}

// ZoneRule matches connections from some zones to some zones on some ports.
type ZoneRule struct {
	// Name identifies the rule in flow logs and explanations.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// Action: Allow, Deny, or Delegate (let ServiceDependencies and then
	// the zone defaults decide).
	// +required
	// +kubebuilder:validation:Enum=Allow;Deny;Delegate
	Action Action `json:"action"`
	// From are the source zones.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	From []ZoneRef `json:"from"`
	// To are the destination zones.
	// +required
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	To []ZoneRef `json:"to"`
	// Ports restricts the rule to these ports; empty means every protocol
	// and port, ICMP included. A rule with ports never matches ICMP.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	Ports []PortRange `json:"ports,omitempty"`
}

// ZoneRef names a zone; "*" matches every endpoint and address, in a zone
// or not; "unzoned" matches those in no zone.
type ZoneRef struct {
	// Zone is a Zone's name, "unzoned" or "*".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^(\*|[a-z0-9]([-a-z0-9.]*[a-z0-9])?)$`
	Zone string `json:"zone"`
}

// ZonePolicyStatus is the observed state of a ZonePolicy.
type ZonePolicyStatus struct {
	// Conditions: Ready.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// ObservedGeneration is the generation the status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// ZonePolicy says which zones may talk to which, on which ports.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=nzp
// +kubebuilder:printcolumn:name="Priority",type=integer,JSONPath=`.spec.priority`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ZonePolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ZonePolicySpec   `json:"spec"`
	Status ZonePolicyStatus `json:"status,omitempty"`
}

// ZonePolicyList is a list of ZonePolicies.
//
// +kubebuilder:object:root=true
type ZonePolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ZonePolicy `json:"items"`
}
