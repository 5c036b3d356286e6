package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/store"
)

var ctx = context.Background()

func TestScheduleFireAck(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 7, "a", k)
		mustSchedule(t, s, spec("t1", 10*time.Second))
		mustState(t, s, "t1", Pending, 0)

		e.advance(s, 10*time.Second-time.Millisecond)
		k.none(t) // never early
		e.advance(s, time.Millisecond)
		d := k.take(t, 1)[0]
		want := Delivery{ID: d.ID, Namespace: "ns", TimerID: "t1", Topic: "topic", Payload: []byte("payload t1"),
			Due: e.clock.Now(), Fired: e.clock.Now(), Attempt: 1, Shard: 7, Epoch: s.Epoch()}
		if !deliveryEqual(d, want) {
			t.Fatalf("delivery = %+v, want %+v", d, want)
		}
		if d.Fired.Before(d.Due) {
			t.Fatalf("fired %v before due %v", d.Fired, d.Due)
		}
		mustState(t, s, "t1", InFlight, 1)
		if st := s.Stats(); st.InFlight != 1 || st.Timers != 1 {
			t.Fatalf("Stats = %+v, want one timer in flight", st)
		}

		mustAck(t, s, d)
		mustGone(t, s, "t1")
		if st := s.Stats(); st.InFlight != 0 || st.Timers != 0 {
			t.Fatalf("Stats after the ack = %+v", st)
		}
		mustAck(t, s, d) // acks may be repeated
		// The ack is durable: a new owner finds nothing.
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		s2 := e.open(t, 7, "b", k)
		if got := s2.Stats().Timers; got != 0 {
			t.Fatalf("new owner loaded %d timers, want 0", got)
		}
		if s2.Epoch() <= s.Epoch() {
			t.Fatalf("epoch %d after %d, want greater", s2.Epoch(), s.Epoch())
		}
	})
}

func deliveryEqual(a, b Delivery) bool {
	return a.ID == b.ID && a.Namespace == b.Namespace && a.TimerID == b.TimerID && a.Topic == b.Topic &&
		bytes.Equal(a.Payload, b.Payload) && a.Due.Equal(b.Due) && a.Fired.Equal(b.Fired) &&
		a.Attempt == b.Attempt && a.Shard == b.Shard && a.Epoch == b.Epoch && a.Waited == b.Waited
}

func TestScheduleIdempotent(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		s := e.open(t, 0, "a", newSink(false))
		due := e.clock.Now().Add(time.Hour)
		abs := Spec{Namespace: "ns", ID: "abs", Topic: "topic", Due: due, Payload: []byte("p"), Interval: time.Minute}
		rel := spec("rel", time.Minute)
		mustSchedule(t, s, abs, rel)
		e.advance(s, 5*time.Second) // a retry arrives later
		mustSchedule(t, s, abs, rel)
		if tm := mustState(t, s, "rel", Pending, 0); !tm.Due.Equal(e.clock.Now().Add(time.Minute - 5*time.Second)) {
			t.Fatalf("retry moved the due time to %v", tm.Due)
		}
		changed := []struct {
			name string
			edit func(*Spec)
		}{
			{"topic", func(sp *Spec) { sp.Topic = "other" }},
			{"payload", func(sp *Spec) { sp.Payload = []byte("q") }},
			{"interval", func(sp *Spec) { sp.Interval = 2 * time.Minute }},
			{"due", func(sp *Spec) { sp.Due = sp.Due.Add(time.Millisecond) }},
			{"due as delay", func(sp *Spec) { sp.Due, sp.Delay = time.Time{}, time.Hour }},
		}
		for _, c := range changed {
			sp := abs
			c.edit(&sp)
			if r := s.Schedule(ctx, []Spec{sp})[0]; !errors.Is(r.Err, ErrExists) {
				t.Errorf("%s changed: Schedule = %v, want ErrExists", c.name, r.Err)
			}
		}
		other := rel
		other.Delay = 2 * time.Minute
		if r := s.Schedule(ctx, []Spec{other})[0]; !errors.Is(r.Err, ErrExists) {
			t.Errorf("delay changed: Schedule = %v, want ErrExists", r.Err)
		}
		if tm := mustState(t, s, "abs", Pending, 0); !tm.Due.Equal(due) || string(tm.Payload) != "p" || tm.Topic != "topic" {
			t.Fatalf("refused retries changed the timer: %+v", tm)
		}
	})
}

