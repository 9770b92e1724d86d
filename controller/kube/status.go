package kube

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/policy"
)

// Condition reasons of the Ready condition.
const (
	// ReasonValid: the object is valid and compiled into the rules.
	ReasonValid = "Valid"
	// ReasonInvalid: the compiler found problems; the message says which.
	ReasonInvalid = "Invalid"
)

// eventInterval is the least time between two Events about one object
// with the same message, from one agent.
const eventInterval = 5 * time.Minute

// statusWriter computes every CRD's status from the cluster state and
// writes the differences. Every agent runs one; they compute the same
// status (the input is the whole cluster, not the node), so once one has
// written, the others find nothing to do. Writes carry the cached
// resourceVersion: a writer with a stale view gets a conflict, ignored.
type statusWriter struct {
	s      *Source
	c      client.Client
	events recorder.EventRecorder
	delay  time.Duration

	mu         sync.Mutex
	lastEvents map[string]eventMark // kind/ns/name -> last event
	// The caps on Events about unexpected connections: per pod, and for
	// the agent; what they held back, by cap.
	podEvents  map[string]podEventCount
	events1s   *rate.Limiter
	pruned     time.Time
	suppressed map[string]uint64
}

// The caps on alert Events: a pod gets at most podEventCap of them per
// eventInterval, and an agent sends at most eventRate a second (bursts of
// eventBurst), so a scan or a hostile pod cannot flood the API server.
const (
	podEventCap = 10
	eventRate   = 1
	eventBurst  = 30
)

type podEventCount struct {
	since time.Time
	n     int
}

type eventMark struct {
	msg string
	at  time.Time
}

func newStatusWriter(s *Source, c client.Client, ev recorder.EventRecorder) *statusWriter {
	h := fnv.New32a()
	h.Write([]byte(s.cfg.NodeName))
	// Spread the agents' writes over [delay, 2*delay): the first one's
	// write reaches the others' caches before their timers fire.
	jitter := time.Duration(h.Sum32()%1000) * s.cfg.StatusDelay / 1000
	return &statusWriter{s: s, c: c, events: ev, delay: s.cfg.StatusDelay + jitter, lastEvents: map[string]eventMark{},
		podEvents: map[string]podEventCount{}, events1s: rate.NewLimiter(eventRate, eventBurst), suppressed: map[string]uint64{}}
}

// run writes status after each kick (coalesced over the delay), and
// retries failed writes every few seconds.
func (w *statusWriter) run(ctx context.Context, kick <-chan struct{}) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-kick:
		case <-retry.C:
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.delay):
		}
		select { // kicks during the delay are included
		case <-kick:
		default:
		}
		if !w.s.synced.Load() {
			continue
		}
		if err := w.sync(ctx); err != nil {
			w.s.log.Debug("status write failed; retrying", "err", err)
			retry.Reset(3 * time.Second)
		}
	}
}

