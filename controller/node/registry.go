package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/netseg/netseg/api/agent"
)

// Registry holds the endpoints the CNI plugin registered on this node. It
// is persisted in the state directory on every change (write to a
// temporary file, then rename), so a restarted agent re-programs the same
// rules without asking the runtime.
type Registry struct {
	path string

	mu          sync.Mutex
	endpoints   map[string]agent.Endpoint // by ID
	quarantined map[string]agent.Endpoint // interfaces whose ADD failed
}

// regFile is the registry's on-disk form.
type regFile struct {
	Version     int              `json:"version"`
	Endpoints   []agent.Endpoint `json:"endpoints"`
	Quarantined []agent.Endpoint `json:"quarantined,omitempty"`
}

// EndpointID is the registry key of an attachment.
func EndpointID(a agent.Attachment) string { return a.ContainerID + "/" + a.IfName }

// OpenRegistry loads the registry from dir (creating dir if needed).
func OpenRegistry(dir string) (*Registry, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", dir, err)
	}
	r := &Registry{path: filepath.Join(dir, "endpoints.json"),
		endpoints: map[string]agent.Endpoint{}, quarantined: map[string]agent.Endpoint{}}
	b, err := os.ReadFile(r.path)
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", r.path, err)
	}
	var f regFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse registry %s: %w", r.path, err)
	}
	for _, ep := range f.Endpoints {
		r.endpoints[EndpointID(ep.Attachment)] = ep
	}
	for _, ep := range f.Quarantined {
		r.quarantined[EndpointID(ep.Attachment)] = ep
	}
	return r, nil
}

// Put adds or replaces an endpoint (and lifts its quarantine).
func (r *Registry) Put(ep agent.Endpoint) error {
	if err := validEndpoint(ep); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	id := EndpointID(ep.Attachment)
	prevEp, hadEp := r.endpoints[id]
	prevQ, hadQ := r.quarantined[id]
	r.endpoints[id] = ep
	delete(r.quarantined, id)
	if err := r.save(); err != nil {
		// Not on disk, so not registered: memory follows the disk.
		restore(r.endpoints, id, prevEp, hadEp)
		restore(r.quarantined, id, prevQ, hadQ)
		return err
	}
	return nil
}

func restore(m map[string]agent.Endpoint, id string, ep agent.Endpoint, had bool) {
	if had {
		m[id] = ep
	} else {
		delete(m, id)
	}
}

// Quarantine records an interface whose rules could not be programmed.
func (r *Registry) Quarantine(ep agent.Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := EndpointID(ep.Attachment)
	prevEp, hadEp := r.endpoints[id]
	prevQ, hadQ := r.quarantined[id]
	delete(r.endpoints, id)
	r.quarantined[id] = ep
	if err := r.save(); err != nil {
		restore(r.endpoints, id, prevEp, hadEp)
		restore(r.quarantined, id, prevQ, hadQ)
		return err
	}
	return nil
}

// Delete forgets an attachment; it reports whether it was known.
func (r *Registry) Delete(a agent.Attachment) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	id := EndpointID(a)
	_, known := r.endpoints[id]
	_, q := r.quarantined[id]
	if !known && !q {
		return false, nil
	}
	prevEp, hadEp := r.endpoints[id]
	prevQ, hadQ := r.quarantined[id]
	delete(r.endpoints, id)
	delete(r.quarantined, id)
	if err := r.save(); err != nil {
		restore(r.endpoints, id, prevEp, hadEp)
		restore(r.quarantined, id, prevQ, hadQ)
		return true, err
	}
	return true, nil
}

// Get returns a registered endpoint.
func (r *Registry) Get(a agent.Attachment) (agent.Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.endpoints[EndpointID(a)]
	return ep, ok
}

// List returns the registered endpoints sorted by ID, and the quarantined.
func (r *Registry) List() (eps, quarantined []agent.Endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return sortedEndpoints(r.endpoints), sortedEndpoints(r.quarantined)
}

// Retain removes every endpoint for which keep is false and returns them.
func (r *Registry) Retain(keep func(agent.Endpoint) bool) ([]agent.Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var removed []agent.Endpoint
	for _, m := range []map[string]agent.Endpoint{r.endpoints, r.quarantined} {
		for id, ep := range m {
			if !keep(ep) {
				removed = append(removed, ep)
				delete(m, id)
			}
		}
	}
	if len(removed) == 0 {
		return nil, nil
	}
	return removed, r.save()
}

// Remove deletes the registry file (netseg-agent --cleanup).
func (r *Registry) Remove() error {
	if err := os.Remove(r.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove registry: %w", err)
	}
	return nil
}

func (r *Registry) save() error {
	f := regFile{Version: 1, Endpoints: sortedEndpoints(r.endpoints), Quarantined: sortedEndpoints(r.quarantined)}
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("encode registry: %w", err)
	}
	tmp := r.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write registry: %w", err)
	}
	if err := os.Rename(tmp, r.path); err != nil {
		return fmt.Errorf("replace registry: %w", err)
	}
	return nil
}

func sortedEndpoints(m map[string]agent.Endpoint) []agent.Endpoint {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]agent.Endpoint, len(ids))
	for i, id := range ids {
		out[i] = m[id]
	}
	return out
}

// validEndpoint checks a registration names what the agent needs.
func validEndpoint(ep agent.Endpoint) error {
	var errs []error
	if ep.ContainerID == "" {
		errs = append(errs, errors.New("containerID is empty"))
	}
	if ep.IfName == "" {
		errs = append(errs, errors.New("ifName is empty"))
	}
	if ep.Namespace == "" || ep.Name == "" {
		errs = append(errs, fmt.Errorf("pod namespace/name %q/%q: both are needed (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME)", ep.Namespace, ep.Name))
	}
	if len(ep.IPs) == 0 {
		errs = append(errs, errors.New("no IP addresses"))
	}
	for _, ip := range ep.IPs {
		if _, err := netip.ParsePrefix(ip); err != nil {
			errs = append(errs, fmt.Errorf("ip %q: want address/prefix-length: %w", ip, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("endpoint %s: %w", EndpointID(ep.Attachment), errors.Join(errs...))
	}
	return nil
}