// TestValidation sends every kind of bad input and checks the error and
// that the stored timer with the same id is untouched.
func TestValidation(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		s := e.open(t, 0, "a", newSink(false))
		good := spec("x", time.Hour)
		mustSchedule(t, s, good)
		before, _ := s.Get("ns", "x")
		now := e.clock.Now()
		cases := []struct {
			name string
			edit func(*Spec)
			want error
		}{
			{"empty namespace", func(sp *Spec) { sp.Namespace = "" }, ErrInvalidNamespace},
			{"namespace with space", func(sp *Spec) { sp.Namespace = "a b" }, ErrInvalidNamespace},
			{"namespace with NUL", func(sp *Spec) { sp.Namespace = "a\x00b" }, ErrInvalidNamespace},
			{"namespace too long", func(sp *Spec) { sp.Namespace = strings.Repeat("n", 65) }, ErrInvalidNamespace},
			{"empty id", func(sp *Spec) { sp.ID = "" }, ErrInvalidID},
			{"id too long", func(sp *Spec) { sp.ID = strings.Repeat("i", 257) }, ErrInvalidID},
			{"id not UTF-8", func(sp *Spec) { sp.ID = "\xff" }, ErrInvalidID},
			{"empty topic", func(sp *Spec) { sp.Topic = "" }, ErrInvalidTopic},
			{"topic with slash", func(sp *Spec) { sp.Topic = "a/b" }, ErrInvalidTopic},
			{"topic too long", func(sp *Spec) { sp.Topic = strings.Repeat("t", 129) }, ErrInvalidTopic},
			{"payload too large", func(sp *Spec) { sp.Payload = make([]byte, 64<<10+1) }, ErrInvalidPayload},
			{"negative delay", func(sp *Spec) { sp.Delay = -time.Second }, ErrInvalidDue},
			{"delay beyond horizon", func(sp *Spec) { sp.Delay = 101 * 365 * 24 * time.Hour }, ErrInvalidDue},
			{"due beyond horizon", func(sp *Spec) { sp.Due = now.Add(101 * 365 * 24 * time.Hour) }, ErrInvalidDue},
			{"interval too short", func(sp *Spec) { sp.Interval = 999 * time.Millisecond }, ErrInvalidInterval},
			{"negative interval", func(sp *Spec) { sp.Interval = -time.Second }, ErrInvalidInterval},
			{"interval not whole ms", func(sp *Spec) { sp.Interval = time.Second + 1 }, ErrInvalidInterval},
		}
		for _, c := range cases {
			sp := good
			sp.Payload = []byte("other")
			c.edit(&sp)
			r := s.Schedule(ctx, []Spec{sp, spec("ok-"+strings.ReplaceAll(c.name, " ", "-"), time.Hour)})
			if !errors.Is(r[0].Err, c.want) {
				t.Errorf("%s: Schedule = %v, want %v", c.name, r[0].Err, c.want)
			}
			if r[1].Err != nil {
				t.Errorf("%s: the good item of the batch failed: %v", c.name, r[1].Err)
			}
		}
		// At the limits, accepted.
		edge := spec(strings.Repeat("i", 256), 100*365*24*time.Hour)
		edge.Namespace, edge.Topic = strings.Repeat("n", 64), strings.Repeat("t", 128)
		edge.Payload, edge.Interval = make([]byte, 64<<10), time.Second
		mustSchedule(t, s, edge)
		// Bad input to the other calls.
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "x", Delay: -1}})[0]; !errors.Is(r.Err, ErrInvalidDue) {
			t.Errorf("Reschedule with a negative delay = %v", r.Err)
		}
		if r := s.Reschedule(ctx, "n s", []Move{{ID: "x"}})[0]; !errors.Is(r.Err, ErrInvalidNamespace) {
			t.Errorf("Reschedule with a bad namespace = %v", r.Err)
		}
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "x", Due: now.Add(200 * 365 * 24 * time.Hour)}})[0]; !errors.Is(r.Err, ErrInvalidDue) {
			t.Errorf("Reschedule beyond the horizon = %v", r.Err)
		}
		if err := s.Cancel(ctx, "ns", []string{""})[0]; !errors.Is(err, ErrInvalidID) {
			t.Errorf("Cancel of an empty id = %v", err)
		}
		if _, err := s.Get("", "x"); !errors.Is(err, ErrInvalidNamespace) {
			t.Errorf("Get with an empty namespace = %v", err)
		}
		if r, n, _ := s.Replay(ctx, "ns", []string{"x"}, "", time.Time{}, -time.Second); n != 0 || !errors.Is(r[0].Err, ErrInvalidDue) {
			t.Errorf("Replay with a negative delay = %v, %d", r[0].Err, n)
		}
		after, _ := s.Get("ns", "x")
		if !timerEqual(before, after) {
			t.Fatalf("bad input changed the stored timer:\n before %+v\n after  %+v", before, after)
		}
		// And in the store: a new owner loads the same timer.
		s.Close(ctx)
		s2 := e.open(t, 0, "b", newSink(false))
		reloaded, err := s2.Get("ns", "x")
		if err != nil || !timerEqual(before, reloaded) {
			t.Fatalf("stored timer after bad input: %+v, %v; want %+v", reloaded, err, before)
		}
	})
}

func timerEqual(a, b Timer) bool {
	return a.Namespace == b.Namespace && a.ID == b.ID && a.Topic == b.Topic && a.Due.Equal(b.Due) &&
		a.Delay == b.Delay && bytes.Equal(a.Payload, b.Payload) && a.Interval == b.Interval &&
		a.State == b.State && a.Attempts == b.Attempts && a.Created.Equal(b.Created)
}

func TestReschedule(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		mustSchedule(t, s, spec("p", time.Minute), spec("f", time.Second))
		// A pending timer moves, earlier or later.
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "p", Delay: 2 * time.Second}})[0]; r.Err != nil || !r.Due.Equal(e.clock.Now().Add(2*time.Second)) {
			t.Fatalf("Reschedule = %+v", r)
		}
		e.advance(s, time.Second)
		old := k.take(t, 1)[0]
		if old.TimerID != "f" {
			t.Fatalf("got %q first, want f", old.TimerID)
		}
		// An in-flight timer goes back to pending with no attempts and a
		// new occurrence; a late ack of the old one is ignored.
		r := s.Reschedule(ctx, "ns", []Move{{ID: "f", Delay: 5 * time.Second}, {ID: "nope"}})
		if r[0].Err != nil || !errors.Is(r[1].Err, ErrNotFound) {
			t.Fatalf("Reschedule = %v, %v", r[0].Err, r[1].Err)
		}
		mustState(t, s, "f", Pending, 0)
		mustAck(t, s, old)
		mustState(t, s, "f", Pending, 0)
		e.advance(s, time.Second)
		p := k.take(t, 1)[0]
		if p.TimerID != "p" {
			t.Fatalf("got %q, want p at its new time", p.TimerID)
		}
		mustAck(t, s, p)
		e.advance(s, 4*time.Second-time.Millisecond)
		k.none(t)
		e.advance(s, time.Millisecond)
		d := k.take(t, 1)[0]
		if d.TimerID != "f" || d.Attempt != 1 || d.ID == old.ID {
			t.Fatalf("after reschedule got %+v, want f attempt 1 with a new delivery id", d)
		}
		// Rescheduling to the same due time is idempotent.
		mustSchedule(t, s, spec("same", time.Hour))
		tm, _ := s.Get("ns", "same")
		for range 2 {
			if r := s.Reschedule(ctx, "ns", []Move{{ID: "same", Due: tm.Due}})[0]; r.Err != nil {
				t.Fatal(r.Err)
			}
		}
	})
}

