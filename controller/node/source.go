package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netseg/netseg/controller/policy"
	"github.com/netseg/netseg/controller/policyfile"
)

// Source supplies the policy and what the cluster knows about endpoints.
// The agent calls Run once; Run calls changed whenever Snapshot's answer
// may have changed, until ctx ends.
type Source interface {
	Run(ctx context.Context, changed func())
	Snapshot() Snapshot
	// Mode is "standalone" or "kubernetes"; Name says where policy comes
	// from (a directory, a kubeconfig).
	Mode() string
	Name() string
}

// Snapshot is a source's current state.
type Snapshot struct {
	// Input is the compiler input without this node's registered
	// endpoints: zones, zone policies, dependencies, namespaces, services,
	// and endpoints on other nodes.
	Input policy.Input
	// Valid is false until a first good policy is loaded.
	Valid bool
	// Generation counts the good policies applied so far. It rises when
	// Input changes: a snapshot whose Input is newer than an earlier one's
	// has a higher Generation, or is followed by a change notification
	// whose snapshot has (the agent keeps its compiler model for a
	// generation).
	Generation int64
	// Err is the latest load's problem; the last good policy stays in force.
	Err error
	// Locate turns a compiler problem into a message naming where its
	// object came from.
	Locate func(policy.Problem) string
	// Enrich, when set, completes a local endpoint from what the source
	// knows (in Kubernetes mode: the Pod's labels, found by namespace,
	// name and UID). An error means the endpoint's labels are unknown
	// (not "it has none"): the agent then keeps the labels it last had or
	// quarantines it, and never compiles it as unlabelled.
	Enrich func(ep *policy.Endpoint, uid string) error
}

// DirSource is the standalone policy source: a directory of YAML files,
// watched (inotify) and checked for changes. A directory that becomes invalid keeps the last good
// policy in force; the error is kept for status and metrics.
type DirSource struct {
	dir      string
	interval time.Duration
	log      *slog.Logger
	errors   func()

	// watch, set by Run before its first read, says when the directory
	// may have changed (nil: no inotify, every check reads).
	watch *dirWatch
	reads atomic.Int64 // directory reads after the first load (tests)

	mu          sync.Mutex
	fingerprint string
	good        *policyfile.Policy
	generation  int64
	lastErr     error
}

// NewDirSource returns a source for dir, polled every interval. onError
// (may be nil) is called for every failed load.
func NewDirSource(dir string, interval time.Duration, log *slog.Logger, onError func()) *DirSource {
	if onError == nil {
		onError = func() {}
	}
	return &DirSource{dir: dir, interval: interval, log: log, errors: onError}
}

var _ Source = &DirSource{}

// Mode is "standalone".
func (s *DirSource) Mode() string { return "standalone" }

// Name is the directory.
func (s *DirSource) Name() string { return s.dir }

// fullCheckEvery is how often the directory is read whatever its watch
// says: a filesystem that sends no inotify events (NFS, some FUSE mounts)
// is still followed, more slowly.
const fullCheckEvery = 10 * time.Second

// Run loads the directory, then checks it every interval. A check reads
// the files only when the directory's watch saw an event since the last
// one (or every fullCheckEvery, or on every check when the watch could
// not be set up).
func (s *DirSource) Run(ctx context.Context, changed func()) {
	// The watch starts before the first load: an edit during the load
	// marks it, and the first check reads again.
	s.watch = watchDir(s.dir, s.log)
	if s.watch != nil {
		defer s.watch.Close()
	}
	if err := s.Reload(); err != nil {
		s.errors()
		s.log.Error("policy directory is invalid; no policy in force yet", "dir", s.dir, "err", err)
	}
	changed()
	t := time.NewTicker(s.interval)
	defer t.Stop()
	lastRead := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s.watch != nil && !s.watch.take() && time.Since(lastRead) < fullCheckEvery {
			continue
		}
		lastRead = time.Now()
		did, err := s.Poll()
		if !did {
			continue
		}
		if err != nil {
			s.errors()
			s.log.Error("policy directory became invalid; the last good policy stays in force", "dir", s.dir, "err", err)
			continue
		}
		s.log.Info("policy changed", "dir", s.dir, "generation", s.Generation())
		changed()
	}
}

