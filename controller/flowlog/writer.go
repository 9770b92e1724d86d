package flowlog

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync"
)

// LogFile writes JSON lines to a file rotated by size: when a record would
// take the file past MaxBytes, FILE.N-1 becomes FILE.N (FILE.N is
// removed), ..., FILE becomes FILE.1, and a new FILE begins. Path "-"
// writes to stdout, unrotated. Each Write must be whole lines (the
// pipeline writes one record per call), so rotation never splits one.
type LogFile struct {
	path     string
	maxBytes int64
	keep     int

	mu   sync.Mutex
	f    *os.File
	w    *bufio.Writer
	size int64
}

// OpenLog opens (appends to) path. maxBytes <= 0 disables rotation; keep
// is the number of rotated files kept (at least 1).
func OpenLog(path string, maxBytes int64, keep int) (*LogFile, error) {
	if keep < 1 {
		keep = 1
	}
	l := &LogFile{path: path, maxBytes: maxBytes, keep: keep}
	if path == "-" {
		l.w = bufio.NewWriterSize(os.Stdout, 64<<10)
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
	l.f, l.size = f, st.Size()
	l.w = bufio.NewWriterSize(f, 64<<10)
	return nil
}

// Write appends p, rotating first when it would pass the size limit.
func (l *LogFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f != nil && l.maxBytes > 0 && l.size > 0 && l.size+int64(len(p)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := l.w.Write(p)
	l.size += int64(n)
	return n, err
}

func (l *LogFile) rotate() error {
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("flush flow log: %w", err)
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("close flow log: %w", err)
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
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Flush()
}

// Close flushes and closes the file.
func (l *LogFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.w.Flush()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
	}
	return err
}

var _ io.WriteCloser = (*LogFile)(nil)