func TestCancel(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		mustSchedule(t, s, spec("pending", time.Second), spec("inflight", time.Millisecond), spec("keep", time.Second))
		e.advance(s, time.Millisecond)
		d := k.take(t, 1)[0]
		errs := s.Cancel(ctx, "ns", []string{"pending", "inflight", "unknown", "pending"})
		if errs[0] != nil || errs[1] != nil || !errors.Is(errs[2], ErrNotFound) || !errors.Is(errs[3], ErrNotFound) {
			t.Fatalf("Cancel = %v", errs)
		}
		mustAck(t, s, d) // an ack of a cancelled timer has no effect
		e.advance(s, time.Hour)
		if got := k.take(t, 1)[0]; got.TimerID != "keep" {
			t.Fatalf("got %q, want only keep", got.TimerID)
		}
		e.advance(s, time.Hour)
		k.none(t)
		mustGone(t, s, "pending")
		mustGone(t, s, "inflight")
	})
}

func TestRedeliveryAndDeadLetters(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		cfg := e.config(0, "a", k)
		cfg.MaxAttempts = 3
		cfg.AckTimeout = time.Second
		cfg.BackoffMin, cfg.BackoffMax = 100*time.Millisecond, 150*time.Millisecond
		s := e.openConfig(t, cfg)
		mustSchedule(t, s, spec("r", 0), spec("other", time.Hour))
		e.advance(s, 0)
		first := k.take(t, 1)[0]
		// Unacked: redelivered after the ack timeout plus a backoff that
		// doubles (100ms, then capped at 150ms), same delivery id.
		steps := []struct {
			attempt uint32
			backoff time.Duration
		}{{2, 100 * time.Millisecond}, {3, 150 * time.Millisecond}}
		for _, st := range steps {
			e.advance(s, time.Second) // ack timeout
			k.none(t)
			mustState(t, s, "r", Pending, st.attempt-1)
			e.advance(s, st.backoff-time.Millisecond)
			k.none(t)
			e.advance(s, time.Millisecond)
			d := k.take(t, 1)[0]
			if d.ID != first.ID || d.Attempt != st.attempt || !d.Due.Equal(first.Due) {
				t.Fatalf("redelivery %+v, want id %s attempt %d due %v", d, first.ID, st.attempt, first.Due)
			}
		}
		e.advance(s, time.Second)
		tm := mustState(t, s, "r", Dead, 3)
		if tm.Reason == "" {
			t.Fatal("dead letter has no reason")
		}
		e.advance(s, time.Minute)
		k.none(t)
		mustAck(t, s, first) // an ack of a dead letter has no effect
		mustState(t, s, "r", Dead, 3)
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "r"}})[0]; !errors.Is(r.Err, ErrDead) {
			t.Fatalf("Reschedule of a dead letter = %v, want ErrDead", r.Err)
		}

		dead, more, _ := s.DeadLetters("ns", "", "", 10)
		if len(dead) != 1 || more || dead[0].ID != "r" || dead[0].LastAttempt.IsZero() {
			t.Fatalf("DeadLetters = %+v, %v", dead, more)
		}
		if dead, _, _ := s.DeadLetters("ns", "other-topic", "", 10); len(dead) != 0 {
			t.Fatalf("DeadLetters of another topic = %+v", dead)
		}
		// Dead letters survive a change of owner.
		s.Close(ctx)
		s = e.open(t, 0, "b", k)
		mustState(t, s, "r", Dead, 3)

		res, n, _ := s.Replay(ctx, "ns", []string{"r", "other", "none"}, "", time.Time{}, time.Second)
		if n != 1 || res[0].Err != nil || !errors.Is(res[1].Err, ErrNotDead) || !errors.Is(res[2].Err, ErrNotFound) {
			t.Fatalf("Replay = %v, %v, %v (%d)", res[0].Err, res[1].Err, res[2].Err, n)
		}
		mustState(t, s, "r", Pending, 0)
		if _, n, _ := s.Replay(ctx, "ns", []string{"r"}, "", time.Time{}, 0); n != 0 {
			t.Fatal("a replayed timer was replayed twice")
		}
		e.advance(s, time.Second)
		d := k.take(t, 1)[0]
		if d.TimerID != "r" || d.Attempt != 1 || d.ID == first.ID {
			t.Fatalf("replayed delivery %+v, want r attempt 1 with a new id", d)
		}
		mustAck(t, s, d)
		mustGone(t, s, "r")
	})
}

