package main

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"
)

// wallOffsetEnv names a test hook, not a setting: the file it names holds
// an offset (a Go duration such as +5m or -3m; empty is 0) that the node
// adds to the machine's wall clock, as if an operator or NTP had stepped
// the node's clock, without stepping the machine's. The fault suite
// (package chaos) steps one node's clock with it. The file is read again
// at most every wallOffsetReread, only by the clock's once-a-second check
// of the wall: nothing on the path of a request or a timer reads it.
const wallOffsetEnv = "TIMERD_TEST_WALL_OFFSET_FILE"

// wallOffsetReread is how stale the offset may be.
const wallOffsetReread = 50 * time.Millisecond

// offsetWall is the machine's wall clock plus the offset in a file.
type offsetWall struct {
	path string

	mu   sync.Mutex
	off  time.Duration // guarded by mu
	read time.Time     // guarded by mu: when the file was last read
}

// newOffsetWall reads the offset in path, which must hold one.
func newOffsetWall(path string) (*offsetWall, error) {
	off, err := readWallOffset(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", wallOffsetEnv, err)
	}
	return &offsetWall{path: path, off: off, read: time.Now()}, nil
}

// Now returns the machine's wall clock plus the offset, without a
// monotonic reading (it is a wall reading). A file that cannot be read or
// parsed (being rewritten) keeps the last offset.
func (w *offsetWall) Now() time.Time {
	now := time.Now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if now.Sub(w.read) >= wallOffsetReread {
		w.read = now
		if off, err := readWallOffset(w.path); err == nil {
			w.off = off
		}
	}
	return now.Add(w.off).Round(0)
}

// readWallOffset reads the offset in path.
func readWallOffset(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return 0, nil
	}
	off, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: the offset must be a duration such as +5m or -3m: %w", path, err)
	}
	return off, nil
}
