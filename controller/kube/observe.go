package kube

import (
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
)

// ReasonUnexpected is the Event reason for an unexpected connection.
const ReasonUnexpected = "UnexpectedConnection"

// lastSeenStep is the granularity of a dependency entry's lastSeen: it is
// written when it advanced by at least this much, so busy dependencies do
// not turn into a status write per connection.
const lastSeenStep = time.Minute

// usage remembers when each ServiceDependency entry was last used, as seen
// by this node's flow log.
type usage struct {
	mu   sync.Mutex
	seen map[string]time.Time // namespace/name/entry -> last use
}

// ObserveRecord acts on flow records (it runs on the flow pipeline's
// goroutine and does not block):
//   - an alert (an unexpected connection) from a pod on this node becomes a
//     Warning Event on that Pod, at most one per (destination, port,
//     verdict) every 5 minutes;
//   - a flow allowed by a ServiceDependency entry advances that entry's
//     lastSeen, written to the ServiceDependency's status.
func (s *Source) ObserveRecord(r *flow.Record) {
	switch {
	case r.Kind == flow.KindAlert && r.Src != nil && r.Src.Name != "":
		s.eventForAlert(r)
	case r.Kind == flow.KindFlow && r.Origin != nil && r.Origin.Kind == segment.OriginServiceDependency:
		key := r.Origin.Namespace + "/" + r.Origin.Name + "/" + r.Origin.Rule
		s.usage.mu.Lock()
		prev, had := s.usage.seen[key]
		if r.End.After(prev) {
			s.usage.seen[key] = r.End
		}
		s.usage.mu.Unlock()
		if !had || r.End.Sub(prev) >= lastSeenStep {
			s.kickStatus()
		}
	}
}

func (s *Source) eventForAlert(r *flow.Record) {
	if s.status == nil || !s.cfg.WriteStatus {
		return
	}
	port := r.Protocol
	if r.Dst != nil && r.Dst.Port != 0 {
		port = fmt.Sprintf("%d/%s", r.Dst.Port, r.Protocol)
	}
	origin := "no rule"
	if r.Origin != nil {
		origin = r.Origin.String()
	}
	dst := "?"
	if r.Dst != nil {
		dst = r.Dst.Workload()
		if r.Dst.Zone != "" {
			dst += " (zone " + r.Dst.Zone + ")"
		}
	}
	msg := fmt.Sprintf("unexpected %s connection to %s %s, decided by %s; %d so far",
		r.Verdict, dst, port, origin, r.Count)
	key := objKey("Pod", r.Src.Namespace, r.Src.Name) + " " + dst + " " + port + " " + r.Verdict
	// Rate limit by the connection, not the message: the count changes.
	if !s.status.shouldEvent(key, strings.SplitN(msg, ";", 2)[0]) || !s.status.allowAlertEvent(objKey("Pod", r.Src.Namespace, r.Src.Name), time.Now()) {
		return
	}
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"},
		ObjectMeta: metav1.ObjectMeta{Namespace: r.Src.Namespace, Name: r.Src.Name}}
	s.status.events.Eventf(pod, nil, corev1.EventTypeWarning, ReasonUnexpected, "Connect", "%s", msg)
}

// lastSeen returns this node's last use of a dependency entry.
func (s *Source) lastSeen(ns, name, entry string) (time.Time, bool) {
	s.usage.mu.Lock()
	defer s.usage.mu.Unlock()
	t, ok := s.usage.seen[ns+"/"+name+"/"+entry]
	return t, ok
}