func TestReplayAll(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		cfg := e.config(0, "a", k)
		cfg.MaxAttempts = 1
		s := e.openConfig(t, cfg)
		for i := range 5 {
			sp := spec(fmt.Sprintf("d%d", i), 0)
			if i%2 == 1 {
				sp.Topic = "odd"
			}
			mustSchedule(t, s, sp)
		}
		other := spec("d0", 0) // another namespace's dead letter, of the same id
		other.Namespace = "ns2"
		mustSchedule(t, s, other)
		e.advance(s, 0)
		k.take(t, 6)
		e.advance(s, cfg.AckTimeout)
		if got := s.Stats().Dead; got != 6 {
			t.Fatalf("%d dead letters, want 6", got)
		}
		page, more, _ := s.DeadLetters("ns", "", "", 2)
		if len(page) != 2 || !more || page[0].ID != "d0" || page[1].ID != "d1" {
			t.Fatalf("first page = %v, %v", page, more)
		}
		for _, limit := range []int{0, -1} { // taken as 1
			if page, more, _ := s.DeadLetters("ns", "", "", limit); len(page) != 1 || !more {
				t.Fatalf("DeadLetters(limit %d) = %d letters, more %v", limit, len(page), more)
			}
		}
		page, more, _ = s.DeadLetters("ns", "", "d1", 10)
		if len(page) != 3 || more || page[0].ID != "d2" {
			t.Fatalf("second page = %v, %v", page, more)
		}
		if _, n, _ := s.Replay(ctx, "ns", nil, "odd", time.Time{}, 0); n != 2 {
			t.Fatalf("Replay(topic odd) replayed %d, want 2", n)
		}
		e.advance(s, 0)
		if got := ids(k.take(t, 2)); !slices.Equal(got, []string{"d1", "d3"}) {
			t.Fatalf("replayed %v", got)
		}
		if _, n, _ := s.Replay(ctx, "ns", nil, "", time.Time{}, 0); n != 3 {
			t.Fatalf("Replay(all) replayed %d, want 3", n)
		}
		if page, _, _ := s.DeadLetters("ns2", "", "", 10); len(page) != 1 || s.Stats().Dead != 1 {
			t.Fatalf("after replaying ns: ns2 has %d dead letters, the shard %d; want 1 and 1", len(page), s.Stats().Dead)
		}
	})
}

// TestNoSubscriberWaits: a due timer whose topic has no subscriber waits,
// without using attempts, and goes out in order once one appears.
func TestNoSubscriberWaits(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(false)
		s := e.open(t, 0, "a", k)
		mustSchedule(t, s, spec("a", time.Second), spec("b", 2*time.Second), spec("c", 3*time.Second))
		e.advance(s, time.Hour)
		k.none(t)
		mustState(t, s, "a", Pending, 0)
		// Cancelled and rescheduled while waiting: it leaves the queue.
		if errs := s.Cancel(ctx, "ns", []string{"b"}); errs[0] != nil {
			t.Fatal(errs[0])
		}
		k.setOpen(true)
		s.Ready("ns", "topic")
		s.settle()
		got := k.take(t, 2)
		if got[0].TimerID != "a" || got[1].TimerID != "c" || got[0].Attempt != 1 {
			t.Fatalf("after Ready got %q, %q", got[0].TimerID, got[1].TimerID)
		}
		// They say they waited, so their lateness is not counted as the
		// shard's; a timer that comes due with a subscriber there did not.
		if !got[0].Waited || !got[1].Waited {
			t.Fatalf("timers that waited for a subscriber: Waited = %v, %v", got[0].Waited, got[1].Waited)
		}
		mustSchedule(t, s, spec("d", time.Second))
		e.advance(s, time.Second)
		if d := k.take(t, 1)[0]; d.TimerID != "d" || d.Waited {
			t.Fatalf("a timer due with a subscriber there: %q Waited = %v", d.TimerID, d.Waited)
		}
		k.none(t)
	})
}

func TestRepeating(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		sp := spec("rep", 10*time.Second)
		sp.Interval = 10 * time.Second
		mustSchedule(t, s, sp)
		start := e.clock.Now()
		var prev string
		for i := 1; i <= 3; i++ {
			e.advance(s, 10*time.Second-time.Millisecond)
			k.none(t)
			e.advance(s, time.Millisecond)
			d := k.take(t, 1)[0]
			if !d.Due.Equal(start.Add(time.Duration(i)*10*time.Second)) || d.ID == prev {
				t.Fatalf("occurrence %d: due %v id %s", i, d.Due, d.ID)
			}
			prev = d.ID
			mustAck(t, s, d)
			mustState(t, s, "rep", Pending, 0)
		}
		// Occurrences missed while unacked are not delivered one by one.
		e.advance(s, 10*time.Second)
		d := k.take(t, 1)[0]
		e.advance(s, 2*time.Second)        // past the ack timeout
		e.advance(s, 100*time.Millisecond) // and the backoff
		if again := k.take(t, 1)[0]; again.ID != d.ID || again.Attempt != 2 {
			t.Fatalf("redelivery %+v, want attempt 2 of %s", again, d.ID)
		}
		e.advance(s, 32900*time.Millisecond) // 75s after the start
		mustAck(t, s, d)                     // the ack of attempt 1 covers attempt 2
		tm := mustState(t, s, "rep", Pending, 0)
		if want := start.Add(80 * time.Second); !tm.Due.Equal(want) { // acked at 75s
			t.Fatalf("re-armed for %v, want %v (the first occurrence after the ack)", tm.Due, want)
		}
	})
}

