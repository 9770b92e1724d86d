package flowlog

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/netseg/netseg/api/flow"
	"github.com/netseg/netseg/api/segment"
	"github.com/netseg/netseg/dataplane/flows"
)

// TestLogRecoversFromFullDisk fills a small tmpfs under the log: writes
// fail and drop what was buffered (counted, no torn line left in the
// file), and once space is freed the same LogFile writes again. Every
// line is in the file or counted as dropped.
func TestLogRecoversFromFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("mounts a tmpfs: skipped under -short (make test runs it)")
	}
	if os.Geteuid() != 0 {
		t.Fatal("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=256k"); err != nil {
		t.Fatalf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 160<<10), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "flows.log")
	l, err := OpenLog(path, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	line := func(i int) []byte { return []byte(fmt.Sprintf("{\"n\":%d,\"pad\":%q}\n", i, strings.Repeat("x", 180))) }
	written, failures := 0, 0
	write := func(n int) {
		for range n {
			if _, err := l.Write(line(written)); err != nil {
				failures++
			}
			written++
			if written%10 == 0 {
				if err := l.Flush(); err != nil {
					failures++
				}
			}
		}
	}
	write(1000) // about 190 KiB into less than 96 KiB free
	if failures == 0 || l.Dropped() == 0 {
		t.Fatalf("no write failed on a full disk (%d failures, %d dropped)", failures, l.Dropped())
	}
	droppedFull := l.Dropped()
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	failures = 0
	write(100)
	if err := l.Close(); err != nil {
		t.Fatalf("close after recovery: %v", err)
	}
	if failures != 0 || l.Dropped() != droppedFull {
		t.Fatalf("after space was freed: %d failures, dropped %d (was %d)", failures, l.Dropped(), droppedFull)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	whole := regexp.MustCompile(`^\{"n":(\d+),"pad":"x{180}"\}$`)
	for i, ln := range lines {
		if !whole.MatchString(ln) {
			t.Fatalf("line %d of the log is torn: %.60q", i, ln)
		}
	}
	if uint64(len(lines))+l.Dropped() != uint64(written) {
		t.Fatalf("%d lines in the file + %d dropped != %d written", len(lines), l.Dropped(), written)
	}
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, fmt.Sprintf("{\"n\":%d,", written-1)) {
		t.Fatalf("the last line is %.40q, want record %d: the log did not recover", last, written-1)
	}
	t.Logf("%d lines written: %d in the file, %d dropped while the disk was full", written, len(lines), l.Dropped())
	t.Logf("FAULT | disk full under the flow log (256 KiB tmpfs) | writer alone, no traffic | lost %d records, %d counted | recovered at the first write after space was freed",
		written-len(lines), l.Dropped())
}

// failingLog fails its first writes (dropping them, as LogFile does on a
// full disk) and works after.
type failingLog struct {
	failFor int
	dropped uint64
	lines   []string
}

func (f *failingLog) Write(p []byte) (int, error) {
	if f.failFor > 0 {
		f.failFor--
		f.dropped++
		return 0, syscall.ENOSPC
	}
	f.lines = append(f.lines, string(p))
	return len(p), nil
}

func (f *failingLog) Dropped() uint64 { return f.dropped }

// TestPipelineReportsWriteLoss: records a log dropped are reported as lost
// (cause write-error) once it writes again, and the pipeline says when
// writing failed and when it recovered.
func TestPipelineReportsWriteLoss(t *testing.T) {
	out := &failingLog{failFor: 3}
	var heard []error
	c := &clock{t: t0}
	p := New(Config{Now: c.now, Node: "n1", OnWriteError: func(err error) { heard = append(heard, err) }}, out, nil, fakeResolver{origins}, Sources{})
	p.lastTick = t0
	for i := range 5 {
		p.conn(ct(flows.ConnDestroy, uint32(i+1), web, api, 8443, mark(segment.Allowed, 1), t0, t0.Add(time.Second), 1000))
	}
	p.tick(t0.Add(time.Minute), false)
	var lost, flowsWritten int
	for _, l := range out.lines {
		var r flow.Record
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatal(err)
		}
		switch {
		case r.Kind == flow.KindLost && r.Cause == flow.CauseWriteError && r.Unit == flow.UnitRecords:
			lost += int(r.Count)
		case r.Kind == flow.KindFlow:
			flowsWritten++
		}
	}
	if flowsWritten != 2 || lost != 3 {
		t.Fatalf("%d flow records written and %d reported lost (write-error); want 2 and 3", flowsWritten, lost)
	}
	if len(heard) != 2 || heard[0] == nil || heard[1] != nil {
		t.Fatalf("heard %v, want the failure then the recovery", heard)
	}
}
