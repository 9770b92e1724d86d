package node

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/netseg/netseg/controller/policyfile"
)

// DirSource is the standalone policy source: a directory of YAML files,
// polled for changes. A directory that becomes invalid keeps the last good
// policy in force; the error is kept for status and metrics.
type DirSource struct {
	dir string

	mu          sync.Mutex
	fingerprint string
	good        *policyfile.Policy
	generation  int64
	lastErr     error
}

// NewDirSource returns a source for dir; call Reload or Poll to load it.
func NewDirSource(dir string) *DirSource { return &DirSource{dir: dir} }

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
	fp, err := fingerprint(s.dir)
	if err != nil {
		fp = "error: " + err.Error()
	}
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
	fp, err := fingerprint(s.dir)
	if err != nil {
		fp = "error: " + err.Error()
	}
	return s.load(fp)
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
	s.good, s.lastErr = p, nil
	s.generation++
	return nil
}

// fingerprint hashes the names, sizes, modification times and contents
// of the directory's YAML files: any edit, rename or removal changes it.
func fingerprint(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !(strings.HasSuffix(path, ".yaml") || strings.HasSuffix(path, ".yml")) {
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
