package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/netseg/netseg/api/agent"
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

// failOpenRecord is the path of attachment a's fail-open record.
func failOpenRecord(stateDir string, a agent.Attachment) string {
	name := strings.ReplaceAll(a.ContainerID+"_"+a.IfName, "/", "_")
	return filepath.Join(stateDir, agent.FailOpenDir, name+".json")
}

// openUnsegmented gives ep a working, unsegmented network under
// failurePolicy open: its addresses go into the fail-open sets (accepted
// before the fail-closed catch-all) and ep is recorded for the agent to
// adopt. It returns what it could not do, for the warning.
func openUnsegmented(conf *Config, ep *agent.Endpoint) string {
	var notes []string
	path := failOpenRecord(conf.StateDir, ep.Attachment)
	b, err := json.Marshal(ep)
	if err == nil {
		err = os.MkdirAll(filepath.Dir(path), 0o755)
	}
	if err == nil {
		err = writeFileAtomic(path, b)
	}
	if err != nil {
		notes = append(notes, fmt.Sprintf("not recorded for the agent to adopt: %v", err))
	}
	switch err := setElements(ep.IPs, true, failOpenSet); {
	case errors.Is(err, errNoTable):
	case err != nil:
		notes = append(notes, fmt.Sprintf("addresses not opened (the node may drop its traffic): %v", err))
	}
	return strings.Join(notes, "; ")
}

// closeFailOpen removes a's fail-open record and its addresses from the
// fail-open sets, best effort (ADD that worked, DEL).
func closeFailOpen(conf *Config, a agent.Attachment) {
	path := failOpenRecord(conf.StateDir, a)
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var ep agent.Endpoint
	if err := json.Unmarshal(b, &ep); err == nil {
		if err := setElements(ep.IPs, false, failOpenSet); err != nil && !errors.Is(err, errNoTable) {
			fmt.Fprintf(Stderr, "netseg: note: close fail-open addresses %s: %v\n", strings.Join(ep.IPs, ","), err)
		}
	}
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		fmt.Fprintf(Stderr, "netseg: note: remove fail-open record: %v\n", err)
	}
}

// writeFileAtomic writes b to path by rename, so that the agent never
// reads half a record.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
