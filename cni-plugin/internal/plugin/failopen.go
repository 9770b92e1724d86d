package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// FailOpenFile is the counter file, in the state directory, of ADDs that
// succeeded unprotected under failurePolicy "open". The agent exports it as
// a metric.
const FailOpenFile = "cni-fail-open"

// countFailOpen increments the counter in dir/FailOpenFile and returns the
// new value. Plugins run concurrently (one process per container), so the
// read-modify-write happens under an exclusive flock on the file itself.
func countFailOpen(dir string) (int64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, fmt.Errorf("create state dir: %w", err)
	}
	path := filepath.Join(dir, FailOpenFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		return 0, fmt.Errorf("lock %s: %w", path, err)
	}
	// Closing the file releases the lock.
	buf := make([]byte, 32)
	k, _ := f.ReadAt(buf, 0) // io.EOF on a short (or new) file is expected
	var n int64
	if s := strings.TrimSpace(string(buf[:k])); s != "" {
		if n, err = strconv.ParseInt(s, 10, 64); err != nil {
			return 0, fmt.Errorf("%s holds %q, not a count: %w", path, s, err)
		}
	}
	n++
	if err := f.Truncate(0); err != nil {
		return 0, fmt.Errorf("truncate %s: %w", path, err)
	}
	if _, err := f.WriteAt([]byte(strconv.FormatInt(n, 10)+"\n"), 0); err != nil {
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	return n, nil
}
