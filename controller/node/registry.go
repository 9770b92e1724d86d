package node

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/api/segment"
)

// Registry holds the endpoints the CNI plugin registered on this node. It
// is persisted in the state directory, one file per endpoint
// (endpoints/<id>.json, written to a temporary file, then renamed), so a
// restarted agent re-programs the same rules without asking the runtime,
// and a change writes one small file whatever the node's size.
type Registry struct {
	epDir   string // dir/endpoints
	legacy  string // dir/endpoints.json: the single-file form of earlier versions
	damaged string // dir/endpoints-damaged: entries that could not be read, moved aside
	// Damaged are the entries OpenRegistry moved aside, by file name.
	Damaged []string

	mu          sync.Mutex
	endpoints   map[string]Registered // by ID
	quarantined map[string]Registered // interfaces whose ADD failed
	// listed is the last Listing, until a change (nil: none since).
	listed *Listing
	// holders: address -> the IDs (registered or quarantined) that hold
	// it, for Claimants without a walk over the node's registrations.
	holders map[netip.Addr]map[string]bool
}

// Listing is the registry at one moment: the registered endpoints sorted
// by ID, and the quarantined. The registry hands out one Listing until it
// changes, so a caller that keeps work derived from a Listing can reuse it
// while the registry returns the same pointer. Its entries share their
// label maps and prefixes with the registry: nobody changes them.
type Listing struct {
	Endpoints, Quarantined []Registered
}

// Registered is a registration as the plugin sent it (the registry's file,
// the answers) and as the agent's syncs use it, parsed once, when it was
// registered or loaded: Interface, whose addresses are never parsed again.
type Registered struct {
	agent.Endpoint
	Interface segment.Endpoint
}

// registered parses ep; addresses that do not parse are left out (Put
// refuses them; a quarantine keeps what it can).
func registered(ep agent.Endpoint) Registered {
	r := Registered{Endpoint: ep, Interface: segment.Endpoint{ID: EndpointID(ep.Attachment), Namespace: ep.Namespace,
		Name: ep.Name, HostIface: ep.HostIface, IPs: make([]netip.Prefix, 0, len(ep.IPs))}}
	for _, s := range ep.IPs {
		if p, err := netip.ParsePrefix(s); err == nil {
			r.Interface.IPs = append(r.Interface.IPs, p)
		}
	}
	return r
}

// regEntry is one endpoint's file.
type regEntry struct {
	Version int `json:"version"`
	// Quarantined: the interface's ADD failed and it stays without traffic.
	Quarantined bool           `json:"quarantined,omitempty"`
	Endpoint    agent.Endpoint `json:"endpoint"`
}

// legacyFile is the registry's single-file form before version 2; it is
// read once, written out as per-endpoint files, and removed.
type legacyFile struct {
	Version     int              `json:"version"`
	Endpoints   []agent.Endpoint `json:"endpoints"`
	Quarantined []agent.Endpoint `json:"quarantined,omitempty"`
}

// EndpointID is the registry key of an attachment.
func EndpointID(a agent.Attachment) string { return a.ContainerID + "/" + a.IfName }

// OpenRegistry loads the registry from dir (creating dir if needed).
func OpenRegistry(dir string) (*Registry, error) {
	r := &Registry{epDir: filepath.Join(dir, "endpoints"), legacy: filepath.Join(dir, "endpoints.json"),
		damaged:   filepath.Join(dir, "endpoints-damaged"),
		endpoints: map[string]Registered{}, quarantined: map[string]Registered{}, holders: map[netip.Addr]map[string]bool{}}
	if err := os.MkdirAll(r.epDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state dir %s: %w", r.epDir, err)
	}
	entries, err := os.ReadDir(r.epDir)
	if err != nil {
		return nil, fmt.Errorf("read registry %s: %w", r.epDir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".json") {
			_ = os.Remove(filepath.Join(r.epDir, name)) // a temporary file of an interrupted write
			continue
		}
		ent, err := readEntry(filepath.Join(r.epDir, name))
		if err != nil {
			// A torn write (power lost after an ADD) or a damaged disk:
			// one entry must not keep the agent from starting. It is moved
			// aside for a human; the endpoint's addresses, inside the pod
			// network but unprogrammed, carry nothing until its runtime
			// adds it again.
			if merr := r.moveAside(name); merr != nil {
				return nil, fmt.Errorf("%w (and moving it aside failed: %v)", err, merr)
			}
			r.Damaged = append(r.Damaged, name+": "+err.Error())
			continue
		}
		r.set(EndpointID(ent.Endpoint.Attachment), ent.Endpoint, ent.Quarantined)
	}
	if err := r.migrate(); err != nil {
		return nil, err
	}
	return r, nil
}

