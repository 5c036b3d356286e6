package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// receiver takes the deliveries of a run and holds each to the time its
// timer must not fire before: it records lateness (received - that time)
// for first deliveries, counts early ones, redeliveries and strays.
// deliver may be called concurrently.
type receiver struct {
	r *run
	// expect is when timer seq must fire, on the bench's clock. It is set
	// (setExpect) once the run knows its times, before any timer of the
	// run is scheduled.
	expect atomic.Pointer[func(seq int64) time.Time]
	// onFirst, when set (setOnFirst, before the run's timers are
	// scheduled), is called with every first delivery of a timer of the
	// run and the time it was received.
	onFirst atomic.Pointer[func(seq int64, d Delivery, at time.Time)]
	// seen holds the timers delivered at least once.
	seen bitset
	n    int64 // timers in the run: seq is in [0, n)
	lat  *Latency
	// sent is the target's own lateness, Fired - Due, when it reports
	// Fired.
	sent      *Latency
	delivered *counter

	redelivered atomic.Int64
	// strays counts deliveries on the run's topic of ids it never
	// scheduled.
	strays atomic.Int64
	// base is when the receiver was made, on the run's clock; first and
	// last are the first and last receive times as ns since base plus one
	// (receivedAt turns them back), 0 before any delivery. Offsets from a
	// reading keep the monotonic clock, as lateness does.
	base        time.Time
	first, last atomic.Int64

	probeID   string
	probeOnce sync.Once
	probed    chan struct{}
}

func (r *run) newReceiver(n int64, delivered *counter) *receiver {
	return &receiver{r: r, seen: newBitset(n), n: n, lat: NewLatency(), sent: NewLatency(), delivered: delivered,
		base: r.clock.Now(), probeID: r.id + "-probe", probed: make(chan struct{})}
}

func (v *receiver) setExpect(f func(seq int64) time.Time) { v.expect.Store(&f) }

func (v *receiver) setOnFirst(f func(seq int64, d Delivery, at time.Time)) { v.onFirst.Store(&f) }

func (v *receiver) deliver(d Delivery) {
	now := v.r.clock.Now()
	if d.ID == v.probeID {
		v.probeOnce.Do(func() { close(v.probed) })
		return
	}
	seq, ok := v.r.seqOf(d.ID)
	expect := v.expect.Load()
	if !ok || seq >= v.n || expect == nil {
		v.strays.Add(1)
		return
	}
	if !v.seen.set(seq) {
		v.redelivered.Add(1)
		return
	}
	// Both times have the monotonic reading of the run's clock (when it
	// has one), so this is monotonic time: a wall clock step between the
	// due time and now does not change it.
	v.lat.Record(now.Sub((*expect)(seq)))
	if !d.Fired.IsZero() {
		v.sent.Record(d.Fired.Sub(d.Due))
	}
	ns := int64(now.Sub(v.base)) + 1
	v.first.CompareAndSwap(0, ns)
	for {
		last := v.last.Load()
		if ns <= last || v.last.CompareAndSwap(last, ns) {
			break
		}
	}
	if f := v.onFirst.Load(); f != nil {
		(*f)(seq, d, now)
	}
	v.delivered.add(1)
}

// subscribe starts the target's subscription on the run's topic and
// waits until a probe timer due at once has come through it, so that the
// measured timers never wait for a stream still being set up. The
// returned function ends the subscription; it is nil when the run failed
// (the failure is recorded).
func (r *run) subscribe(ctx context.Context, v *receiver) func() {
	f := r.t.(Firer)
	subCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- f.Subscribe(subCtx, r.topic, v.deliver) }()
	stop := func() {
		cancel()
		if err := <-errc; err != nil && ctx.Err() == nil {
			r.fail(fmt.Errorf("subscribe: %w", err))
		}
	}
	probe := []Timer{{ID: v.probeID, Topic: r.topic, Due: r.clock.Now().Truncate(time.Millisecond), Payload: r.payload}}
	if err := r.t.Schedule(ctx, probe); err != nil {
		stop()
		if ctx.Err() == nil {
			r.fail(fmt.Errorf("schedule the probe timer: %w", err))
		}
		return nil
	}
	wait, cancelWait := context.WithTimeout(ctx, 30*time.Second)
	defer cancelWait()
	select {
	case <-v.probed:
		return stop
	case err := <-errc:
		errc <- err // stop reads it, and fails the run on an error
		stop()
		if err == nil && ctx.Err() == nil {
			r.fail(errors.New("subscribe: the stream ended before the probe timer came"))
		}
	case <-wait.Done():
		stop()
		if ctx.Err() == nil {
			r.fail(errProbe)
		}
	}
	return nil
}

// drain waits until want timers have been delivered, until deadline on
// the run's clock, or until ctx ends.
func (v *receiver) drain(ctx context.Context, want int64, deadline time.Time) {
	v.drainUntil(ctx, func() bool { return v.delivered.n.Load() >= want }, deadline)
}

// drainUntil waits until done() holds, until deadline on the run's clock,
// or until ctx ends.
func (v *receiver) drainUntil(ctx context.Context, done func() bool, deadline time.Time) {
	for !done() && v.r.clock.Now().Before(deadline) {
		if !v.r.clock.Sleep(ctx, 10*time.Millisecond) {
			return
		}
	}
}

// since returns the time from t to the last delivery, 0 if none.
func (v *receiver) since(t time.Time) time.Duration {
	last := v.last.Load()
	if last == 0 {
		return 0
	}
	return v.receivedAt(last).Sub(t)
}

// receivedAt is the time of a receive time stored in first or last, which
// must not be 0.
func (v *receiver) receivedAt(off int64) time.Time { return v.base.Add(time.Duration(off - 1)) }

// dists returns the lateness distributions: as received, and as the
// target reports sending (when it does).
func (v *receiver) dists() []Dist {
	ds := []Dist{v.lat.Dist("lateness")}
	if v.sent.Count() > 0 {
		ds = append(ds, v.sent.Dist("lateness at send (target's clock)"))
	}
	return ds
}

// checks returns the early-delivery and stray checks of the run; missing
// is the number of timers that should have fired and did not, -1 when the
// run was cut short and it means nothing.
func (v *receiver) checks(missing int64) []Check {
	early, earliest := v.lat.Early()
	cs := []Check{{Name: "early deliveries", Got: early, Want: 0, Note: "received before due"}}
	if early > 0 {
		cs[0].Note = fmt.Sprintf("received before due, the earliest %v early", -earliest)
	}
	if missing >= 0 {
		cs = append(cs, Check{Name: "not delivered", Got: missing, Want: 0, Note: "scheduled, not cancelled, never received"})
	}
	return append(cs, Check{Name: "stray deliveries", Got: v.strays.Load(), Want: 0, Note: "ids the run never scheduled"})
}
