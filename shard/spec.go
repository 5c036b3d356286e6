package shard

import (
	"fmt"
	"time"
	"unicode/utf8"
)

// Limits of a timer's fields, from the public contract.
const (
	MaxNamespaceLen = 64
	MaxTopicLen     = 128
	MaxIDLen        = 256
)

// Spec is what a client asks for when it schedules a timer.
type Spec struct {
	Namespace string
	ID        string
	Topic     string
	// Due is when the timer is due. When zero, Delay from the shard's
	// clock is used instead.
	Due time.Time
	// Delay is how long from now the timer is due, when Due is zero.
	Delay   time.Duration
	Payload []byte
	// Interval, when non-zero, repeats the timer: after an occurrence is
	// acknowledged the next is due Interval later.
	Interval time.Duration
	// Req names the logical call (a hash of its request id), the same on
	// every retry of it; 0 for none. A Schedule whose one-shot timer was
	// acked within Config.RetryWindow of it is answered from the timer's
	// tombstone (in the owner's memory) when retried with the same Req,
	// instead of creating the timer again.
	Req uint64
}

// Move is one Reschedule item.
type Move struct {
	ID string
	// Due is the new due time; when zero, Delay from now.
	Due   time.Time
	Delay time.Duration
	// Req names the logical call as Spec.Req does: a move of a timer
	// whose last Schedule or Reschedule had the same Req is a retry of
	// that call and changes nothing.
	Req uint64
}

// State is a timer's place in its life.
type State uint8

const (
	// Pending waits for its due time (or, when due, for a subscriber).
	Pending State = iota + 1
	// InFlight was delivered and waits for its ack.
	InFlight
	// Dead exhausted its attempts; it waits for a replay or a cancel.
	Dead
)

func (s State) String() string {
	switch s {
	case Pending:
		return "PENDING"
	case InFlight:
		return "IN_FLIGHT"
	case Dead:
		return "DEAD"
	}
	return fmt.Sprintf("State(%d)", s)
}

// Timer is a snapshot of a timer and its state.
type Timer struct {
	Spec
	// Spec.Due is the due time of the current occurrence; Spec.Delay is
	// the delay the timer was created with, if it was.
	State State
	// Attempts counts delivery attempts of the current occurrence.
	Attempts uint32
	Shard    uint32
	Created  time.Time
	// LastAttempt is when the last attempt was sent; zero if none.
	LastAttempt time.Time
	// Reason says why a dead timer died.
	Reason string
}

// Result is the outcome of one item of a batch call.
type Result struct {
	// Due is the timer's due time after the call (Schedule, Reschedule,
	// Replay); zero on error.
	Due time.Time
	// Err is nil on success, or wraps one of the package's errors.
	Err error
}

// ValidNamespace checks a namespace: [A-Za-z0-9._-]{1,64}. Errors wrap
// ErrInvalidNamespace.
func ValidNamespace(ns string) error {
	if !validName(ns, MaxNamespaceLen) {
		return fmt.Errorf("%w: %q must match [A-Za-z0-9._-]{1,%d}", ErrInvalidNamespace, ns, MaxNamespaceLen)
	}
	return nil
}

// ValidTopic checks a topic: [A-Za-z0-9._-]{1,128}. Errors wrap
// ErrInvalidTopic.
func ValidTopic(topic string) error {
	if !validName(topic, MaxTopicLen) {
		return fmt.Errorf("%w: %q must match [A-Za-z0-9._-]{1,%d}", ErrInvalidTopic, topic, MaxTopicLen)
	}
	return nil
}

// ValidID checks a timer id: 1 to 256 bytes of UTF-8. Errors wrap
// ErrInvalidID.
func ValidID(id string) error {
	if len(id) == 0 || len(id) > MaxIDLen {
		return fmt.Errorf("%w: must be 1 to %d bytes, got %d", ErrInvalidID, MaxIDLen, len(id))
	}
	if !utf8.ValidString(id) {
		return fmt.Errorf("%w: must be valid UTF-8", ErrInvalidID)
	}
	return nil
}

// validName reports whether s matches [A-Za-z0-9._-]{1,max}.
func validName(s string, max int) bool {
	if len(s) == 0 || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// ValidateSpec checks everything about spec that does not depend on time
// or on stored timers, against the limits of cfg. Errors wrap the
// package's ErrInvalid… errors and name the field.
func (c Config) ValidateSpec(spec *Spec) error {
	if err := ValidNamespace(spec.Namespace); err != nil {
		return fmt.Errorf("namespace: %w", err)
	}
	if err := ValidID(spec.ID); err != nil {
		return fmt.Errorf("id: %w", err)
	}
	if err := ValidTopic(spec.Topic); err != nil {
		return fmt.Errorf("topic: %w", err)
	}
	if len(spec.Payload) > c.MaxPayload {
		return fmt.Errorf("payload: %w: %d bytes exceeds the limit of %d", ErrInvalidPayload, len(spec.Payload), c.MaxPayload)
	}
	if spec.Interval != 0 && (spec.Interval < c.MinInterval || spec.Interval%time.Millisecond != 0) {
		return fmt.Errorf("interval: %w: must be 0 or a whole number of milliseconds >= %v, got %v", ErrInvalidInterval, c.MinInterval, spec.Interval)
	}
	if spec.Due.IsZero() && spec.Delay < 0 {
		return fmt.Errorf("delay: %w: negative delay %v", ErrInvalidDue, spec.Delay)
	}
	return nil
}

// ResolveDue returns the due time (unix ms, rounded up) of due, or of
// delay from now, checked against the horizon. Rounding now + delay up,
// not now alone, keeps a delayed timer from coming due before the delay
// has passed.
func (c Config) ResolveDue(due time.Time, delay time.Duration, now time.Time) (int64, error) {
	if due.IsZero() {
		if delay < 0 {
			return 0, fmt.Errorf("delay: %w: negative delay %v", ErrInvalidDue, delay)
		}
		if delay > c.MaxHorizon {
			return 0, fmt.Errorf("delay: %w: %v is beyond the horizon of %v", ErrInvalidDue, delay, c.MaxHorizon)
		}
		return ceilMilli(now.Add(delay)), nil
	}
	ms := ceilMilli(due)
	if ms-ceilMilli(now) > c.MaxHorizon.Milliseconds() {
		return 0, fmt.Errorf("due_time: %w: %v is beyond the horizon of %v from now", ErrInvalidDue, due.UTC().Format(time.RFC3339Nano), c.MaxHorizon)
	}
	return ms, nil
}

// delayMilli is a delay in whole milliseconds, rounded up, as stored and
// compared for idempotency.
func delayMilli(d time.Duration) int64 {
	return (d + time.Millisecond - 1).Milliseconds()
}

// sameSpec reports whether a retried Schedule asks for what t holds. A
// spec given as a delay is compared by its delay in whole milliseconds,
// not the due time it resolved to, since a retry arrives later: another
// delay is another spec, even one that would resolve to the same time.
func sameSpec(tb *table, t *timer, spec *Spec) bool {
	rec := &t.rec
	if tb.topic(t) != spec.Topic || rec.Interval != spec.Interval.Milliseconds() || string(tb.payload(t)) != string(spec.Payload) {
		return false
	}
	if spec.Due.IsZero() {
		return rec.Delay == delayMilli(spec.Delay)
	}
	return rec.Delay < 0 && rec.SpecDue == ceilMilli(spec.Due)
}
