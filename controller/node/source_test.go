package node

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDirSourceReadsOnChange checks that the standalone source reads the
// policy directory only when its watch saw something (not on every
// check), and that edits are still followed: in the directory, and in a
// subdirectory made after the start.
func TestDirSourceReadsOnChange(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("../../examples")); err != nil {
		t.Fatal(err)
	}
	const interval = 10 * time.Millisecond
	s := NewDirSource(dir, interval, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	changed := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); s.Run(ctx, func() { changed <- struct{}{} }) }()
	defer func() { cancel(); <-done }()

	waitChange := func(what string) {
		t.Helper()
		select {
		case <-changed:
		case <-time.After(2 * time.Second):
			t.Fatalf("%s: no change seen in 2s (generation %d, %d reads)", what, s.Generation(), s.reads.Load())
		}
	}
	edit := func(path string) {
		t.Helper()
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString("\n# edited\n"); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}

	waitChange("first load")
	time.Sleep(50 * interval)
	// The watch starts dirty (it cannot tell what happened before it
	// began): one read at the first check, none after.
	if n := s.reads.Load(); n > 1 {
		t.Fatalf("%d directory reads in %d quiet checks, want at most 1", n, 50)
	}

	edit(filepath.Join(dir, "zones.yaml"))
	waitChange("edit")
	if g := s.Generation(); g != 2 {
		t.Fatalf("generation %d after one edit, want 2", g)
	}

	sub := filepath.Join(dir, "more")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "zones.yaml"), filepath.Join(sub, "zones.yaml")); err != nil {
		t.Fatal(err)
	}
	waitChange("move into a new subdirectory")
	time.Sleep(10 * interval)
	before := s.Generation()
	edit(filepath.Join(sub, "zones.yaml"))
	waitChange("edit in the new subdirectory")
	if g := s.Generation(); g != before+1 {
		t.Fatalf("generation %d after an edit in the subdirectory, want %d", g, before+1)
	}
}

// TestDirSourceRefusesPolicyLoss: a reload that loses every object of a
// kind (files moved aside, an unmounted volume) is refused and the last
// good policy stays in force, until the marker file says it is meant.
func TestDirSourceRefusesPolicyLoss(t *testing.T) {
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("../../examples")); err != nil {
		t.Fatal(err)
	}
	s := NewDirSource(dir, time.Second, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err := s.Reload(); err != nil {
		t.Fatal(err)
	}
	good := s.Snapshot()
	if !good.Valid || len(good.Input.Zones) == 0 || len(good.Input.ServiceDependencies) == 0 {
		t.Fatalf("examples: valid %v, %d zones, %d dependencies", good.Valid, len(good.Input.Zones), len(good.Input.ServiceDependencies))
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("examples: %v, %v", files, err)
	}
	refused := func(what, want string) {
		t.Helper()
		did, err := s.Poll()
		if !did || err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: poll = %v, %v; want refused naming %q", what, did, err, want)
		}
		snap := s.Snapshot()
		if !snap.Valid || snap.Generation != good.Generation || len(snap.Input.Zones) != len(good.Input.Zones) {
			t.Fatalf("%s: generation %d (was %d), %d zones (were %d): the last good policy is not in force",
				what, snap.Generation, good.Generation, len(snap.Input.Zones), len(good.Input.Zones))
		}
		if snap.Err == nil {
			t.Fatalf("%s: the refusal is not reported in the snapshot", what)
		}
	}
	// Every file moved aside: everything is lost.
	for _, f := range files {
		if err := os.Rename(f, f+".bak"); err != nil {
			t.Fatal(err)
		}
	}
	refused("all files moved aside", "lost every Zone")
	// Back, but for the dependencies' file(s): a whole kind is lost.
	for _, f := range files {
		if err := os.Rename(f+".bak", f); err != nil {
			t.Fatal(err)
		}
	}
	if did, err := s.Poll(); !did || err != nil {
		t.Fatalf("files back: %v, %v", did, err)
	}
	good = s.Snapshot()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "kind: ServiceDependency") {
			if err := os.Rename(f, f+".bak"); err != nil {
				t.Fatal(err)
			}
		}
	}
	refused("dependencies moved aside", "ServiceDependency")
	// The marker says the loss is meant: it applies.
	if err := os.WriteFile(filepath.Join(dir, AllowLossMarker), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	did, err := s.Poll()
	if !did || err != nil {
		t.Fatalf("with %s: poll = %v, %v; want applied", AllowLossMarker, did, err)
	}
	if snap := s.Snapshot(); snap.Generation != good.Generation+1 || len(snap.Input.ServiceDependencies) != 0 || snap.Err != nil {
		t.Fatalf("with the marker: generation %d, %d dependencies, err %v", snap.Generation, len(snap.Input.ServiceDependencies), snap.Err)
	}
}

// TestDirWatchSettles: a marked watch reports a change only once the
// directory has been quiet for settle.
func TestDirWatchSettles(t *testing.T) {
	d := &dirWatch{}
	d.dirty.Store(true)
	d.last.Store(time.Now().UnixNano())
	if d.take() {
		t.Fatal("took a change while events still come")
	}
	d.last.Store(time.Now().Add(-2 * settle).UnixNano())
	if !d.take() {
		t.Fatal("a quiet, marked directory was not taken")
	}
	if d.take() {
		t.Fatal("taken twice")
	}
}
