package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	toolscache "k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/api/v1alpha1"
	"github.com/netseg/netseg/controller/node"
	"github.com/netseg/netseg/controller/policy"
)

// Config configures the Kubernetes source.
type Config struct {
	// NodeName is this node's name: pods with another spec.nodeName are
	// the "endpoints on other nodes" of the snapshot.
	NodeName string
	// UnzonedDefault is the agent's default for the unzoned zone; status
	// (Blocked, endpoint counts) is computed with it. Every agent of a
	// cluster must use the same, or their statuses differ.
	UnzonedDefault segment.Action
	// EntryBudget is the dependency entries one namespace may hold
	// (policy.Config.EntryBudget); like UnzonedDefault, the same on every
	// agent.
	EntryBudget int
	// WriteStatus enables status writes and Events from this agent.
	WriteStatus bool
	// StatusDelay is how long status writes wait after a change, plus a
	// per-node jitter of up to the same again (default 500ms).
	StatusDelay time.Duration
	// Coalesce is how long change notifications are gathered before the
	// agent is told (default 10ms).
	Coalesce time.Duration
}

// Defaults fills unset fields.
func (c Config) Defaults() Config {
	if c.UnzonedDefault == 0 {
		c.UnzonedDefault = segment.Allow
	}
	if c.StatusDelay == 0 {
		c.StatusDelay = 500 * time.Millisecond
	}
	if c.Coalesce == 0 {
		c.Coalesce = 10 * time.Millisecond
	}
	return c
}

// Validate reports every problem with the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("--node-name is required in Kubernetes mode (or set NODE_NAME)"))
	}
	if c.StatusDelay < 0 || c.Coalesce < 0 {
		errs = append(errs, errors.New("delays must not be negative"))
	}
	return errors.Join(errs...)
}

// RESTConfig loads a kubeconfig file, or the in-cluster configuration
// when kubeconfig is "".
func RESTConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster configuration: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	return cfg, nil
}

// NewScheme returns a scheme of client-go's types and netseg's API; it is
// the source's own, not the global one.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("scheme: %w", err)
	}
	return s, nil
}

// Source is the Kubernetes policy source.
type Source struct {
	cfg  Config
	log  *slog.Logger
	host string
	mgr  manager.Manager
	c    client.Reader // the informer cache
	live client.Reader // the API server, for pods the cache has not seen yet

	synced     atomic.Bool
	generation atomic.Int64
	dirty      chan struct{} // policy input changed
	statusKick chan struct{} // status may need a write
	status     *statusWriter

	missMu sync.Mutex
	misses map[string]time.Time // namespace/name -> last live lookup that failed

	usage   usage    // ServiceDependency entries' last use, from the flow log
	rec     recovery // live policy reads after an API server outage
	hostURL string   // the API server's URL
}

var _ node.Source = &Source{}

// watched are the kinds the source watches.
func watched() []client.Object {
	return []client.Object{&v1alpha1.Zone{}, &v1alpha1.ZonePolicy{}, &v1alpha1.ServiceDependency{},
		&corev1.Namespace{}, &corev1.Pod{}, &corev1.Service{}, &discoveryv1.EndpointSlice{}}
}