// TestReturn: deliveries whose stream ended come back at once with the
// next attempt, and the attempts count: a timer returned MaxAttempts
// times is a dead letter, so a payload that kills its consumers cannot
// loop for ever.
func TestReturn(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		cfg := e.config(0, "a", k)
		cfg.MaxAttempts = 3
		s := e.openConfig(t, cfg)
		mustSchedule(t, s, spec("x", 0))
		e.advance(s, 0)
		d := k.take(t, 1)[0]
		for attempt := uint32(2); attempt <= 4; attempt++ {
			id, _ := ParseDeliveryID(d.ID)
			// An older attempt's return is not this attempt's: ignored.
			s.Return([]Attempt{{ID: id, Number: d.Attempt - 1}})
			s.settle()
			k.none(t)
			s.Return([]Attempt{{ID: id, Number: d.Attempt}})
			s.settle()
			if attempt > cfg.MaxAttempts {
				k.none(t)
				mustState(t, s, "x", Dead, cfg.MaxAttempts)
				break
			}
			again := k.take(t, 1)[0] // at once, not after the ack timeout
			if again.ID != d.ID || again.Attempt != attempt {
				t.Fatalf("after Return got %+v, want attempt %d", again, attempt)
			}
			d = again
		}
		if st := s.Stats(); st.InFlight != 0 || st.Dead != 1 {
			t.Fatalf("Stats = %+v", st)
		}
	})
}

// TestBurst: more timers due in one millisecond than one step handles all
// go out exactly once, while calls interleave with the burst.
func TestBurst(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		const n = 3*maxStepFires + 17
		var specs []Spec
		for i := range n {
			specs = append(specs, spec(fmt.Sprintf("b%05d", i), time.Second))
		}
		mustSchedule(t, s, specs...)
		e.advance(s, time.Second)
		// Cancelled mid-burst: it goes out at most once, or not at all.
		errs := s.Cancel(ctx, "ns", []string{"b00000", fmt.Sprintf("b%05d", n-1)})
		got := map[string]int{}
		for _, d := range k.take(t, n-2) {
			got[d.TimerID]++
		}
		s.settle()
		for len(k.ch) > 0 {
			got[(<-k.ch).TimerID]++
		}
		for id, c := range got {
			if c != 1 {
				t.Fatalf("%s delivered %d times", id, c)
			}
		}
		if len(got) < n-2 || len(got) > n {
			t.Fatalf("%d distinct timers delivered, want %d to %d", len(got), n-2, n)
		}
		for i, err := range errs {
			if err != nil {
				t.Fatalf("Cancel mid-burst, item %d: %v", i, err)
			}
		}
		mustGone(t, s, "b00000")
	})
}

// TestRecovery: a crash (no flush, no release) and a new owner: exactly
// the unacked timers come back, those due fire at once, none early.
func TestRecovery(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		start := e.clock.Now()
		k := newSink(true)
		s := e.open(t, 3, "a", k)
		var specs []Spec
		for i := range 30 {
			specs = append(specs, spec(fmt.Sprintf("due%04d", i), time.Second))
			specs = append(specs, spec(fmt.Sprintf("later%04d", i), 48*time.Hour))
		}
		mustSchedule(t, s, specs...)
		e.advance(s, time.Second)
		fired := k.take(t, 30)
		slices.SortFunc(fired, func(a, b Delivery) int { return strings.Compare(a.TimerID, b.TimerID) })
		mustAck(t, s, fired[:10]...) // 10 acked, 20 left in flight
		s.crash()

		lapseLease(t, e, 3)
		k2 := newSink(true)
		s2 := e.open(t, 3, "b", k2)
		s2.settle()
		back := k2.take(t, 20)
		if got, want := ids(back), ids(fired[10:]); !slices.Equal(got, want) {
			t.Fatalf("after recovery fired %v, want %v", got, want)
		}
		k2.none(t)
		mustAck(t, s2, back...)
		if st := s2.Stats(); st.Timers != 30 {
			t.Fatalf("%d timers left after the recovered ones were acked, want 30", st.Timers)
		}
		for _, d := range back {
			if d.Fired.Before(d.Due) {
				t.Fatalf("%s fired early", d.TimerID)
			}
		}
		e.advance(s2, start.Add(48*time.Hour-time.Millisecond).Sub(e.clock.Now()))
		k2.none(t)
		e.advance(s2, time.Millisecond)
		if got := ids(k2.take(t, 30)); !slices.Equal(got, idRange("later", 0, 30)) {
			t.Fatalf("later timers: %v", got)
		}
	})
}