// sync compiles the whole cluster and writes every status that differs.
func (w *statusWriter) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	in, err := w.s.input(ctx, true)
	if err != nil {
		return err
	}
	c := policy.Compile(in)
	problems := map[string][]string{}
	for _, p := range c.Errors {
		problems[objKey(p.Kind, p.Namespace, p.Name)] = append(problems[objKey(p.Kind, p.Namespace, p.Name)], problemText(p))
	}
	zoneEPs := map[string]int32{}
	for _, z := range c.Zones {
		zoneEPs[z.Name] = int32(z.Endpoints)
	}
	var errs []error
	for i := range in.Zones {
		z := in.Zones[i].DeepCopy()
		want := z.Status.DeepCopy()
		want.ObservedGeneration = z.Generation
		want.Endpoints = zoneEPs[z.Name]
		msg := setReady(&want.Conditions, z.Generation, problems[objKey("Zone", "", z.Name)])
		if !equalStatus(&z.Status, want) {
			z.Status = *want
			errs = append(errs, w.write(ctx, z, "Zone", msg))
		}
	}
	for i := range in.ZonePolicies {
		p := in.ZonePolicies[i].DeepCopy()
		want := p.Status.DeepCopy()
		want.ObservedGeneration = p.Generation
		msg := setReady(&want.Conditions, p.Generation, problems[objKey("ZonePolicy", "", p.Name)])
		if !equalStatus(&p.Status, want) {
			p.Status = *want
			errs = append(errs, w.write(ctx, p, "ZonePolicy", msg))
		}
	}
	for i := range in.ServiceDependencies {
		d := in.ServiceDependencies[i].DeepCopy()
		want := d.Status.DeepCopy()
		want.ObservedGeneration = d.Generation
		want.Dependencies = dependencyStates(c, in, d, d.Status.Dependencies)
		for j := range want.Dependencies {
			st := &want.Dependencies[j]
			// lastSeen only moves forward, and by at least lastSeenStep,
			// so agents on several nodes converge instead of fighting.
			if t, ok := w.s.lastSeen(d.Namespace, d.Name, st.Name); ok &&
				(st.LastSeen == nil || t.Sub(st.LastSeen.Time) >= lastSeenStep) {
				st.LastSeen = &metav1.Time{Time: t.Truncate(time.Second)}
			}
		}
		msg := setReady(&want.Conditions, d.Generation, problems[objKey("ServiceDependency", d.Namespace, d.Name)])
		if !equalStatus(&d.Status, want) {
			d.Status = *want
			errs = append(errs, w.write(ctx, d, "ServiceDependency", msg))
		}
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// write updates obj's status. A conflict (another agent wrote first, or
// our cache is behind) and a deleted object are not errors: the watch
// brings the news and a new comparison. invalid is the Invalid message,
// "" when the object is valid.
func (w *statusWriter) write(ctx context.Context, obj client.Object, kind, invalid string) error {
	err := w.c.Status().Update(ctx, obj)
	switch {
	case apierrors.IsConflict(err) || apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return fmt.Errorf("update status of %s %s: %w", kind, client.ObjectKeyFromObject(obj), err)
	}
	w.s.log.Debug("status written", "kind", kind, "object", client.ObjectKeyFromObject(obj).String())
	if invalid != "" && w.shouldEvent(objKey(kind, obj.GetNamespace(), obj.GetName()), invalid) {
		w.events.Eventf(obj, nil, corev1.EventTypeWarning, ReasonInvalid, "Compile", "%s", invalid)
	}
	return nil
}

// shouldEvent rate-limits Events: one per object and message per
// eventInterval. Only the agent whose status write succeeded gets here, so
// a cluster sends about one Event per change, not one per node.
func (w *statusWriter) shouldEvent(key, msg string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	last, ok := w.lastEvents[key]
	if ok && last.msg == msg && time.Since(last.at) < eventInterval {
		return false
	}
	w.lastEvents[key] = eventMark{msg: msg, at: time.Now()}
	return true
}

// allowAlertEvent applies the caps on Events about unexpected connections
// to one more for pod, at now, counting what they hold back.
func (w *statusWriter) allowAlertEvent(pod string, now time.Time) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pruneLocked(now)
	c := w.podEvents[pod]
	if now.Sub(c.since) >= eventInterval {
		c = podEventCount{since: now}
	}
	switch {
	case c.n >= podEventCap:
		w.suppressed["pod"]++
		return false
	case !w.events1s.AllowN(now, 1):
		w.suppressed["agent"]++
		return false
	}
	c.n++
	w.podEvents[pod] = c
	return true
}

// pruneLocked forgets, at most once per eventInterval, the Event marks and
// pod counts older than eventInterval: they would decide nothing, and pods
// and destinations come and go.
func (w *statusWriter) pruneLocked(now time.Time) {
	if now.Sub(w.pruned) < eventInterval {
		return
	}
	w.pruned = now
	for k, m := range w.lastEvents {
		if now.Sub(m.at) >= eventInterval {
			delete(w.lastEvents, k)
		}
	}
	for k, c := range w.podEvents {
		if now.Sub(c.since) >= eventInterval {
			delete(w.podEvents, k)
		}
	}
}

// EventsSuppressed returns the alert Events the caps held back, by cap:
// "pod" (podEventCap per pod) and "agent" (eventRate).
func (s *Source) EventsSuppressed() map[string]uint64 {
	if s.status == nil {
		return nil
	}
	s.status.mu.Lock()
	defer s.status.mu.Unlock()
	return maps.Clone(s.status.suppressed)
}

func objKey(kind, ns, name string) string { return kind + "/" + ns + "/" + name }

func problemText(p policy.Problem) string {
	if p.Field != "" {
		return p.Field + ": " + p.Message
	}
	return p.Message
}

// setReady sets the Ready condition from the object's problems and returns
// the Invalid message ("" when valid).
func setReady(conds *[]metav1.Condition, gen int64, problems []string) string {
	c := metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: ReasonValid,
		Message: "valid; compiled into the rules", ObservedGeneration: gen}
	msg := ""
	if len(problems) > 0 {
		msg = strings.Join(problems, "; ")
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, ReasonInvalid, msg
	}
	meta.SetStatusCondition(conds, c) // keeps lastTransitionTime unless the status flips
	return msg
}

