package kube

import (
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/controller/policy"
)

// slimPod is the cache transform for Pods: it keeps only what netseg
// reads (identity, labels, node, addresses, phase), so a cluster's pods
// cost the agent little memory.
func slimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // a tombstone: leave it alone
	}
	return &corev1.Pod{
		TypeMeta: p.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID, Labels: p.Labels,
			ResourceVersion: p.ResourceVersion, DeletionTimestamp: p.DeletionTimestamp},
		Spec:   corev1.PodSpec{NodeName: p.Spec.NodeName, HostNetwork: p.Spec.HostNetwork},
		Status: corev1.PodStatus{Phase: p.Status.Phase, PodIP: p.Status.PodIP, PodIPs: p.Status.PodIPs},
	}, nil
}

// podAddrs returns a pod's addresses, or none for pods that have none of
// their own: host-network pods share the node's, and finished pods gave
// theirs back to IPAM for reuse.
func podAddrs(p *corev1.Pod) []netip.Addr {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil
	}
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a)
		}
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// podEndpoint is a pod as the compiler sees it; ok is false for pods with
// no address of their own.
func podEndpoint(p *corev1.Pod) (policy.Endpoint, bool) {
	ips := podAddrs(p)
	if len(ips) == 0 {
		return policy.Endpoint{}, false
	}
	return policy.Endpoint{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels, IPs: ips}, true
}

// podRelevant is what of a pod changes the compiled rules.
type podRelevant struct {
	labels   map[string]string
	node     string
	addrs    []netip.Addr
	deleting bool
}

func relevantPod(p *corev1.Pod) podRelevant {
	return podRelevant{labels: p.Labels, node: p.Spec.NodeName, addrs: podAddrs(p), deleting: p.DeletionTimestamp != nil}
}

func (a podRelevant) equal(b podRelevant) bool {
	if a.node != b.node || a.deleting != b.deleting || len(a.addrs) != len(b.addrs) || !equalMaps(a.labels, b.labels) {
		return false
	}
	for i := range a.addrs {
		if a.addrs[i] != b.addrs[i] {
			return false
		}
	}
	return true
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// serviceOf converts a Service. Its ports are the ports traffic reaches
// the pods on (the forward hook sees connections after kube-proxy's DNAT):
// the target ports of the spec when numeric, and the ports of the
// Service's EndpointSlices, which resolve named target ports.
func serviceOf(svc *corev1.Service, slices []discoveryv1.EndpointSlice) policy.Service {
	s := policy.Service{Namespace: svc.Namespace, Name: svc.Name, Selector: svc.Spec.Selector}
	seen := map[segment.PortRange]bool{}
	add := func(proto corev1.Protocol, port int32) {
		p, err := segment.ParseProtocol(string(proto))
		if proto == "" {
			p, err = segment.TCP, nil
		}
		if err != nil || port < 1 || port > 65535 {
			return
		}
		r := segment.PortRange{Protocol: p, First: uint16(port), Last: uint16(port)}
		if !seen[r] {
			seen[r] = true
			s.Ports = append(s.Ports, r)
		}
	}
	for _, sp := range svc.Spec.Ports {
		switch {
		case sp.TargetPort.IntValue() > 0:
			add(sp.Protocol, int32(sp.TargetPort.IntValue()))
		case sp.TargetPort.String() == "" || sp.TargetPort.String() == "0":
			add(sp.Protocol, sp.Port) // targetPort defaults to port
		}
	}
	for _, sl := range slices {
		for _, ep := range sl.Ports {
			if ep.Port == nil {
				continue
			}
			proto := corev1.ProtocolTCP
			if ep.Protocol != nil {
				proto = *ep.Protocol
			}
			add(proto, *ep.Port)
		}
	}
	sort.Slice(s.Ports, func(i, j int) bool {
		a, b := s.Ports[i], s.Ports[j]
		return a.Protocol < b.Protocol || a.Protocol == b.Protocol && a.First < b.First
	})
	return s
}