// lapseLease makes the shard's lease lapse as if its holder had stopped
// renewing it: in Redis by letting the key expire now, in the embedded
// store (whose leases follow the test's clock) by moving the clock past
// the TTL. It returns once the store reports no holder.
func lapseLease(t testing.TB, e *env, shard uint32) {
	t.Helper()
	if e.client != nil {
		key := fmt.Sprintf("%s:{s%d}:lease", e.prefix, shard)
		if err := e.client.PExpire(ctx, key, time.Millisecond).Err(); err != nil {
			t.Fatal(err)
		}
	} else {
		e.clock.Advance(e.config(shard, "", nil).LeaseTTL + time.Second)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := e.st.Lease(ctx, shard)
		if err != nil {
			t.Fatal(err)
		}
		if l.Owner == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lease of shard %d still held by %q", shard, l.Owner)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFencing: owner A's lease lapses and B acquires the shard; every write
// A still attempts is refused and B's data is intact.
func TestFencing(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		// B has no subscriber, so its timers stay put while the test
		// compares them.
		ka, kb := newSink(true), newSink(false)
		cfg := e.config(5, "a", ka)
		a := e.openConfig(t, cfg)
		mustSchedule(t, a, spec("kept", time.Hour), spec("acked", 0), spec("moved", time.Hour))
		e.advance(a, 0)
		acked := ka.take(t, 1)[0]

		// A is cut off: its lease lapses in the store. (On the embedded
		// store A's keeper may notice first and stop; on Redis it never
		// gets to renew, since its clock does not reach the renewal time.)
		lapseLease(t, e, 5)
		cfgB := cfg
		cfgB.Owner, cfgB.Dispatcher = "b", kb
		b := e.openConfig(t, cfgB)
		if b.Epoch() <= a.Epoch() {
			t.Fatalf("B's epoch %d is not above A's %d", b.Epoch(), a.Epoch())
		}
		mustSchedule(t, b, spec("b-only", time.Hour))
		b.settle()
		movedBefore, err := b.Get("ns", "moved")
		if err != nil {
			t.Fatal(err)
		}

		// Every write A attempts is refused, each copy of an id given
		// twice in one batch included.
		for i, r := range a.Schedule(ctx, []Spec{spec("a-new", time.Hour), spec("a-new", time.Hour)}) {
			if !errors.Is(r.Err, ErrFenced) && !errors.Is(r.Err, ErrNotOwner) {
				t.Fatalf("A's Schedule (item %d) after losing the lease = %v, want fenced", i, r.Err)
			}
		}
		// A stops: fenced by its write (Redis, where A's clock has not
		// reached a renewal), or, having refused the write because its
		// lease may have lapsed (embedded, where the test's clock moved
		// past it), when its keeper finds the lease gone.
		select {
		case <-a.Done():
		case <-time.After(10 * time.Second):
		}
		if !errors.Is(a.Err(), ErrNotOwner) {
			t.Fatalf("A still running after being fenced: %v", a.Err())
		}
		if r := a.Reschedule(ctx, "ns", []Move{{ID: "moved", Delay: time.Second}})[0]; !errors.Is(r.Err, ErrNotOwner) {
			t.Fatalf("A's Reschedule = %v", r.Err)
		}
		if err := a.Cancel(ctx, "ns", []string{"kept"})[0]; !errors.Is(err, ErrNotOwner) {
			t.Fatalf("A's Cancel = %v", err)
		}
		mustAckIgnored(t, a, acked)
		if err := a.Close(ctx); !errors.Is(err, ErrNotOwner) {
			t.Fatalf("A's Close = %v, want the error that stopped it", err)
		}
		// The store refuses A's epoch outright, for every kind of write.
		for _, op := range []store.Op{{Key: store.Key("ns", "kept")}, {Key: store.Key("ns", "a-evil"), Value: (&store.Record{Namespace: "ns", ID: "a-evil", Topic: "t", State: store.Pending}).AppendBinary(nil)}} {
			batches := []store.Batch{{Shard: 5, Grant: a.Grant(), Ops: []store.Op{op}}}
			if err := e.st.Commit(ctx, batches); err != nil || !errors.Is(batches[0].Err, store.ErrFenced) {
				t.Fatalf("stale write: %v, %v", err, batches[0].Err)
			}
		}
		// B's data is intact.
		for _, id := range []string{"kept", "moved", "b-only", "acked"} {
			if _, err := b.Get("ns", id); err != nil {
				t.Fatalf("B lost %q: %v", id, err)
			}
		}
		if tm, _ := b.Get("ns", "moved"); !timerEqual(tm, movedBefore) {
			t.Fatalf("A's reschedule reached B: %+v", tm)
		}
		if _, err := b.Get("ns", "a-new"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("A's schedule reached B: %v", err)
		}
	})
}

func mustAckIgnored(t testing.TB, s *Shard, d Delivery) {
	t.Helper()
	id, _ := ParseDeliveryID(d.ID)
	if c, err := s.Ack([]DeliveryID{id}); c != nil || !errors.Is(err, ErrNotOwner) {
		t.Fatalf("a stopped shard's Ack = %v, %v; want ErrNotOwner", c, err)
	}
}

// TestStopsFiringWithoutLease: a shard that cannot renew its lease fires
// what is due before the lease it last confirmed may lapse, less the
// allowance for clock drift, and nothing from then on. A zero ClockDrift
// means the default for the TTL.
func TestStopsFiringWithoutLease(t *testing.T) {
	tests := []struct {
		name  string
		drift time.Duration                         // Config.ClockDrift
		want  func(ttl time.Duration) time.Duration // the allowance the shard must make
	}{
		{"configured", 150 * time.Millisecond, func(time.Duration) time.Duration { return 150 * time.Millisecond }},
		{"zero: 1% of the TTL", 0, func(ttl time.Duration) time.Duration { return ttl / 100 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newRedisEnv(t)
			k := newSink(true)
			cfg := e.config(0, "a", k)
			cfg.ClockDrift = tt.drift
			start := e.clock.Now()
			s := e.openConfig(t, cfg)
			validUntil := start.Add(cfg.LeaseTTL - tt.want(cfg.LeaseTTL)) // from Open's reading of the clock
			mustSchedule(t, s,
				Spec{Namespace: "ns", ID: "before", Topic: "topic", Due: validUntil.Add(-time.Millisecond)},
				Spec{Namespace: "ns", ID: "after", Topic: "topic", Due: validUntil})
			e.redis.Kill(t)
			e.advance(s, validUntil.Add(-time.Millisecond).Sub(e.clock.Now()))
			if d := k.take(t, 1)[0]; d.TimerID != "before" {
				t.Fatalf("got %q, want the timer due before the lease may lapse", d.TimerID)
			}
			e.advance(s, time.Millisecond)
			k.none(t)
			e.advance(s, cfg.LeaseTTL)
			k.none(t)
			// It answers no call either until it has the lease back,
			// and still holds the timer, pending.
			if _, err := s.Get("ns", "after"); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("Get without the lease = %v, want ErrNotOwner", err)
			}
			s.mu.Lock()
			after := s.timers.get(store.Key("ns", "after"))
			pending := after != nil && after.state() == Pending
			s.mu.Unlock()
			if !pending {
				t.Fatal("the timer due after the lease may have lapsed is not pending")
			}
		})
	}
}