// Snapshot returns the last good policy.
func (s *DirSource) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap := Snapshot{Valid: s.good != nil, Generation: s.generation, Err: s.lastErr}
	if s.good != nil {
		good := s.good
		snap.Input = good.Input(policy.Config{}, nil, nil)
		snap.Locate = good.Locate
		// The inventory adds labels to pods the runtime passed none for;
		// a pod it does not name keeps the runtime's (maybe none).
		snap.Enrich = func(ep *policy.Endpoint, _ string) error { good.Label(ep); return nil }
	}
	return snap
}

// Current returns the last good policy (nil if none), its generation, and
// the error of the latest load (nil if the latest load was good).
func (s *DirSource) Current() (*policyfile.Policy, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.good, s.generation, s.lastErr
}

// Generation counts the good policies applied so far.
func (s *DirSource) Generation() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.generation
}

// Poll reloads the directory if any file changed since the last load. It
// reports whether something changed, and the load's error.
func (s *DirSource) Poll() (bool, error) {
	s.reads.Add(1)
	fp := s.readFingerprint()
	s.mu.Lock()
	same := fp == s.fingerprint
	s.mu.Unlock()
	if same {
		return false, nil
	}
	return true, s.load(fp)
}

// Reload loads the directory now.
func (s *DirSource) Reload() error {
	return s.load(s.readFingerprint())
}

// readFingerprint fingerprints the directory, adding each directory it
// enters to the watch; a failed read marks the watch, so the next check
// reads again.
func (s *DirSource) readFingerprint() string {
	fp, err := fingerprint(s.dir, s.watch.add)
	if err != nil {
		s.watch.mark()
		return "error: " + err.Error()
	}
	if allowsLoss(s.dir) {
		fp += " " + AllowLossMarker // creating or removing the marker is a change
	}
	return fp
}

func (s *DirSource) load(fp string) error {
	p, err := policyfile.Load(s.dir)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fingerprint = fp
	if err != nil {
		s.lastErr = fmt.Errorf("policy directory %s: %w", s.dir, err)
		return s.lastErr
	}
	if lost := lostKinds(s.good, p); len(lost) > 0 && !allowsLoss(s.dir) {
		s.lastErr = fmt.Errorf("policy directory %s lost every %s it held: refused, the last good policy stays in force "+
			"(files moved aside, an unmounted volume, a deploy in progress?); to apply it on purpose, create %s in the directory",
			s.dir, strings.Join(lost, ", every "), AllowLossMarker)
		return s.lastErr
	}
	s.good, s.lastErr = p, nil
	s.generation++
	return nil
}

// AllowLossMarker, a file in the policy directory, lets a reload apply a
// policy that lost every object of a kind (all Zones, say, or everything):
// without it such a reload is refused, since a directory emptied by
// accident would otherwise open every workload. Remove it afterwards.
const AllowLossMarker = ".netseg-allow-policy-loss"

func allowsLoss(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, AllowLossMarker))
	return err == nil
}

// lostKinds names the kinds that old held and now holds none of (old nil:
// a first load loses nothing).
func lostKinds(old, now *policyfile.Policy) []string {
	if old == nil {
		return nil
	}
	var lost []string
	for _, k := range []struct {
		kind     string
		had, has int
	}{
		{"Zone", len(old.Zones), len(now.Zones)},
		{"ZonePolicy", len(old.ZonePolicies), len(now.ZonePolicies)},
		{"ServiceDependency", len(old.ServiceDependencies), len(now.ServiceDependencies)},
		{"Namespace", len(old.Namespaces), len(now.Namespaces)},
		{"Workload", len(old.Workloads), len(now.Workloads)},
	} {
		if k.had > 0 && k.has == 0 {
			lost = append(lost, k.kind)
		}
	}
	return lost
}

// fingerprint hashes the names, sizes and contents of the directory's
// YAML files: any edit, rename or removal changes it. It calls enter with
// each directory before reading what it holds.
func fingerprint(dir string, enter func(dir string)) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			enter(path)
			return nil
		}
		if !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", path, len(b))
		h.Write(b)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("read policy directory %s: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
