package node

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// dirWatch says when a policy directory may have changed: an inotify
// watch on the directory and each of its subdirectories marks it dirty
// on any event (and on a lost event: the kernel's queue overflowed).
// Without it, the agent would read and hash every policy file at every
// poll, on a node whose policy changes a few times a day.
type dirWatch struct {
	dir   string
	log   *slog.Logger
	w     *fsnotify.Watcher
	dirty atomic.Bool
	last  atomic.Int64 // when the last event came (Unix nanoseconds)
	done  chan struct{}
}

// settle is how long a policy directory must be quiet before a read: a
// file set being written (a copy of many files, an editor's save) is read
// once it is complete, not half-way. Writers that replace files by rename
// are complete at once.
const settle = 300 * time.Millisecond

// watchDir starts a watch for dir. It is marked until the first read
// (it cannot tell what happened before it began); the reads add the
// directories to it (add). It returns nil (and logs why) when inotify is
// not available: the caller then reads the directory on every check.
func watchDir(dir string, log *slog.Logger) *dirWatch {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		log.Warn("cannot watch the policy directory; it is read on every check", "dir", dir, "err", err)
		return nil
	}
	d := &dirWatch{dir: dir, log: log, w: w, done: make(chan struct{})}
	d.dirty.Store(true)
	go d.run()
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
			d.last.Store(time.Now().UnixNano())
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

// take reports whether something may have changed since the last take
// and the directory has been quiet for settle since, and then clears the
// mark: an event during the read that follows marks it again, so the next
// check reads again. While events keep coming it reports false.
func (d *dirWatch) take() bool {
	if !d.dirty.Load() || time.Since(time.Unix(0, d.last.Load())) < settle {
		return false
	}
	return d.dirty.Swap(false)
}

// mark makes the next check read the directory (a read failed). A nil
// watch does nothing: without one, every check reads.
func (d *dirWatch) mark() {
	if d != nil {
		d.dirty.Store(true)
	}
}

// add watches dir, a directory the read is about to enter (inotify
// watches are not recursive: each read adds the subdirectories made since
// the last one; adding a watched one again changes nothing). One that
// cannot be watched leaves the watch marked, so it is read on every check
// until it can be. A nil watch does nothing.
func (d *dirWatch) add(dir string) {
	if d == nil {
		return
	}
	if err := d.w.Add(dir); err != nil {
		d.dirty.Store(true)
		d.log.Debug("policy directory watch", "dir", dir, "err", err)
	}
}

// Close stops the watch.
func (d *dirWatch) Close() {
	_ = d.w.Close()
	<-d.done
}
