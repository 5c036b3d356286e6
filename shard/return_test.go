package shard

import (
	"testing"
)

// TestReturnUnsent: an attempt returned as never sent does not count: the
// timer is pending again at once with the attempts it had, however often
// it comes back, and a sent attempt returned after it still counts.
func TestReturnUnsent(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		cfg := e.config(0, "a", k)
		cfg.MaxAttempts = 2
		s := e.openConfig(t, cfg)
		mustSchedule(t, s, spec("x", 0))
		e.advance(s, 0)
		d := k.take(t, 1)[0]
		id, _ := ParseDeliveryID(d.ID)
		for range 2 * cfg.MaxAttempts {
			s.Return([]Attempt{{ID: id, Number: d.Attempt, Unsent: true}})
			s.settle()
			again := k.take(t, 1)[0] // at once, not after the ack timeout
			if again.ID != d.ID || again.Attempt != 1 {
				t.Fatalf("after an unsent Return got %+v, want attempt 1 again", again)
			}
		}
		// A sent attempt counts, and the next one to be returned unsent
		// leaves that count as it was.
		s.Return([]Attempt{{ID: id, Number: 1}})
		s.settle()
		if again := k.take(t, 1)[0]; again.Attempt != 2 {
			t.Fatalf("after a sent Return got attempt %d, want 2", again.Attempt)
		}
		s.Return([]Attempt{{ID: id, Number: 2, Unsent: true}})
		s.settle()
		if again := k.take(t, 1)[0]; again.Attempt != 2 {
			t.Fatalf("after an unsent Return of attempt 2 got attempt %d, want 2", again.Attempt)
		}
		mustState(t, s, "x", InFlight, 2)
		k.setOpen(false)
		s.Return([]Attempt{{ID: id, Number: 2, Unsent: true}})
		s.settle()
		tm := mustState(t, s, "x", Pending, 1)
		if tm.LastAttempt.IsZero() {
			t.Fatal("the sent attempt's time was lost")
		}
		if st := s.Stats(); st.InFlight != 0 || st.Dead != 0 {
			t.Fatalf("Stats = %+v", st)
		}
	})
}
