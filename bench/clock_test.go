package bench

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// This file tests that lateness is measured on the monotonic clock, so
// that a step of the wall clock during a run changes none of it.

// wallStepped returns t with its wall clock reading moved by step (whole
// seconds) and its monotonic reading kept: what time.Now() returns after
// the wall clock has been stepped by step. The time package has no way to
// build one (every method that moves the wall moves the monotonic reading
// too, or strips it), so it moves the seconds in time.Time's wall word:
// with bit 63 (a monotonic reading is present) set, bits 30 to 62 hold
// the seconds since 1885. The result is checked, so a change of that
// layout fails the test rather than letting it pass for nothing.
func wallStepped(tb testing.TB, t time.Time, step time.Duration) time.Time {
	tb.Helper()
	if !hasMonotonic(t) || step%time.Second != 0 {
		tb.Fatalf("wallStepped(%v, %v): needs a monotonic reading and whole seconds", t, step)
	}
	s := t
	wall := (*uint64)(unsafe.Pointer(&s)) // wall is time.Time's first field
	*wall += uint64(int64(step/time.Second)) << 30
	if got := time.Duration(s.UnixNano() - t.UnixNano()); got != step || s.Sub(t) != 0 || !hasMonotonic(s) {
		tb.Fatalf("wallStepped: wall moved %v (want %v), monotonic moved %v (want 0): time.Time's layout changed", got, step, s.Sub(t))
	}
	return s
}

// hasMonotonic reports whether t carries a monotonic clock reading, which
// its String shows as "m=±seconds".
func hasMonotonic(t time.Time) bool { return strings.Contains(t.String(), " m=") }

func TestCeilMilliKeepsMonotonic(t *testing.T) {
	t.Parallel()
	now := time.Now()
	for _, tc := range []time.Time{now, now.Add(123456), now.Add(time.Millisecond - now.Sub(now.Truncate(time.Millisecond))),
		time.Unix(-1, 250_000), time.UnixMilli(1_700_000_000_123), time.Unix(1_700_000_000, 123_456_789)} {
		got := ceilMilli(tc)
		if got.Before(tc) || got.Sub(tc) >= time.Millisecond || got.UnixNano()%1e6 != 0 {
			t.Errorf("ceilMilli(%v) = %v, not the next whole ms", tc, got)
		}
		if hasMonotonic(tc) != hasMonotonic(got) {
			t.Errorf("ceilMilli(%v) = %v: the monotonic reading was not kept", tc, got)
		}
	}
}

// TestLatenessMonotonic builds a due time as a run does and a receive time
// read after the wall clock stepped: the lateness between them is the
// monotonic time, whichever way the wall went.
func TestLatenessMonotonic(t *testing.T) {
	t.Parallel()
	const late = 3 * time.Millisecond
	now := time.Now()
	for _, start := range []time.Time{now, ceilMilli(now.Add(2 * time.Second))} {
		p := Pacer{Start: start, Rate: 1000}
		for _, i := range []int64{0, 7, 999} {
			due := p.At(i)
			for _, step := range []time.Duration{-time.Hour, -time.Second, time.Second, time.Hour} {
				// A reading late after due, taken after the wall stepped.
				received := wallStepped(t, now.Add(due.Sub(now)+late), step)
				if got := received.Sub(due); got != late {
					t.Errorf("At(%d) = %v, received %v after a wall step of %v: lateness %v, want %v", i, due, received, step, got, late)
				}
			}
		}
	}
}

// steppedClock is the wall clock whose wall reading jumps by step once
// the monotonic clock has passed at: a wall clock step during a run.
type steppedClock struct {
	tb    testing.TB
	at    time.Time
	step  time.Duration
	steps atomic.Int64 // readings taken after the step
}

func (c *steppedClock) Now() time.Time {
	now := time.Now()
	if now.Before(c.at) {
		return now
	}
	c.steps.Add(1)
	return wallStepped(c.tb, now, c.step)
}

func (c *steppedClock) Sleep(ctx context.Context, d time.Duration) bool {
	return wallClock{}.Sleep(ctx, d)
}

// TestFireAcrossWallStep runs fire on the in-process peer while the
// bench's wall clock steps back by a minute halfway: no delivery reads as
// early and every one arrives, since both the peer's timers and the
// lateness run on the monotonic clock.
func TestFireAcrossWallStep(t *testing.T) {
	for _, step := range []time.Duration{-time.Minute, time.Minute} {
		t.Run(step.String(), func(t *testing.T) {
			c := &steppedClock{tb: t, at: time.Now().Add(400 * time.Millisecond), step: step}
			a := NewAfterFunc()
			defer a.Close()
			cfg := Config{Rate: 500, Duration: 600 * time.Millisecond, Lead: 200 * time.Millisecond, Drain: 5 * time.Second,
				Tick: 50 * time.Millisecond, Clock: c}
			rep, err := Run(context.Background(), "fire", a, cfg, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			if c.steps.Load() == 0 {
				t.Fatal("the run ended before the wall clock stepped")
			}
			if err := rep.Err(); err != nil {
				t.Fatalf("%v\n%+v", err, rep.Checks)
			}
			if lat := rep.Dists[0]; lat.Count != 300 || lat.Max >= float64(time.Minute/time.Millisecond) {
				t.Errorf("lateness over %d timers, max %v ms: the step shows in it", lat.Count, lat.Max)
			}
		})
	}
}
