package node

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
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
