package shard

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// TestRetryAfterDelivery covers retries that arrive after the timer they
// were about has been delivered: with the same Req they change nothing
// at the owner that answered them; a new call (another Req) still acts.
func TestRetryAfterDelivery(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 5, "a", k)

		// Schedule, fire, ack, then the same Schedule retried.
		first := spec("once", time.Second)
		first.Req = 11
		mustSchedule(t, s, first)
		due := e.clock.Now().Add(time.Second)
		e.advance(s, time.Second)
		mustAck(t, s, k.take(t, 1)...)
		mustGone(t, s, "once")
		if r := s.Schedule(ctx, []Spec{first})[0]; r.Err != nil || !r.Due.Equal(due) {
			t.Fatalf("retried Schedule = %+v, want OK due %v", r, due)
		}
		mustGone(t, s, "once")
		e.advance(s, time.Second)
		k.none(t)

		// Reschedule to T, fire, then the same Reschedule retried: in
		// flight, then acked.
		mustSchedule(t, s, spec("moved", time.Hour))
		at := e.clock.Now().Add(time.Second).Truncate(time.Millisecond)
		move := Move{ID: "moved", Due: at, Req: 22}
		if r := s.Reschedule(ctx, "ns", []Move{move})[0]; r.Err != nil {
			t.Fatal(r.Err)
		}
		e.advance(s, time.Second)
		d := k.take(t, 1)[0]
		if r := s.Reschedule(ctx, "ns", []Move{move})[0]; r.Err != nil || !r.Due.Equal(at) {
			t.Fatalf("retried Reschedule while in flight = %+v, want OK due %v", r, at)
		}
		mustState(t, s, "moved", InFlight, 1)
		mustAck(t, s, d)
		mustGone(t, s, "moved")
		if r := s.Reschedule(ctx, "ns", []Move{move})[0]; r.Err != nil || !r.Due.Equal(at) {
			t.Fatalf("retried Reschedule after the ack = %+v, want OK due %v", r, at)
		}
		e.advance(s, 10*time.Second) // well inside the window
		k.none(t)

		// Tombstones live in the owner's memory: a new owner has none, so
		// a retry that reaches it after a change of owner acts as a new
		// call (a duplicate around a failure, which at least once
		// allows), while a retried Reschedule of a timer still there is
		// told by the Req in its record (TestRetryAlreadyThere).
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s = e.open(t, 5, "b", k)
		if n := goneCount(s); n != 0 {
			t.Fatalf("new owner holds %d tombstones, want 0", n)
		}
		if r := s.Reschedule(ctx, "ns", []Move{move})[0]; !errors.Is(r.Err, ErrNotFound) {
			t.Fatalf("retried Reschedule of an acked timer at the new owner: %v, want ErrNotFound", r.Err)
		}
		mustSchedule(t, s, first)
		mustState(t, s, "once", Pending, 0)
		e.advance(s, time.Second)
		mustAck(t, s, k.take(t, 1)...)

		// A new call of the same Schedule creates the timer again; one
		// with no Req as well.
		again := first
		again.Req = 12
		mustSchedule(t, s, again)
		mustState(t, s, "once", Pending, 0)
		e.advance(s, time.Second)
		mustAck(t, s, k.take(t, 1)...)
		plain := first
		plain.Req = 0
		mustSchedule(t, s, plain)
		mustState(t, s, "once", Pending, 0)
	})
}