func readEntry(path string) (regEntry, error) {
	var ent regEntry
	b, err := os.ReadFile(path)
	if err != nil {
		return ent, fmt.Errorf("read registry entry %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &ent); err != nil {
		return ent, fmt.Errorf("parse registry entry %s: %w", path, err)
	}
	if err := validEndpoint(ent.Endpoint); err != nil && !ent.Quarantined {
		return ent, fmt.Errorf("registry entry %s: %w", path, err)
	}
	return ent, nil
}

// moveAside moves an unreadable entry into the damaged directory.
func (r *Registry) moveAside(name string) error {
	if err := os.MkdirAll(r.damaged, 0o700); err != nil {
		return err
	}
	return os.Rename(filepath.Join(r.epDir, name), filepath.Join(r.damaged, name))
}

// migrate turns an endpoints.json of an earlier version into entries.
func (r *Registry) migrate() error {
	b, err := os.ReadFile(r.legacy)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read registry %s: %w", r.legacy, err)
	}
	var f legacyFile
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("parse registry %s: %w", r.legacy, err)
	}
	for _, q := range []bool{false, true} {
		list := f.Endpoints
		if q {
			list = f.Quarantined
		}
		for _, ep := range list {
			if err := r.write(ep, q); err != nil {
				return err
			}
			r.set(EndpointID(ep.Attachment), ep, q)
		}
	}
	if err := os.Remove(r.legacy); err != nil {
		return fmt.Errorf("registry: remove %s after moving it to %s: %w", r.legacy, r.epDir, err)
	}
	return nil
}

// set records id as registered or quarantined (and not the other).
func (r *Registry) set(id string, ep agent.Endpoint, quarantined bool) {
	r.drop(id)
	reg := registered(ep)
	if quarantined {
		r.quarantined[id] = reg
	} else {
		r.endpoints[id] = reg
	}
	for _, p := range reg.Interface.IPs {
		a := p.Addr().Unmap()
		if r.holders[a] == nil {
			r.holders[a] = map[string]bool{}
		}
		r.holders[a][id] = true
	}
	r.listed = nil
}

// drop forgets id, registered or quarantined.
func (r *Registry) drop(id string) {
	for _, m := range []map[string]Registered{r.endpoints, r.quarantined} {
		reg, ok := m[id]
		if !ok {
			continue
		}
		for _, p := range reg.Interface.IPs {
			a := p.Addr().Unmap()
			delete(r.holders[a], id)
			if len(r.holders[a]) == 0 {
				delete(r.holders, a)
			}
		}
		delete(m, id)
		r.listed = nil
	}
}

// entryPath names an endpoint's file: its ID, escaped (a hash for an ID
// too long for a file name).
func (r *Registry) entryPath(id string) string {
	name := url.PathEscape(id)
	if len(name) > 200 {
		sum := sha256.Sum256([]byte(id))
		name = hex.EncodeToString(sum[:16])
	}
	return filepath.Join(r.epDir, name+".json")
}

// write records ep (as registered or quarantined) in its file: a
// temporary file, synced, renamed over the entry, and the directory
// synced, so that after a crash the entry is the old one or the new one,
// whole.
func (r *Registry) write(ep agent.Endpoint, quarantined bool) error {
	b, err := json.Marshal(regEntry{Version: 2, Quarantined: quarantined, Endpoint: ep})
	if err != nil {
		return fmt.Errorf("encode registry entry: %w", err)
	}
	path := r.entryPath(EndpointID(ep.Attachment))
	tmp := path + ".tmp"
	if err := writeSynced(tmp, b); err != nil {
		return fmt.Errorf("write registry entry: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace registry entry: %w", err)
	}
	if err := syncDir(r.epDir); err != nil {
		return fmt.Errorf("sync registry directory: %w", err)
	}
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// erase removes an endpoint's file.
func (r *Registry) erase(id string) error {
	if err := os.Remove(r.entryPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove registry entry: %w", err)
	}
	if err := syncDir(r.epDir); err != nil {
		return fmt.Errorf("sync registry directory: %w", err)
	}
	return nil
}

// Put adds or replaces an endpoint (and lifts its quarantine).
func (r *Registry) Put(ep agent.Endpoint) error {
	if err := validEndpoint(ep); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	id := EndpointID(ep.Attachment)
	if err := r.write(ep, false); err != nil {
		// Not on disk, so not registered: memory follows the disk.
		return err
	}
	r.set(id, ep, false)
	return nil
}

// Quarantine records an interface whose rules could not be programmed.
func (r *Registry) Quarantine(ep agent.Endpoint) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.write(ep, true); err != nil {
		return err
	}
	r.set(EndpointID(ep.Attachment), ep, true)
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
	if err := r.erase(id); err != nil {
		return true, err
	}
	r.drop(id)
	return true, nil
}