// equalStatus compares statuses; lastTransitionTime is set only when a
// condition flips, so two agents agree on it.
func equalStatus(a, b any) bool { return equality.Semantic.DeepEqual(a, b) }

// dependencyStates decides each entry of d for its workload and target
// with the compiled policy: Blocked when a ZonePolicy Deny rule decides
// (in the enforced pass) before the dependency is consulted. lastSeen is
// kept from the old status.
func dependencyStates(c *policy.Compiled, in policy.Input, d *v1alpha1.ServiceDependency, old []v1alpha1.DependencyStatus) []v1alpha1.DependencyStatus {
	src := representative(in, d.Namespace, &d.Spec.Workload, "workload of "+d.Name)
	var out []v1alpha1.DependencyStatus
	for _, e := range d.Spec.DependsOn {
		st := v1alpha1.DependencyStatus{Name: e.Name, State: v1alpha1.DependencyAllowed}
		for _, o := range old {
			if o.Name == e.Name {
				st.LastSeen = o.LastSeen
			}
		}
		dst, ports, ok := target(in, d.Namespace, e)
		if ok {
			for _, pr := range ports {
				dec := c.Decide(src, dst, pr.First, pr.Protocol)
				if dec.Enforced.Action == segment.Deny && dec.Enforced.Origin.Kind == segment.OriginZonePolicy {
					st.State = v1alpha1.DependencyBlocked
					st.BlockedBy = fmt.Sprintf("ZonePolicy/%s rule %s", dec.Enforced.Origin.Name, dec.Enforced.Origin.Rule)
					break
				}
			}
		}
		out = append(out, st)
	}
	return out
}

// target is a dependency entry's destination as a Decide peer, and the
// ports to try: the entry's, else the Service's; with none, ICMP (a rule
// with ports never matches it, a rule without does).
func target(in policy.Input, ns string, e v1alpha1.Dependency) (policy.Peer, []segment.PortRange, bool) {
	var ports []segment.PortRange
	for _, p := range e.Ports {
		proto, err := segment.ParseProtocol(string(p.Protocol))
		if p.Protocol == "" {
			proto, err = segment.TCP, nil
		}
		if err == nil && p.Port >= 1 && p.Port <= 65535 {
			ports = append(ports, segment.PortRange{Protocol: proto, First: uint16(p.Port), Last: uint16(p.Port)})
		}
	}
	var dst policy.Peer
	switch {
	case e.Service != nil:
		sns := e.Service.Namespace
		if sns == "" {
			sns = ns
		}
		var sel map[string]string
		for _, s := range in.Services {
			if s.Namespace == sns && s.Name == e.Service.Name {
				sel = s.Selector
				if len(ports) == 0 {
					ports = s.Ports
				}
			}
		}
		dst = representative(in, sns, &metav1.LabelSelector{MatchLabels: sel}, "service "+e.Service.Name)
	case e.Workload != nil:
		wns := e.Workload.Namespace
		if wns == "" {
			wns = ns
		}
		dst = representative(in, wns, &e.Workload.LabelSelector, "workload of entry "+e.Name)
	case e.CIDR != "":
		p, err := policy.ParseCIDR(e.CIDR)
		if err != nil {
			return dst, nil, false
		}
		dst = policy.AddrPeer(p.Addr())
	default:
		return dst, nil, false
	}
	if len(ports) == 0 {
		ports = []segment.PortRange{{Protocol: segment.ICMP}}
	}
	return dst, ports, true
}

// representative is a peer that a selector in a namespace stands for: the
// first matching pod by name if there is one, else a made-up endpoint
// with the selector's matchLabels.
func representative(in policy.Input, ns string, sel *metav1.LabelSelector, what string) policy.Peer {
	if s, err := metav1.LabelSelectorAsSelector(sel); err == nil && !s.Empty() {
		var names []string
		byName := map[string]policy.Endpoint{}
		for _, e := range in.Endpoints {
			if e.Namespace == ns && s.Matches(labels.Set(e.Labels)) {
				names = append(names, e.Name)
				byName[e.Name] = e
			}
		}
		if len(names) > 0 {
			sort.Strings(names)
			e := byName[names[0]]
			return policy.Peer(e)
		}
	}
	l := map[string]string{}
	for k, v := range sel.MatchLabels {
		l[k] = v
	}
	return policy.Peer{Namespace: ns, Name: "(" + what + ")", Labels: l}
}