// New builds the source's manager and cache for the API server of rc. It
// does not contact the API server: Run does.
func New(cfg Config, rc *rest.Config, log *slog.Logger) (*Source, error) {
	cfg = cfg.Defaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	// controller-runtime and client-go log through the agent's logger
	// (both are process-wide settings).
	lg := logr.FromSlogHandler(log.Handler())
	ctrllog.SetLogger(lg)
	klog.SetLogger(lg)
	rc = rest.CopyConfig(rc)
	if rc.UserAgent == "" {
		rc.UserAgent = "netseg-agent/" + cfg.NodeName
	}
	s := &Source{cfg: cfg, log: log,
		dirty: make(chan struct{}, 1), statusKick: make(chan struct{}, 1), misses: map[string]time.Time{},
		usage: usage{seen: map[string]time.Time{}}}
	mgr, err := manager.New(rc, manager.Options{
		Scheme:                 scheme,
		Logger:                 lg,
		Metrics:                metricsserver.Options{BindAddress: "0"}, // the agent serves its own
		HealthProbeBindAddress: "0",
		Cache: cache.Options{
			DefaultTransform: cache.TransformStripManagedFields(),
			ByObject:         map[client.Object]cache.ByObject{&corev1.Pod{}: {Transform: slimPod}},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("kubernetes manager: %w", err)
	}
	host := rc.Host
	if u, err := url.Parse(rc.Host); err == nil && u.Host != "" {
		host = u.Host
	}
	s.host, s.hostURL, s.mgr, s.c, s.live = host, rc.Host, mgr, mgr.GetCache(), mgr.GetAPIReader()
	s.status = newStatusWriter(s, mgr.GetClient(), mgr.GetEventRecorder("netseg-agent"))
	return s, nil
}

// Mode is "kubernetes".
func (s *Source) Mode() string { return "kubernetes" }

// Name is the API server's host.
func (s *Source) Name() string { return s.host }

// Run watches until ctx ends. The snapshot is valid once every informer
// has synced; changed is called then and after every relevant change.
// While the API server is away the cache keeps its last state (and the
// kernel its rules); the informers relist when it returns.
func (s *Source) Run(ctx context.Context, changed func()) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, obj := range watched() {
		inf, err := s.mgr.GetCache().GetInformer(ctx, obj, cache.BlockUntilSynced(false))
		if err != nil {
			s.log.Error("watch", "kind", fmt.Sprintf("%T", obj), "err", err)
			return
		}
		if _, err := inf.AddEventHandler(s.handler()); err != nil {
			s.log.Error("watch", "kind", fmt.Sprintf("%T", obj), "err", err)
			return
		}
	}
	done := make(chan error, 1)
	go func() { done <- s.mgr.Start(ctx) }()
	go func() {
		if !s.mgr.GetCache().WaitForCacheSync(ctx) {
			return
		}
		s.synced.Store(true)
		s.generation.Add(1)
		s.log.Info("kubernetes caches synced", "apiServer", s.host, "node", s.cfg.NodeName)
		s.notify()
	}()
	if s.cfg.WriteStatus {
		go s.status.run(ctx, s.statusKick)
	}
	go s.watchRecovery(ctx)
	for {
		select {
		case <-ctx.Done():
			if err := <-done; err != nil {
				s.log.Error("kubernetes manager stopped", "err", err)
			}
			return
		case err := <-done:
			s.log.Error("kubernetes manager stopped; the last known policy stays in force", "err", err)
			<-ctx.Done()
			return
		case <-s.dirty:
		}
		// Gather a burst of events into one sync.
		select {
		case <-time.After(s.cfg.Coalesce):
		case <-ctx.Done():
			continue
		}
		select {
		case <-s.dirty:
		default:
		}
		if s.synced.Load() {
			changed()
		}
	}
}

// notify marks the policy input and the status dirty.
func (s *Source) notify() {
	s.generation.Add(1)
	select {
	case s.dirty <- struct{}{}:
	default:
	}
	s.kickStatus()
}

func (s *Source) kickStatus() {
	select {
	case s.statusKick <- struct{}{}:
	default:
	}
}

// handler tells the agent about changes that can change the rules. Status
// updates of the CRDs (netseg's own writes) and pod updates that touch
// neither labels, node nor addresses only wake the status writer.
func (s *Source) handler() toolscache.ResourceEventHandler {
	return toolscache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { s.notify() },
		DeleteFunc: func(any) { s.notify() },
		UpdateFunc: func(oldObj, newObj any) {
			if relevantUpdate(oldObj, newObj) {
				s.notify()
			} else {
				s.kickStatus()
			}
		},
	}
}

func relevantUpdate(oldObj, newObj any) bool {
	switch o := oldObj.(type) {
	case *corev1.Pod:
		n, ok := newObj.(*corev1.Pod)
		return !ok || !relevantPod(o).equal(relevantPod(n))
	case *corev1.Namespace:
		n, ok := newObj.(*corev1.Namespace)
		return !ok || !equalMaps(o.Labels, n.Labels)
	case *v1alpha1.Zone, *v1alpha1.ZonePolicy, *v1alpha1.ServiceDependency:
		// metadata.generation moves with the spec only (status subresource).
		oo, ok1 := oldObj.(client.Object)
		no, ok2 := newObj.(client.Object)
		return !ok1 || !ok2 || oo.GetGeneration() != no.GetGeneration()
	}
	return true
}

// Snapshot returns the cluster as the cache holds it: the CRDs, namespace
// labels, Services and the pods on other nodes. It is not valid until the
// caches have synced.
func (s *Source) Snapshot() node.Snapshot {
	if !s.synced.Load() {
		return node.Snapshot{Err: errors.New("waiting for the Kubernetes caches to sync")}
	}
	// The generation is read before the cache: an update lands in the
	// cache before its handler bumps the generation, so the input is at
	// least as new as the generation it is reported with, and an input
	// that changes later comes with a higher one (the agent keeps its
	// compiler model while the generation stays).
	gen := s.generation.Load()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in, err := s.input(ctx, false)
	if err != nil {
		// The cache answers from memory: this is a programming error
		// (an unwatched kind), not an outage.
		return node.Snapshot{Valid: false, Err: err}
	}
	return node.Snapshot{Input: in, Valid: true, Generation: gen,
		Locate: func(p policy.Problem) string { return p.String() }, Enrich: s.Enrich}
}

