package bench

import (
	"context"
	"math"
	"time"
)

// Pacer spaces a sequence of events at a steady rate from a start time:
// event i is due at Start + i/Rate. It is open loop: a caller that falls
// behind finds every event it owes due at once, so a stall in the target
// shows as lateness rather than as a lower offered rate (the coordinated
// omission a closed loop would hide). A Pacer is a value; its methods may
// be called concurrently.
type Pacer struct {
	// Start is when event 0 is due.
	Start time.Time
	// Rate is events per second; it must be positive.
	Rate float64
}

// At is when event i is due, rounded up to the millisecond: timerd keeps
// due times in whole ms, and a bench that asked for a fraction would see
// the rounding as lateness. It keeps Start's monotonic clock reading (see
// ceilMilli).
func (p Pacer) At(i int64) time.Time {
	ns := math.Ceil(float64(i) * 1e9 / p.Rate)
	return ceilMilli(p.Start.Add(time.Duration(ns)))
}

// ceilMilli rounds t's wall clock up to the next whole millisecond, the
// due time a target is sent. Unlike Truncate and Round it keeps t's
// monotonic clock reading: lateness is the monotonic time from the due
// time to the delivery, so that a step of the wall clock during a run
// (NTP, a VM resumed) shows as neither lateness nor early deliveries.
func ceilMilli(t time.Time) time.Time {
	// The remainder of a time before 1970 is negative: fold it into
	// [0, 1ms).
	rem := time.Duration((t.UnixNano()%1e6 + 1e6) % 1e6)
	if rem == 0 {
		return t
	}
	return t.Add(time.Millisecond - rem)
}

// Owed is the number of events due at or before now: the index of the
// first one still to come.
func (p Pacer) Owed(now time.Time) int64 {
	d := now.Sub(p.Start)
	if d < 0 {
		return 0
	}
	// floor(d*Rate)+1 events are due by now, but the product may round to
	// just below a whole number: start one higher. At rounds up to the ms,
	// so the last few of n may not be due yet.
	n := int64(math.Floor(d.Seconds()*p.Rate)) + 2
	for n > 0 && p.At(n-1).After(now) {
		n--
	}
	return n
}

// Clock is the time source of the loops that pace a run; tests give a
// fake one. Its methods may be called concurrently.
type Clock interface {
	Now() time.Time
	// Sleep waits for d or until ctx ends, and reports whether it waited
	// the whole d.
	Sleep(ctx context.Context, d time.Duration) bool
}

// wallClock is the real Clock.
type wallClock struct{}

func (wallClock) Now() time.Time { return time.Now() }

func (wallClock) Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// release hands out events 0 to n-1 in batches of up to size. Events go
// out lead ahead of their due times on clock c (a lead of 0 releases each
// as it comes due), and a batch goes once it is full or once its first
// event has waited linger past its release time, so a low rate still
// gets its events out on time in smaller batches. emit gets the half-open
// range [from, to); release stops early, returning false, when ctx ends
// or emit returns false.
func release(ctx context.Context, c Clock, p Pacer, n int64, size int, lead, linger time.Duration, emit func(from, to int64) bool) bool {
	for from := int64(0); from < n; {
		full := min(from+int64(size), n)
		now := c.Now()
		owed := p.Owed(now.Add(lead))
		lingered := !now.Add(lead).Before(p.At(from).Add(linger))
		if owed < full && !lingered {
			// Sleep until the batch fills or its first event has lingered.
			wake := min(p.At(full-1).Sub(now), p.At(from).Add(linger).Sub(now)) - lead
			if !c.Sleep(ctx, wake) {
				return false
			}
			continue
		}
		to := min(full, max(owed, from+1))
		if !emit(from, to) {
			return false
		}
		from = to
	}
	return true
}