// Get returns a registered endpoint.
func (r *Registry) Get(a agent.Attachment) (agent.Endpoint, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ep, ok := r.endpoints[EndpointID(a)]
	return ep.Endpoint, ok
}

// List returns the registered endpoints sorted by ID, and the quarantined
// (the current Listing's slices, which nobody changes).
func (r *Registry) List() (eps, quarantined []Registered) {
	l := r.Listing()
	return l.Endpoints, l.Quarantined
}

// Listing returns the registry's current Listing: the same pointer until
// the registry changes.
func (r *Registry) Listing() *Listing {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.listed == nil {
		r.listed = &Listing{Endpoints: sortedEndpoints(r.endpoints), Quarantined: sortedEndpoints(r.quarantined)}
	}
	return r.listed
}

// Claimants returns the other registrations (registered or quarantined)
// that hold one of ep's addresses.
func (r *Registry) Claimants(ep agent.Endpoint) []Registered {
	mine := registered(ep)
	id := EndpointID(ep.Attachment)
	r.mu.Lock()
	defer r.mu.Unlock()
	seen := map[string]bool{id: true}
	var out []Registered
	for _, p := range mine.Interface.IPs {
		for oid := range r.holders[p.Addr().Unmap()] {
			if seen[oid] {
				continue
			}
			seen[oid] = true
			if other, ok := r.endpoints[oid]; ok {
				out = append(out, other)
			} else if other, ok := r.quarantined[oid]; ok {
				out = append(out, other)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return EndpointID(out[i].Attachment) < EndpointID(out[j].Attachment) })
	return out
}

// Retain removes every endpoint for which keep is false and returns them.
func (r *Registry) Retain(keep func(agent.Endpoint) bool) ([]agent.Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var removed []agent.Endpoint
	var errs []error
	for _, m := range []map[string]Registered{r.endpoints, r.quarantined} {
		for id, ep := range m {
			if keep(ep.Endpoint) {
				continue
			}
			if err := r.erase(id); err != nil {
				errs = append(errs, err) // still registered: memory follows the disk
				continue
			}
			removed = append(removed, ep.Endpoint)
			r.drop(id)
		}
	}
	return removed, errors.Join(errs...)
}

// Remove deletes the registry's files (netseg-agent --cleanup).
func (r *Registry) Remove() error {
	var errs []error
	for _, p := range []string{r.epDir, r.legacy, r.damaged} {
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove registry: %w", err))
		}
	}
	return errors.Join(errs...)
}

func sortedEndpoints(m map[string]Registered) []Registered {
	ids := make([]string, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	out := make([]Registered, len(ids))
	for i, id := range ids {
		out[i] = m[id]
	}
	return out
}

// The widest pod networks a registration may name.
const (
	minPrefix4 = 8
	minPrefix6 = 32
)

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
		p, err := netip.ParsePrefix(ip)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("ip %q: want address/prefix-length: %w", ip, err))
		case p.Addr().Is4In6():
			errs = append(errs, fmt.Errorf("ip %q: an IPv4-mapped IPv6 address; register the IPv4 address", ip))
		case p.Addr().Is4() && p.Bits() < minPrefix4, p.Addr().Is6() && p.Bits() < minPrefix6:
			// The prefix tells the agent the pod network, whose unprogrammed
			// addresses it drops: a /0 would cut the node off.
			errs = append(errs, fmt.Errorf("ip %q: a pod network wider than /%d (IPv4) or /%d (IPv6) is refused", ip, minPrefix4, minPrefix6))
		case !p.Addr().IsGlobalUnicast() && !p.Addr().IsPrivate():
			errs = append(errs, fmt.Errorf("ip %q: not a unicast address a container can own", ip))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("endpoint %s: %w", EndpointID(ep.Attachment), errors.Join(errs...))
	}
	return nil
}
