package node

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/netseg/netseg/api/agent"
	"github.com/netseg/netseg/controller/policy"
)

func testEndpoint(container string) agent.Endpoint {
	return agent.Endpoint{Attachment: agent.Attachment{ContainerID: container, IfName: "eth0"}, Namespace: "shop", Name: container,
		Labels: map[string]string{"app": "checkout"}, IPs: []string{"10.88.0.2/32"}}
}

func mustOpen(t *testing.T, dir string) *Registry {
	t.Helper()
	r, err := OpenRegistry(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func listed(r *Registry) (eps, q []agent.Endpoint) {
	e, qe := r.List()
	return wire(e), wire(qe)
}

// TestRegistryPersists: every change is on disk, one file per endpoint,
// and a reopened registry holds what the last one held.
func TestRegistryPersists(t *testing.T) {
	dir := t.TempDir()
	r := mustOpen(t, dir)
	long := strings.Repeat("c", 300) // too long for a file name: hashed
	for _, c := range []string{"a", "b", "c/with/slashes", long} {
		if err := r.Put(testEndpoint(c)); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Quarantine(testEndpoint("b")); err != nil {
		t.Fatal(err)
	}
	if known, err := r.Delete(testEndpoint("a").Attachment); !known || err != nil {
		t.Fatalf("delete a: known %v, %v", known, err)
	}
	if known, err := r.Delete(testEndpoint("a").Attachment); known || err != nil {
		t.Fatalf("delete a again: known %v, %v", known, err)
	}
	removed, err := r.Retain(func(ep agent.Endpoint) bool { return ep.ContainerID != long })
	if err != nil || len(removed) != 1 {
		t.Fatalf("retain: removed %d, %v", len(removed), err)
	}
	wantEps, wantQ := listed(r)
	files, _ := os.ReadDir(filepath.Join(dir, "endpoints"))
	if len(files) != 2 {
		t.Errorf("%d files in endpoints/, want 2 (one registered, one quarantined)", len(files))
	}
	// An interrupted write leaves a temporary file: the next open drops it.
	if err := os.WriteFile(filepath.Join(dir, "endpoints", "x.json.tmp"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	again := mustOpen(t, dir)
	gotEps, gotQ := listed(again)
	if diff := cmp.Diff(wantEps, gotEps); diff != "" {
		t.Errorf("endpoints after reopening (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(wantQ, gotQ); diff != "" {
		t.Errorf("quarantined after reopening (-want +got):\n%s", diff)
	}
	if len(gotEps) != 1 || gotEps[0].ContainerID != "c/with/slashes" || len(gotQ) != 1 || gotQ[0].ContainerID != "b" {
		t.Errorf("reopened: %v, quarantined %v", gotEps, gotQ)
	}
	if _, err := os.Stat(filepath.Join(dir, "endpoints", "x.json.tmp")); !os.IsNotExist(err) {
		t.Errorf("temporary file kept: %v", err)
	}
	if err := again.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "endpoints")); !os.IsNotExist(err) {
		t.Errorf("Remove left endpoints/: %v", err)
	}
}

// TestRegistryListingUntilChange: the registry hands out one Listing
// until something changes it (the agent keeps work derived from it), and
// a new one after every kind of change.
func TestRegistryListingUntilChange(t *testing.T) {
	r := mustOpen(t, t.TempDir())
	l := r.Listing()
	steps := []struct {
		name   string
		change func() error
		n, q   int
	}{
		{"put a", func() error { return r.Put(testEndpoint("a")) }, 1, 0},
		{"put b", func() error { return r.Put(testEndpoint("b")) }, 2, 0},
		{"quarantine b", func() error { return r.Quarantine(testEndpoint("b")) }, 1, 1},
		{"put b again", func() error { return r.Put(testEndpoint("b")) }, 2, 0},
		{"delete a", func() error { _, err := r.Delete(testEndpoint("a").Attachment); return err }, 1, 0},
		{"retain none", func() error {
			_, err := r.Retain(func(agent.Endpoint) bool { return false })
			return err
		}, 0, 0},
	}
	for _, s := range steps {
		if err := s.change(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		next := r.Listing()
		if next == l {
			t.Errorf("%s: the Listing of before the change is handed out", s.name)
		}
		if len(next.Endpoints) != s.n || len(next.Quarantined) != s.q {
			t.Errorf("%s: %d endpoints, %d quarantined; want %d, %d", s.name, len(next.Endpoints), len(next.Quarantined), s.n, s.q)
		}
		if again := r.Listing(); again != next {
			t.Errorf("%s: a second Listing without a change is a new one", s.name)
		}
		l = next
	}
	// What changes nothing keeps the Listing.
	if known, err := r.Delete(testEndpoint("gone").Attachment); known || err != nil {
		t.Fatal(known, err)
	}
	if _, err := r.Retain(func(agent.Endpoint) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if r.Listing() != l {
		t.Error("a delete of an unknown endpoint or a retain of all made a new Listing")
	}
}

// TestRegistryClaimants: the registrations holding a new endpoint's
// addresses, registered or quarantined, follow every change, an IPv4
// address written IPv4-mapped included, and survive a reopen.
func TestRegistryClaimants(t *testing.T) {
	dir := t.TempDir()
	r := mustOpen(t, dir)
	at := func(container string, ips ...string) agent.Endpoint {
		ep := testEndpoint(container)
		ep.IPs = ips
		return ep
	}
	claimants := func(r *Registry, ip string) []string {
		var ids []string
		for _, c := range r.Claimants(at("new", ip)) {
			ids = append(ids, c.ContainerID)
		}
		return ids
	}
	check := func(step, ip string, want ...string) {
		t.Helper()
		if got := claimants(r, ip); !cmp.Equal(got, want, cmpopts.EquateEmpty()) {
			t.Errorf("%s: claimants of %s = %v, want %v", step, ip, got, want)
		}
	}
	for _, err := range []error{
		r.Put(at("a", "10.88.0.2/32")), r.Put(at("b", "10.88.0.3/32", "fd00::3/128")), r.Quarantine(at("c", "10.88.0.2/32")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	check("registered and quarantined", "10.88.0.2/32", "a", "c")
	check("IPv4-mapped", "::ffff:10.88.0.3/128", "b")
	check("IPv6", "fd00::3/128", "b")
	if got := r.Claimants(at("a", "10.88.0.2/32")); len(got) != 1 || got[0].ContainerID != "c" {
		t.Errorf("an endpoint claims its own addresses: %v", got)
	}
	if err := r.Put(at("a", "10.88.0.9/32")); err != nil { // a moves: 10.88.0.2 is c's alone
		t.Fatal(err)
	}
	check("after a moved", "10.88.0.2/32", "c")
	check("after a moved", "10.88.0.9/32", "a")
	if err := r.Put(at("c", "10.88.0.4/32")); err != nil { // c's quarantine lifted, at a new address
		t.Fatal(err)
	}
	check("after c moved", "10.88.0.2/32")
	check("after c moved", "10.88.0.4/32", "c")
	if _, err := r.Delete(at("b").Attachment); err != nil {
		t.Fatal(err)
	}
	check("after b's delete", "10.88.0.3/32")
	check("after b's delete", "fd00::3/128")
	if _, err := r.Retain(func(ep agent.Endpoint) bool { return ep.ContainerID != "c" }); err != nil {
		t.Fatal(err)
	}
	check("after c's removal", "10.88.0.4/32")
	r = mustOpen(t, dir)
	check("reopened", "10.88.0.9/32", "a")
}

// TestRegistryMigrates reads the single endpoints.json of earlier versions
// into per-endpoint files and removes it.
func TestRegistryMigrates(t *testing.T) {
	dir := t.TempDir()
	old := legacyFile{Version: 1, Endpoints: []agent.Endpoint{testEndpoint("a"), testEndpoint("b")}, Quarantined: []agent.Endpoint{testEndpoint("q")}}
	b, _ := json.Marshal(old)
	if err := os.WriteFile(filepath.Join(dir, "endpoints.json"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	r := mustOpen(t, dir)
	eps, q := listed(r)
	if diff := cmp.Diff(old.Endpoints, eps); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(old.Quarantined, q); diff != "" {
		t.Errorf("quarantined (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(filepath.Join(dir, "endpoints.json")); !os.IsNotExist(err) {
		t.Errorf("endpoints.json kept: %v", err)
	}
	eps2, q2 := listed(mustOpen(t, dir))
	if !cmp.Equal(eps, eps2) || !cmp.Equal(q, q2) {
		t.Errorf("reopened after migration: %v %v", eps2, q2)
	}
}

// TestRegistryWriteFailure: a change that cannot be written is refused and
// memory keeps what the disk holds.
func TestRegistryWriteFailure(t *testing.T) {
	dir := t.TempDir()
	r := mustOpen(t, dir)
	if err := r.Put(testEndpoint("a")); err != nil {
		t.Fatal(err)
	}
	// Replace the directory by a file: every write fails.
	if err := os.RemoveAll(filepath.Join(dir, "endpoints")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "endpoints"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := r.Put(testEndpoint("b")); err == nil {
		t.Error("Put succeeded with nowhere to write")
	}
	if err := r.Quarantine(testEndpoint("a")); err == nil {
		t.Error("Quarantine succeeded with nowhere to write")
	}
	eps, q := listed(r)
	if len(eps) != 1 || eps[0].ContainerID != "a" || len(q) != 0 {
		t.Errorf("after failed writes: %v, quarantined %v; want a registered only", eps, q)
	}
	if _, err := OpenRegistry(dir); err == nil {
		t.Error("OpenRegistry succeeded on a file where its directory should be")
	}
}

// TestRegistryMovesTornEntriesAside: a zero-length entry (power lost
// right after an ADD) or a garbled one does not keep the registry from
// opening: it is moved aside and named, and the other entries load.
func TestRegistryMovesTornEntriesAside(t *testing.T) {
	dir := t.TempDir()
	r := mustOpen(t, dir)
	for _, c := range []string{"a", "b", "c"} {
		if err := r.Put(testEndpoint(c)); err != nil {
			t.Fatal(err)
		}
	}
	torn := r.entryPath(EndpointID(testEndpoint("b").Attachment))
	if err := os.Truncate(torn, 0); err != nil {
		t.Fatal(err)
	}
	garbled := r.entryPath(EndpointID(testEndpoint("c").Attachment))
	if err := os.WriteFile(garbled, []byte(`{"version":2,"endpoint":{}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r = mustOpen(t, dir)
	eps, _ := listed(r)
	if len(eps) != 1 || eps[0].ContainerID != testEndpoint("a").ContainerID {
		t.Fatalf("loaded %v, want only a", eps)
	}
	if len(r.Damaged) != 2 {
		t.Fatalf("damaged %q, want the two entries", r.Damaged)
	}
	for _, p := range []string{torn, garbled} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s still in the registry (%v)", p, err)
		}
		if _, err := os.Stat(filepath.Join(dir, "endpoints-damaged", filepath.Base(p))); err != nil {
			t.Errorf("%s not moved aside: %v", p, err)
		}
	}
	// Opened again, nothing is damaged any more.
	if r = mustOpen(t, dir); len(r.Damaged) != 0 {
		t.Fatalf("damaged again: %q", r.Damaged)
	}
	t.Logf("FAULT | registry entries torn (1 empty, 1 garbled of 3) | registry alone, no traffic | lost 2 registrations, moved aside and counted (the runtime adds them again) | recovered at the next start")
}

// TestSameLabels: an endpoint with one label map, an equal map, nil or
// empty labels is the same endpoint; a different value or key is not.
func TestSameLabels(t *testing.T) {
	m := map[string]string{"app": "checkout"}
	for _, tc := range []struct {
		a, b map[string]string
		want bool
	}{
		{m, m, true},
		{m, map[string]string{"app": "checkout"}, true},
		{nil, map[string]string{}, true},
		{m, map[string]string{"app": "payments"}, false},
		{m, map[string]string{"tier": "checkout"}, false},
		{m, nil, false},
	} {
		if got := sameEndpoint(policy.Endpoint{Labels: tc.a}, policy.Endpoint{Labels: tc.b}); got != tc.want {
			t.Errorf("sameEndpoint with labels %v, %v = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
