// Package reload keeps a value that is built from files on disk (a TLS
// key pair, a token file) up to date with those files, so an operator can
// replace them without restarting the process.
//
// A Value checks the files' modification time and size at most once per
// interval, on the caller's goroutine when it asks for the value: it owns
// no goroutine, so there is nothing to stop. Reload forces a read (on
// SIGHUP, say).
//
// # Invariants
//
//   - Get always returns a value that loaded without error: the first
//     load must succeed (New fails otherwise), and a later load that fails
//     (a half-written file, a key that does not match its certificate)
//     keeps the previous value and is logged; the files are read again
//     once they change again.
//   - A load runs while no other load of the same Value runs.
package reload

import (
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Value is a value of type T loaded from a set of files and reloaded when
// they change. Its methods may be called concurrently.
type Value[T any] struct {
	paths    []string
	load     func() (T, error)
	interval time.Duration
	log      *slog.Logger

	cur atomic.Pointer[T]
	// due is when Get next looks at the files, in Unix nanoseconds.
	due atomic.Int64

	mu sync.Mutex
	// stamps are the files' stamps at the last load that was tried.
	// Guarded by mu, which also serializes loads.
	stamps []stamp
}

// stamp is what tells that a file changed: its modification time and size.
type stamp struct {
	mod  time.Time
	size int64
	err  bool // the file could not be stat'ed
}

// New loads the value once with load and returns a Value that loads it
// again when any of paths changes, looking at most once per interval (0:
// on every Get). It fails when the first load does.
func New[T any](load func() (T, error), interval time.Duration, log *slog.Logger, paths ...string) (*Value[T], error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	v := &Value[T]{paths: paths, load: load, interval: interval, log: log}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stamps = v.statLocked()
	x, err := load()
	if err != nil {
		return nil, err
	}
	v.cur.Store(&x)
	v.due.Store(time.Now().Add(interval).UnixNano())
	return v, nil
}

// Get returns the current value, after loading it again if the files
// changed since the last load and the interval has passed since the last
// look.
func (v *Value[T]) Get() T {
	now := time.Now().UnixNano()
	if due := v.due.Load(); now >= due && v.due.CompareAndSwap(due, now+int64(v.interval)) {
		v.mu.Lock()
		if st := v.statLocked(); !slices.Equal(st, v.stamps) {
			v.stamps = st
			if err := v.loadLocked(); err != nil {
				v.log.Error("reload: files changed but did not load; keeping the previous version", "files", v.paths, "err", err)
			}
		}
		v.mu.Unlock()
	}
	return *v.cur.Load()
}

// Reload loads the value again now, whether or not the files changed. On
// error the previous value stays.
func (v *Value[T]) Reload() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.stamps = v.statLocked()
	return v.loadLocked()
}

func (v *Value[T]) loadLocked() error {
	x, err := v.load()
	if err != nil {
		return fmt.Errorf("reload %v: %w", v.paths, err)
	}
	v.cur.Store(&x)
	v.log.Info("reload: loaded", "files", v.paths)
	return nil
}

func (v *Value[T]) statLocked() []stamp {
	st := make([]stamp, len(v.paths))
	for i, p := range v.paths {
		fi, err := os.Stat(p)
		if err != nil {
			st[i].err = true
			continue
		}
		st[i] = stamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return st
}