// input lists the compiler input from the cache; allPods adds the pods of
// this node too (for status, which must not depend on the node).
func (s *Source) input(ctx context.Context, allPods bool) (policy.Input, error) {
	var (
		in     policy.Input
		zones  v1alpha1.ZoneList
		zps    v1alpha1.ZonePolicyList
		sds    v1alpha1.ServiceDependencyList
		nss    corev1.NamespaceList
		pods   corev1.PodList
		svcs   corev1.ServiceList
		slices discoveryv1.EndpointSliceList
	)
	for _, l := range []client.ObjectList{&zones, &zps, &sds, &nss, &pods, &svcs, &slices} {
		if err := s.c.List(ctx, l); err != nil {
			return in, fmt.Errorf("list %T from the cache: %w", l, err)
		}
	}
	if live := s.rec.current(); live != nil {
		// Just after an outage: the policy kinds from the API server.
		zones, zps, sds, nss = live.zones, live.zps, live.sds, live.nss
	}
	in.Config = policy.Config{UnzonedDefault: s.cfg.UnzonedDefault, EntryBudget: s.cfg.EntryBudget}
	in.Zones, in.ZonePolicies, in.ServiceDependencies = zones.Items, zps.Items, sds.Items
	for _, ns := range nss.Items {
		in.Namespaces = append(in.Namespaces, policy.Namespace{Name: ns.Name, Labels: ns.Labels})
	}
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == "" || !allPods && p.Spec.NodeName == s.cfg.NodeName {
			continue
		}
		if ep, ok := podEndpoint(p); ok {
			in.Endpoints = append(in.Endpoints, ep)
		}
	}
	bySvc := map[[2]string][]discoveryv1.EndpointSlice{}
	for _, sl := range slices.Items {
		if name := sl.Labels[discoveryv1.LabelServiceName]; name != "" {
			k := [2]string{sl.Namespace, name}
			bySvc[k] = append(bySvc[k], sl)
		}
	}
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		in.Services = append(in.Services, serviceOf(svc, bySvc[[2]string{svc.Namespace, svc.Name}]))
	}
	sort.Slice(in.Endpoints, func(i, j int) bool {
		a, b := in.Endpoints[i], in.Endpoints[j]
		return a.Namespace < b.Namespace || a.Namespace == b.Namespace && a.Name < b.Name
	})
	return in, nil
}

// missRetry is how often a pod the API server did not know is looked up
// again (it may be a container of another runtime, not a pod at all).
const missRetry = 10 * time.Second

// Enrich sets a local endpoint's labels from its Pod, found by namespace
// and name in the cache, or on a cache miss (a pod created moments ago)
// from the API server. A uid that does not match the Pod's means the
// registration is of an older pod of the same name: not enriched.
func (s *Source) Enrich(ep *policy.Endpoint, uid string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	key := client.ObjectKey{Namespace: ep.Namespace, Name: ep.Name}
	var pod corev1.Pod
	err := s.c.Get(ctx, key, &pod)
	if apierrors.IsNotFound(err) {
		err = s.liveGet(ctx, key, &pod)
	}
	switch {
	case err != nil:
		return fmt.Errorf("pod %s: %w", key, err)
	case uid != "" && string(pod.UID) != uid:
		return fmt.Errorf("pod %s has uid %s, the container's is %s", key, pod.UID, uid)
	}
	ep.Labels = pod.Labels
	return nil
}

func (s *Source) liveGet(ctx context.Context, key client.ObjectKey, pod *corev1.Pod) error {
	s.missMu.Lock()
	last, missed := s.misses[key.String()]
	s.missMu.Unlock()
	if missed && time.Since(last) < missRetry {
		return apierrors.NewNotFound(corev1.Resource("pods"), key.Name)
	}
	err := s.live.Get(ctx, key, pod)
	s.missMu.Lock()
	defer s.missMu.Unlock()
	if err != nil {
		now := time.Now()
		for k, t := range s.misses { // forget old misses: pods come and go
			if now.Sub(t) > missRetry {
				delete(s.misses, k)
			}
		}
		s.misses[key.String()] = now
		return err
	}
	delete(s.misses, key.String())
	return nil
}
