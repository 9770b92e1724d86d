package node

import (
	"io/fs"
	"log/slog"
	"path/filepath"
	"sync/atomic"

	"github.com/fsnotify/fsnotify"
)

// dirWatch says when a policy directory may have changed: an inotify
// watch on the directory and each of its subdirectories marks it dirty
// on any event (and on a lost event: the kernel's queue overflowed).
// Without it, the agent read and hashed every policy file five times a
// second, on a node whose policy changes a few times a day: under the
// flow-log benchmark's load that was a tenth of the agent's CPU time.
type dirWatch struct {
	dir   string
	log   *slog.Logger
	w     *fsnotify.Watcher
	dirty atomic.Bool
	done  chan struct{}
}

// watchDir starts watching dir. It returns nil (and logs why) when the
// watch cannot be set up: the caller then reads the directory on every
// check, as without a watch.
func watchDir(dir string, log *slog.Logger) *dirWatch {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("cannot watch the policy directory; it is read on every check", "dir", dir, "err", err)
		return nil
	}
	d := &dirWatch{dir: dir, log: log, w: w, done: make(chan struct{})}
	d.dirty.Store(true)
	go d.run()
	d.rearm()
	return d
}

func (d *dirWatch) run() {
	defer close(d.done)
	for {
		select {
		case _, ok := <-d.w.Events:
			if !ok {
				return
			}
			d.dirty.Store(true)
		case err, ok := <-d.w.Errors:
			if !ok {
				return
			}
			// ErrEventOverflow or a read error: events may be missing.
			d.dirty.Store(true)
			d.log.Debug("policy directory watch", "dir", d.dir, "err", err)
		}
	}
}

// take reports whether something may have changed since the last take,
// and clears the mark: an event during the read that follows marks it
// again, so the next check reads again.
func (d *dirWatch) take() bool { return d.dirty.Swap(false) }

// rearm watches the directory and every subdirectory, including ones
// created since the last call (inotify watches are not recursive). A
// directory that cannot be watched leaves the source dirty, so it is read
// on every check until the watch succeeds.
func (d *dirWatch) rearm() {
	// The directory itself first: WalkDir does not descend into a root
	// that is a symbolic link, inotify follows it.
	err := d.w.Add(d.dir)
	if err == nil {
		err = filepath.WalkDir(d.dir, func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if e.IsDir() && path != d.dir {
				return d.w.Add(path)
			}
			return nil
		})
	}
	if err != nil {
		d.dirty.Store(true)
		d.log.Debug("policy directory watch", "dir", d.dir, "err", err)
	}
}

// Close stops the watch.
func (d *dirWatch) Close() {
	_ = d.w.Close()
	<-d.done
}