func TestClockDriftFor(t *testing.T) {
	for _, tt := range []struct{ ttl, want time.Duration }{
		{10 * time.Second, 100 * time.Millisecond},
		{2 * time.Second, 20 * time.Millisecond},
		{time.Minute, 600 * time.Millisecond},
		{100 * time.Millisecond, 10 * time.Millisecond}, // the floor
	} {
		if got := ClockDriftFor(tt.ttl); got != tt.want {
			t.Errorf("ClockDriftFor(%v) = %v, want %v", tt.ttl, got, tt.want)
		}
	}
	for name, c := range map[string]Config{"DefaultConfig": DefaultConfig(0, "a"), "LocalConfig": LocalConfig(0, "a")} {
		if c.ClockDrift != ClockDriftFor(c.LeaseTTL) {
			t.Errorf("%s: ClockDrift %v for LeaseTTL %v, want ClockDriftFor's %v", name, c.ClockDrift, c.LeaseTTL, ClockDriftFor(c.LeaseTTL))
		}
	}
}

// TestConcurrent drives every call from many goroutines while the clock
// moves; run under -race.
func TestConcurrent(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		k := newSink(true)
		s := e.open(t, 0, "a", k)
		const workers, per = 8, 50
		var wg sync.WaitGroup
		stop := make(chan struct{})
		acked := make(chan int, 1)
		go func() { // the subscriber
			n := 0
			defer func() { acked <- n }()
			for {
				select {
				case d := <-k.ch:
					id, _ := ParseDeliveryID(d.ID)
					if _, err := s.Ack([]DeliveryID{id}); err != nil {
						t.Error(err)
						return
					}
					n++
				case <-stop:
					return
				}
			}
		}()
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					id := fmt.Sprintf("w%d-%d", w, i)
					mustSchedule(t, s, spec(id, time.Duration(i%5)*time.Millisecond))
					switch i % 4 {
					case 1:
						s.Cancel(ctx, "ns", []string{id})
					case 2:
						s.Reschedule(ctx, "ns", []Move{{ID: id, Delay: time.Millisecond}})
					case 3:
						s.Get("ns", id)
					}
				}
			}()
		}
		for range 50 {
			e.clock.Advance(time.Millisecond)
		}
		wg.Wait()
		e.advance(s, time.Second)
		// Everything not cancelled fires and is acked.
		want := workers * (per - per/4)
		deadline := time.Now().Add(10 * time.Second)
		for s.Stats().Timers > 0 && time.Now().Before(deadline) {
			e.advance(s, time.Millisecond)
			time.Sleep(time.Millisecond)
		}
		close(stop)
		if n := <-acked; n < want {
			t.Fatalf("acked %d deliveries, want at least %d", n, want)
		}
		if st := s.Stats(); st.Timers != 0 {
			t.Fatalf("%d timers left", st.Timers)
		}
	})
}

func TestConfigValidate(t *testing.T) {
	e := newEmbeddedEnv(t)
	base := e.config(0, "a", newSink(false))
	cases := []struct {
		field string
		edit  func(*Config)
	}{
		{"Owner", func(c *Config) { c.Owner = "" }},
		{"Store", func(c *Config) { c.Store = nil }},
		{"Committer", func(c *Config) { c.Committer = nil }},
		{"Dispatcher", func(c *Config) { c.Dispatcher = nil }},
		{"Clock", func(c *Config) { c.Clock = nil }},
		{"Tick", func(c *Config) { c.Tick = time.Microsecond }},
		{"LeaseTTL", func(c *Config) { c.LeaseTTL = time.Millisecond }},
		{"ClockDrift", func(c *Config) { c.ClockDrift = c.LeaseTTL }},
		{"AckTimeout", func(c *Config) { c.AckTimeout = 0 }},
		{"MaxAttempts", func(c *Config) { c.MaxAttempts = 0 }},
		{"BackoffMin", func(c *Config) { c.BackoffMin = 0 }},
		{"BackoffMax", func(c *Config) { c.BackoffMax = c.BackoffMin / 2 }},
		{"MaxPayload", func(c *Config) { c.MaxPayload = -1 }},
		{"MaxHorizon", func(c *Config) { c.MaxHorizon = 200 * 365 * 24 * time.Hour }},
		{"MinInterval", func(c *Config) { c.MinInterval = 0 }},
		{"OpTimeout", func(c *Config) { c.OpTimeout = c.LeaseTTL }},
	}
	if err := base.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		cfg := base
		c.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: Validate() = %v", c.field, err)
		}
		if _, err := Open(ctx, cfg); err == nil {
			t.Errorf("%s: Open accepted the config", c.field)
		}
	}
}

func TestLeaseHeld(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		e.open(t, 1, "a", newSink(false))
		if _, err := Open(ctx, e.config(1, "b", newSink(false))); !errors.Is(err, store.ErrLeaseHeld) {
			t.Fatalf("second owner's Open = %v, want ErrLeaseHeld", err)
		}
	})
}

