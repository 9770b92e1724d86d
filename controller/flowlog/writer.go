package flowlog

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
)

// LogFile writes JSON lines to a file rotated by size: when a record would
// take the file past MaxBytes, FILE.N-1 becomes FILE.N (FILE.N is
// removed), ..., FILE becomes FILE.1, and a new FILE begins. Path "-"
// writes to stdout, unrotated. Each Write must be whole lines (the
// pipeline writes one record per call), so rotation never splits one.
//
// A write error (a full disk) does not end the log: the lines buffered
// since the last flush are dropped and counted (Dropped), the file is
// closed, and the next write opens it again. (bufio's own error is
// sticky: kept, one error would fail every later write.)
type LogFile struct {
	path     string
	maxBytes int64
	keep     int

	mu      sync.Mutex
	f       *os.File
	w       *bufio.Writer
	size    int64  // the file's size with what w holds
	flushed int64  // the file's size after the last flush
	pending uint64 // lines in w not yet flushed to the file
	dropped atomic.Uint64
}

// OpenLog opens (appends to) path. maxBytes <= 0 disables rotation; keep
// is the number of rotated files kept (at least 1).
func OpenLog(path string, maxBytes int64, keep int) (*LogFile, error) {
	if keep < 1 {
		keep = 1
	}
	l := &LogFile{path: path, maxBytes: maxBytes, keep: keep}
	if path == "-" {
		// Shared by every log written to stdout, so that lines of the
		// flow and the alert logs never interleave mid-line.
		l.w = stdoutWriter
		return l, nil
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *LogFile) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("open flow log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat flow log: %w", err)
	}
	l.f, l.size, l.flushed = f, st.Size(), st.Size()
	l.w = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// stdoutWriter is the one buffer in front of stdout; writes of whole
// lines go through it under stdoutMu.
var (
	stdoutMu     sync.Mutex
	stdoutWriter = bufio.NewWriterSize(lockedStdout{}, 64<<10)
)

type lockedStdout struct{}

func (lockedStdout) Write(p []byte) (int, error) { return os.Stdout.Write(p) }

// Write appends p (one or more whole lines), rotating first when it would
// pass the size limit. A file that could not be reopened after a rotation
// is reopened on the next write.
func (l *LogFile) Write(p []byte) (int, error) {
	if l.path == "-" {
		stdoutMu.Lock()
		defer stdoutMu.Unlock()
		return l.w.Write(p)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lines := uint64(bytes.Count(p, []byte{'\n'}))
	if l.f == nil {
		if err := l.open(); err != nil {
			l.dropped.Add(lines)
			return 0, err
		}
	}
	if l.maxBytes > 0 && l.size > 0 && l.size+int64(len(p)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			l.dropped.Add(lines)
			return 0, err
		}
	}
	// Flush before the buffer would: then a failed write of the file
	// always loses exactly the lines counted in pending.
	if len(p) > l.w.Available() && l.w.Buffered() > 0 {
		if err := l.flush(); err != nil {
			l.dropped.Add(lines)
			return 0, err
		}
	}
	n, err := l.w.Write(p)
	l.size += int64(n)
	l.pending += lines
	if err != nil {
		return n, l.fail(err)
	}
	return n, nil
}

// Dropped is the number of lines dropped by write errors so far.
func (l *LogFile) Dropped() uint64 { return l.dropped.Load() }

// flush writes the buffer to the file; on an error the buffer is dropped.
func (l *LogFile) flush() error {
	if err := l.w.Flush(); err != nil {
		return l.fail(err)
	}
	l.pending, l.flushed = 0, l.size
	return nil
}

// fail drops the buffered lines (counted), cuts what part of them reached
// the file (no torn line stays), closes the file and leaves the log to be
// opened again by the next write.
func (l *LogFile) fail(err error) error {
	lost := l.pending
	l.dropped.Add(lost)
	l.pending, l.size = 0, l.flushed
	if l.f != nil {
		_ = l.f.Truncate(l.flushed)
		_ = l.f.Close()
	}
	l.f, l.w = nil, nil
	return fmt.Errorf("write %s: %w (%d records dropped)", l.path, err, lost)
}

// rotate renames the files and opens a new one. On failure the log is left
// closed (l.f nil) and the next write tries to open it again, so one bad
// moment (a full disk, a renamed directory) does not end the log.
func (l *LogFile) rotate() error {
	if err := l.flush(); err != nil {
		return fmt.Errorf("rotate flow log: %w", err)
	}
	cerr := l.f.Close()
	l.f = nil
	if cerr != nil {
		return fmt.Errorf("rotate flow log: %w", cerr)
	}
	_ = os.Remove(fmt.Sprintf("%s.%d", l.path, l.keep))
	for i := l.keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", l.path, i), fmt.Sprintf("%s.%d", l.path, i+1))
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("rotate flow log: %w", err)
	}
	return l.open()
}

// Flush writes buffered records to the file.
func (l *LogFile) Flush() error {
	if l.path == "-" {
		stdoutMu.Lock()
		defer stdoutMu.Unlock()
		return l.w.Flush()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	return l.flush()
}

// Close flushes and closes the file.
func (l *LogFile) Close() error {
	if l.path == "-" {
		return l.Flush()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	if err := l.flush(); err != nil {
		return err
	}
	err := l.f.Close()
	l.f, l.w = nil, nil
	return err
}

var _ io.WriteCloser = (*LogFile)(nil)
