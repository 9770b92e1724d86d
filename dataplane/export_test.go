package dataplane

// SetBeforeDriftRead makes f run as each drift check of d starts reading
// the kernel.
func SetBeforeDriftRead(d *Dataplane, f func()) { d.beforeDriftRead = f }

// Locked reports whether d's lock is held (by someone else).
func Locked(d *Dataplane) bool {
	if d.mu.TryLock() {
		d.mu.Unlock()
		return false
	}
	return true
}
