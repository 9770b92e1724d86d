package kube

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/netseg/netseg/api/v1alpha1"
)

// After an API server outage, client-go's informers come back on their
// own schedule: their reconnect backoff grows to 30-60 s while the server
// is away, so a policy change made right after it returns could wait that
// long. The recovery watch probes the API server's /readyz every
// probeEvery (one cheap request); once it answers again after failing, the
// policy kinds (Zones, ZonePolicies, ServiceDependencies, Namespaces: small
// lists) are read straight from the API server every probeEvery for
// liveFor, and the agent is told whenever they differ from what it was
// told last. Pods and Services keep coming from the cache.
const (
	probeEvery = time.Second
	liveFor    = 2 * time.Minute
)

// policyLists are the policy kinds as read from the API server.
type policyLists struct {
	zones v1alpha1.ZoneList
	zps   v1alpha1.ZonePolicyList
	sds   v1alpha1.ServiceDependencyList
	nss   corev1.NamespaceList
}

type recovery struct {
	mu    sync.Mutex
	until time.Time    // live reads until then
	live  *policyLists // the last live read, used by input while live
}

// current returns the live policy lists while a recovery is on.
func (r *recovery) current() *policyLists {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.live == nil || time.Now().After(r.until) {
		return nil
	}
	return r.live
}

// watchRecovery runs until ctx ends.
func (s *Source) watchRecovery(ctx context.Context) {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	down := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.probe(ctx); err != nil {
			if !down {
				s.log.Warn("kubernetes API server unreachable; the last known policy stays in force", "err", err)
			}
			down = true
			continue
		}
		s.rec.mu.Lock()
		if down {
			s.rec.until = time.Now().Add(liveFor)
			s.log.Info("kubernetes API server back; reading policy directly until the watches recover", "for", liveFor)
		}
		down = false
		active := time.Now().Before(s.rec.until)
		s.rec.mu.Unlock()
		if !active {
			continue
		}
		lists, err := s.readPolicyLive(ctx)
		if err != nil {
			continue // the next probe decides
		}
		s.rec.mu.Lock()
		changed := s.rec.live == nil || !samePolicy(s.rec.live, lists)
		s.rec.live = lists
		s.rec.mu.Unlock()
		if changed {
			s.notify() // the agent's rules and the status writer
		}
	}
}

// probe asks the API server's /readyz.
func (s *Source) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeEvery)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(s.hostURL, "/")+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := s.mgr.GetHTTPClient().Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

func (s *Source) readPolicyLive(ctx context.Context) (*policyLists, error) {
	ctx, cancel := context.WithTimeout(ctx, probeEvery)
	defer cancel()
	l := &policyLists{}
	for _, list := range []client.ObjectList{&l.zones, &l.zps, &l.sds, &l.nss} {
		if err := s.live.List(ctx, list); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// samePolicy compares what the compiler reads: names, specs, namespace
// labels.
func samePolicy(a, b *policyLists) bool { return reflect.DeepEqual(policyView(a), policyView(b)) }

func policyView(l *policyLists) []any {
	var v []any
	for _, z := range l.zones.Items {
		v = append(v, z.Name, z.Spec)
	}
	for _, p := range l.zps.Items {
		v = append(v, p.Name, p.Spec)
	}
	for _, d := range l.sds.Items {
		v = append(v, d.Namespace, d.Name, d.Spec)
	}
	for _, n := range l.nss.Items {
		v = append(v, n.Name, n.Labels)
	}
	return v
}
