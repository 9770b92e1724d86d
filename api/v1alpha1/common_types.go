package v1alpha1

// Action is what a zone default or a ZonePolicy rule does with a connection.
type Action string

// Actions. Delegate is valid in ZonePolicy rules only.
const (
	ActionAllow    Action = "Allow"
	ActionDeny     Action = "Deny"
	ActionDelegate Action = "Delegate"
)

// Mode says whether an object's denies are enforced or only logged.
// +kubebuilder:validation:Enum=Enforce;Monitor
type Mode string

// Modes. In Monitor mode, denies become would-deny: logged, not enforced.
const (
	ModeEnforce Mode = "Enforce"
	ModeMonitor Mode = "Monitor"
)

// Protocol is an L4 protocol that carries ports.
// +kubebuilder:validation:Enum=TCP;UDP;SCTP
type Protocol string

// Protocols.
const (
	ProtocolTCP  Protocol = "TCP"
	ProtocolUDP  Protocol = "UDP"
	ProtocolSCTP Protocol = "SCTP"
)

// PortRange is one port, or a range of ports when EndPort is set, of one
// protocol.
// +kubebuilder:validation:XValidation:rule="!has(self.endPort) || self.endPort >= self.port",message="endPort must be >= port"
type PortRange struct {
	// Protocol defaults to TCP.
	// +optional
	// +kubebuilder:default=TCP
	Protocol Protocol `json:"protocol,omitempty"`
	// Port is the first (or only) port.
	// +required
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
	// EndPort, when set, makes the range Port..EndPort inclusive.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	EndPort *int32 `json:"endPort,omitempty"`
}

// Condition types used in the status of every kind.
const (
	// ConditionReady is True when the object is valid and compiled into the
	// rules of every node.
	ConditionReady = "Ready"
)
