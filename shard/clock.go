package shard

import "time"

// Clock is the shard's source of time. The shard reads it to decide what is
// due and to keep its lease; tests inject a clock they move by hand. Its
// methods may be called concurrently.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewAlarm returns an alarm that sends on its channel once d has
	// passed on this clock.
	NewAlarm(d time.Duration) Alarm
}

// Alarm is a Clock's one-shot timer, used by a single goroutine.
type Alarm interface {
	// C delivers the time when the alarm goes off.
	C() <-chan time.Time
	// Reset makes the alarm go off d from now, discarding any pending
	// one.
	Reset(d time.Duration)
	// Stop disarms the alarm.
	Stop()
}

// SystemClock is the wall clock of the machine.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewAlarm returns an alarm over a time.Timer.
func (SystemClock) NewAlarm(d time.Duration) Alarm { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (t sysTimer) C() <-chan time.Time { return t.t.C }

// Reset relies on Go 1.23 timer semantics: Reset discards a fire that was
// not received.
func (t sysTimer) Reset(d time.Duration) { t.t.Reset(d) }

func (t sysTimer) Stop() { t.t.Stop() }

// ceilMilli converts t to unix milliseconds, rounding up so that a timer is
// never treated as due before its exact due time.
func ceilMilli(t time.Time) int64 {
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return ms
}