// TestRedisKilledMidSchedule: redis-server is killed with SIGKILL while
// schedules stream in and restarted from its AOF; every schedule that was
// answered OK is there for the next owner.
func TestRedisKilledMidSchedule(t *testing.T) {
	// With appendfsync always Redis answers only fsynced writes; with
	// everysec it may acknowledge writes a crash then loses.
	e := newRedisEnv(t, redistest.AppendFsync("always"))
	s := e.open(t, 0, "a", newSink(false))
	var (
		mu     sync.Mutex
		acked  []string
		failed int
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				specs := make([]Spec, 10)
				for j := range specs {
					specs[j] = spec(fmt.Sprintf("w%d-%d-%d", w, i, j), time.Hour)
				}
				cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				res := s.Schedule(cctx, specs)
				cancel()
				mu.Lock()
				for j, r := range res {
					if r.Err == nil {
						acked = append(acked, specs[j].ID)
					} else {
						failed++
					}
				}
				mu.Unlock()
			}
		}()
	}
	waitAcked := func(n int) {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
			mu.Lock()
			got := len(acked)
			mu.Unlock()
			if got >= n {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("only %d schedules acknowledged, want %d", got, n)
			}
		}
	}
	waitAcked(2000)
	e.redis.Kill(t)
	time.Sleep(300 * time.Millisecond) // let callers time out against a dead server
	e.redis.Restart(t)
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	waitAcked(n + 2000)
	close(stop)
	wg.Wait()
	s.crash()

	s2 := e.open(t, 0, "a", newSink(false)) // the same node, restarted
	for _, id := range acked {
		if _, err := s2.Get("ns", id); err != nil {
			t.Fatalf("acknowledged schedule %q lost: %v", id, err)
		}
	}
	t.Logf("%d schedules acknowledged, %d timed out across the kill, all %d acknowledged ones present", len(acked), failed, len(acked))
}

// slowLoad is a real store whose Load takes a good part of the lease's
// TTL: after loading, it runs pass, which moves the test's clock.
type slowLoad struct {
	store.Store
	pass func()
}

func (s slowLoad) Load(ctx context.Context, shard uint32, g store.Grant, fn func([]store.Record) error) error {
	err := s.Store.Load(ctx, shard, g, fn)
	s.pass()
	return err
}

// TestSlowLoadKeepsLease: the lease is renewed while a shard loads, so a
// load that outlasts the TTL does not cost the shard its lease.
func TestSlowLoadKeepsLease(t *testing.T) {
	e := newEmbeddedEnv(t) // its leases follow the test's clock
	k := newSink(true)
	cfg := e.config(0, "a", k)
	step := cfg.LeaseTTL * 35 / 100 // a renewal period (TTL/3) and a bit
	cfg.Store = slowLoad{Store: e.st, pass: func() {
		for range 3 { // more than the TTL goes by while loading
			e.clock.Advance(step)
			for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
				if l, err := e.st.Lease(ctx, 0); err == nil && l.TTL > cfg.LeaseTTL*9/10 {
					break // renewed at the new time
				}
				if time.Now().After(deadline) {
					t.Error("the lease was not renewed during the load")
					return
				}
			}
		}
	}}
	s := e.openConfig(t, cfg)
	mustSchedule(t, s, spec("x", cfg.LeaseTTL/2))
	e.advance(s, cfg.LeaseTTL/2)
	if d := k.take(t, 1)[0]; d.TimerID != "x" {
		t.Fatalf("got %q", d.TimerID)
	}
	if err := s.Err(); err != nil {
		t.Fatalf("shard stopped: %v", err)
	}
}

// TestStaleOwnerAnswersNothing: owner A is paused past its lease (its
// clock stands still, so its keeper renews nothing), B takes the shard,
// cancels one timer and makes another; then A resumes and is asked
// before its keeper has run. A call A could answer from its memory
// alone writes nothing the fence could refuse, so A must refuse every
// call while its lease may have lapsed rather than answer from what it
// last knew: a Cancel told "not found" for a timer B holds would leave
// it to fire.
func TestStaleOwnerAnswersNothing(t *testing.T) {
	x := spec("x", time.Hour)
	x.Due, x.Delay, x.Req = time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC), 0, 7
	tests := []struct {
		name string
		call func(a *Shard) error
	}{
		{"Cancel of a timer B made", func(a *Shard) error { return a.Cancel(ctx, "ns", []string{"y"})[0] }},
		{"Get of a timer B cancelled", func(a *Shard) error { _, err := a.Get("ns", "x"); return err }},
		{"retried Schedule of a timer B cancelled", func(a *Shard) error { return a.Schedule(ctx, []Spec{x})[0].Err }},
		{"Reschedule of a timer B made", func(a *Shard) error {
			return a.Reschedule(ctx, "ns", []Move{{ID: "y", Delay: time.Minute}})[0].Err
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEmbeddedEnv(t) // its leases follow e.clock
			cfg := e.config(1, "a", newSink(true))
			cfg.LeaseTTL = 2 * time.Second
			clockA := newFakeClock() // A's own clock, which stands still while A is paused
			cfg.Clock = clockA
			a := e.openConfig(t, cfg)
			mustSchedule(t, a, x)

			e.clock.Advance(cfg.LeaseTTL + time.Second) // A's lease lapses in the store
			cfgB := cfg
			cfgB.Owner, cfgB.Clock = "b", e.clock
			b := e.openConfig(t, cfgB)
			mustSchedule(t, b, spec("y", time.Hour))
			if err := b.Cancel(ctx, "ns", []string{"x"})[0]; err != nil {
				t.Fatalf("B's Cancel: %v", err)
			}

			// A resumes: its clock jumps to the true time, and the call
			// comes before its alarms (and so its keeper) have run.
			clockA.mu.Lock()
			clockA.now = e.clock.Now()
			clockA.mu.Unlock()
			if err := tt.call(a); !errors.Is(err, ErrNotOwner) {
				t.Fatalf("A's answer after its lease lapsed = %v, want ErrNotOwner", err)
			}
		})
	}
}
