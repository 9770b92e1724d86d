package kube

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
)

func TestServiceOfTargetPorts(t *testing.T) {
	udp := corev1.ProtocolUDP
	p9000 := int32(9000)
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "pay", Name: "payments"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "payments"}, Ports: []corev1.ServicePort{
			{Port: 443, TargetPort: intstr.FromInt32(8443)},           // numeric target port
			{Port: 53, Protocol: corev1.ProtocolUDP},                  // target port defaults to port
			{Port: 80, TargetPort: intstr.FromString("http-metrics")}, // named: from the slices
		}}}
	slices := []discoveryv1.EndpointSlice{{Ports: []discoveryv1.EndpointPort{{Port: &p9000}, {Port: &p9000, Protocol: &udp}, {Port: nil}}}}
	got := serviceOf(svc, slices)
	want := policy.Service{Namespace: "pay", Name: "payments", Selector: map[string]string{"app": "payments"}, Ports: []segment.PortRange{
		{Protocol: segment.TCP, First: 8443, Last: 8443}, {Protocol: segment.TCP, First: 9000, Last: 9000},
		{Protocol: segment.UDP, First: 53, Last: 53}, {Protocol: segment.UDP, First: 9000, Last: 9000}}}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("serviceOf (-want +got):\n%s", d)
	}
}

func TestPodAddrs(t *testing.T) {
	running := corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}
	for _, tc := range []struct {
		name string
		pod  corev1.Pod
		want []netip.Addr
	}{
		{"running", corev1.Pod{Status: running}, []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}},
		{"podIP only", corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.2"}}, []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
		{"host network", corev1.Pod{Spec: corev1.PodSpec{HostNetwork: true}, Status: running}, nil},
		{"finished", corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodSucceeded, PodIP: "10.0.0.3"}}, nil},
	} {
		if d := cmp.Diff(tc.want, podAddrs(&tc.pod), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, d)
		}
	}
}

func TestRelevantUpdate(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "a"}, ResourceVersion: "1"},
		Status: corev1.PodStatus{PodIP: "10.0.0.1"}}
	conditionsOnly := pod.DeepCopy()
	conditionsOnly.ResourceVersion = "2"
	relabelled := pod.DeepCopy()
	relabelled.Labels = map[string]string{"app": "b"}
	zone := &v1alpha1.Zone{ObjectMeta: metav1.ObjectMeta{Generation: 1}}
	statusOnly := zone.DeepCopy()
	statusOnly.Status.Endpoints = 3
	specChange := zone.DeepCopy()
	specChange.Generation = 2
	for _, tc := range []struct {
		name     string
		old, new any
		want     bool
	}{
		{"pod resourceVersion only", pod, conditionsOnly, false},
		{"pod labels", pod, relabelled, true},
		{"zone status", zone, statusOnly, false},
		{"zone spec", zone, specChange, true},
		{"service", &corev1.Service{}, &corev1.Service{}, true},
	} {
		if got := relevantUpdate(tc.old, tc.new); got != tc.want {
			t.Errorf("%s: relevant %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestDependencyStates: an entry is Blocked by the ZonePolicy Deny rule
// that decides before it, and Allowed otherwise.
func TestDependencyStates(t *testing.T) {
	zone := func(name, segment string) v1alpha1.Zone {
		return v1alpha1.Zone{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1alpha1.ZoneSpec{DefaultAction: v1alpha1.ActionDeny,
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"segment": segment}}}}
	}
	sd := v1alpha1.ServiceDependency{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "checkout"},
		Spec: v1alpha1.ServiceDependencySpec{Workload: metav1.LabelSelector{MatchLabels: map[string]string{"app": "checkout"}},
			DependsOn: []v1alpha1.Dependency{
				{Name: "api", Service: &v1alpha1.ServiceRef{Namespace: "pay", Name: "payments"}},
				{Name: "cache", Workload: &v1alpha1.WorkloadRef{LabelSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "redis"}}},
					Ports: []v1alpha1.PortRange{{Port: 6379}}},
			}}}
	in := policy.Input{
		Zones: []v1alpha1.Zone{zone("web", "web"), zone("payments", "payments")},
		ZonePolicies: []v1alpha1.ZonePolicy{{ObjectMeta: metav1.ObjectMeta{Name: "freeze"}, Spec: v1alpha1.ZonePolicySpec{
			Rules: []v1alpha1.ZoneRule{{Name: "no-8443", Action: v1alpha1.ActionDeny, From: []v1alpha1.ZoneRef{{Zone: "web"}},
				To: []v1alpha1.ZoneRef{{Zone: "payments"}}, Ports: []v1alpha1.PortRange{{Protocol: v1alpha1.ProtocolTCP, Port: 8443}}}}}}},
		ServiceDependencies: []v1alpha1.ServiceDependency{sd},
		Namespaces:          []policy.Namespace{{Name: "shop", Labels: map[string]string{"segment": "web"}}, {Name: "pay", Labels: map[string]string{"segment": "payments"}}},
		Services: []policy.Service{{Namespace: "pay", Name: "payments", Selector: map[string]string{"app": "payments"},
			Ports: []segment.PortRange{{Protocol: segment.TCP, First: 8443, Last: 8443}}}},
	}
	got := dependencyStates(policy.Compile(in), in, &sd, nil)
	want := []v1alpha1.DependencyStatus{
		{Name: "api", State: v1alpha1.DependencyBlocked, BlockedBy: "ZonePolicy/freeze rule no-8443"},
		{Name: "cache", State: v1alpha1.DependencyAllowed},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("dependency states (-want +got):\n%s", d)
	}
}