// TestRetryBatchSameID checks that two moves of one id in one call both
// apply, and that a retry of the whole call changes nothing.
func TestRetryBatchSameID(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		mustSchedule(t, s, spec("x", time.Hour))
		t1 := e.clock.Now().Add(time.Minute).Truncate(time.Millisecond)
		t2 := t1.Add(time.Second)
		call := []Move{{ID: "x", Due: t1, Req: 5}, {ID: "x", Due: t2, Req: 5}}
		for attempt := range 2 {
			for i, r := range s.Reschedule(ctx, "ns", call) {
				if r.Err != nil {
					t.Fatalf("attempt %d item %d: %v", attempt, i, r.Err)
				}
			}
			if tm := mustState(t, s, "x", Pending, 0); !tm.Due.Equal(t2) {
				t.Fatalf("attempt %d: due %v, want %v", attempt, tm.Due, t2)
			}
		}
		e.advance(s, t2.Sub(e.clock.Now()))
		d := k.take(t, 1)[0]
		s.Reschedule(ctx, "ns", call)
		mustState(t, s, "x", InFlight, 1)
		mustAck(t, s, d)
		e.advance(s, time.Hour)
		k.none(t)
	})
}

// TestRetryAlreadyThere checks that a Reschedule to the due time a timer
// already has still records its Req, so that its retry after the timer
// fired does not move it again.
func TestRetryAlreadyThere(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		mustSchedule(t, s, spec("x", time.Second))
		tm := mustState(t, s, "x", Pending, 0)
		move := Move{ID: "x", Due: tm.Due, Req: 9}
		if r := s.Reschedule(ctx, "ns", []Move{move})[0]; r.Err != nil {
			t.Fatal(r.Err)
		}
		e.advance(s, time.Second)
		d := k.take(t, 1)[0]
		s.Reschedule(ctx, "ns", []Move{move})
		mustState(t, s, "x", InFlight, 1)
		mustAck(t, s, d)
		k.none(t)
	})
}

// TestRetryWindow checks that a tombstone is forgotten once the window has
// passed, that none is kept for a timer acked after the window, that none
// reaches the store, and that a window of 0 keeps none.
func TestRetryWindow(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		short, long := spec("short", time.Second), spec("long", 2*time.Minute)
		short.Req, long.Req = 1, 1
		mustSchedule(t, s, short, long)
		e.advance(s, time.Second)
		mustAck(t, s, k.take(t, 1)...)
		if n := goneCount(s); n != 1 {
			t.Fatalf("%d tombstones after acking a short timer, want 1", n)
		}
		var stored []string
		if err := e.st.Load(ctx, 0, s.Grant(), func(page []store.Record) error {
			for _, r := range page {
				stored = append(stored, r.ID)
			}
			return nil
		}); err != nil || !slices.Equal(stored, []string{"long"}) {
			t.Fatalf("the store holds %q (%v) after the ack, want only \"long\": a tombstone writes nothing", stored, err)
		}
		e.advance(s, 2*time.Minute)
		mustAck(t, s, k.take(t, 1)...)
		if n := goneCount(s); n != 0 {
			t.Fatalf("%d tombstones after the window, want 0", n)
		}
		// A retry after the window is a new call.
		mustSchedule(t, s, short)
		mustState(t, s, "short", Pending, 0)
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s = e.open(t, 0, "b", k)
		if n := goneCount(s); n != 0 || s.Stats().Timers != 1 {
			t.Fatalf("new owner loaded %d tombstones and %d timers, want 0 and 1", n, s.Stats().Timers)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}

		cfg := e.config(0, "c", k)
		cfg.RetryWindow = 0
		s = e.openConfig(t, cfg)
		e.advance(s, time.Second)
		mustAck(t, s, k.take(t, 1)...)
		if n := goneCount(s); n != 0 {
			t.Fatalf("%d tombstones with RetryWindow 0, want 0", n)
		}
		if r := s.Schedule(ctx, []Spec{short})[0]; r.Err != nil {
			t.Fatal(r.Err)
		}
		mustState(t, s, "short", Pending, 0)
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "nope", Due: e.clock.Now(), Req: 1}})[0]; !errors.Is(r.Err, ErrNotFound) {
			t.Fatalf("Reschedule of an unknown id = %v, want ErrNotFound", r.Err)
		}
	})
}

func goneCount(s *Shard) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.gone)
}
