package shard

import (
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// queueLen returns how many entries, live or stale, the queue of
// namespace ns and topic holds.
func queueLen(s *Shard, topic string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.waiting[topicKey{"ns", topic}]; q != nil {
		return len(q.entries) - q.head
	}
	return 0
}

// waitQueued returns once n timers wait in the queue of topic "topic",
// which the shard's loop fills step by step (a hang guard of a minute,
// not a timing assertion).
func waitQueued(tb testing.TB, s *Shard, n int) {
	tb.Helper()
	for deadline := time.Now().Add(time.Minute); queueLen(s, "topic") < n; {
		if time.Now().After(deadline) {
			tb.Fatalf("%d of %d timers wait", queueLen(s, "topic"), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestWaitingQueueFollowsLive: timers cancelled, moved or acked while
// they wait for a subscriber do not stay in their topic's queue with their
// payloads; the queue holds at most twice the timers still waiting, and
// those go out once each, in order, when a subscriber comes.
func TestWaitingQueueFollowsLive(t *testing.T) {
	const n = 2000
	cases := []struct {
		name string
		// change acts on the waiting timers w0000..w1999 and returns the
		// ids that still wait, in order.
		change func(t *testing.T, e *env, s *Shard) []string
	}{
		{"cancel", func(t *testing.T, e *env, s *Shard) []string {
			for i, err := range s.Cancel(ctx, "ns", idRange("w", 1, n)) {
				if err != nil {
					t.Fatalf("Cancel %d: %v", i, err)
				}
			}
			return []string{"w0000"}
		}},
		{"reschedule later", func(t *testing.T, e *env, s *Shard) []string {
			moves := make([]Move, 0, n)
			for _, id := range idRange("w", 0, n-1) {
				moves = append(moves, Move{ID: id, Delay: time.Hour})
			}
			for i, r := range s.Reschedule(ctx, "ns", moves) {
				if r.Err != nil {
					t.Fatalf("Reschedule %d: %v", i, r.Err)
				}
			}
			return []string{fmt.Sprintf("w%04d", n-1)}
		}},
		{"reschedule due again", func(t *testing.T, e *env, s *Shard) []string {
			// Half moved to now again and again: each time one comes due
			// it waits anew, behind the others.
			for _, id := range idRange("w", 0, n/2) {
				if r := s.Reschedule(ctx, "ns", []Move{{ID: id}})[0]; r.Err != nil {
					t.Fatal(r.Err)
				}
				e.advance(s, time.Millisecond)
			}
			if got := queueLen(s, "topic"); got > 2*n {
				t.Fatalf("queue holds %d entries for %d waiting timers", got, n)
			}
			// Then all but one cancelled, and that one moved to now again
			// and again.
			for i, err := range s.Cancel(ctx, "ns", idRange("w", 1, n)) {
				if err != nil {
					t.Fatalf("Cancel %d: %v", i, err)
				}
			}
			for range n {
				if r := s.Reschedule(ctx, "ns", []Move{{ID: "w0000"}})[0]; r.Err != nil {
					t.Fatal(r.Err)
				}
				e.advance(s, time.Millisecond)
				if got := queueLen(s, "topic"); got > 2 {
					t.Fatalf("queue holds %d entries for 1 waiting timer", got)
				}
			}
			return []string{"w0000"}
		}},
		{"reschedule due again in order", func(t *testing.T, e *env, s *Shard) []string {
			// Moved to now while waiting, a timer waits anew behind the
			// others, once.
			for _, id := range idRange("w", 0, 10) {
				if r := s.Reschedule(ctx, "ns", []Move{{ID: id}})[0]; r.Err != nil {
					t.Fatal(r.Err)
				}
				e.advance(s, time.Millisecond)
			}
			return append(idRange("w", 10, n), idRange("w", 0, 10)...)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := newEmbeddedEnv(t)
			k := newSink(false)
			s := e.open(t, 0, "a", k)
			specs := make([]Spec, n)
			for i := range specs {
				specs[i] = spec(fmt.Sprintf("w%04d", i), time.Second+time.Duration(i)*time.Millisecond)
			}
			mustSchedule(t, s, specs...)
			e.advance(s, time.Second+n*time.Millisecond)
			if got := queueLen(s, "topic"); got != n {
				t.Fatalf("%d timers wait, want %d", got, n)
			}
			live := c.change(t, e, s)
			if got := queueLen(s, "topic"); got > 2*len(live) {
				t.Fatalf("queue holds %d entries for %d waiting timers", got, len(live))
			}
			k.setOpen(true)
			s.Ready("ns", "topic")
			s.settle()
			got := k.take(t, len(live))
			k.none(t)
			gotIDs := make([]string, len(got))
			for i, d := range got {
				gotIDs[i] = d.TimerID
			}
			if !slices.Equal(gotIDs, live) {
				t.Fatalf("delivered %d timers %v..., want %d %v...", len(gotIDs), gotIDs[:min(3, len(gotIDs))], len(live), live[:min(3, len(live))])
			}
			if got := queueLen(s, "topic"); got != 0 {
				t.Fatalf("queue holds %d entries after it was drained", got)
			}
		})
	}
}

// TestWaitingDrainInPieces: a queue drained a few timers at a time, as a
// paced subscriber takes a herd, while some of its timers are cancelled,
// hands out the others once each and in order, and keeps its invariants
// after every piece: the drained prefix never outgrows the queue, and
// stale entries never outnumber live ones.
func TestWaitingDrainInPieces(t *testing.T) {
	const n = 2000
	e := newEmbeddedEnv(t)
	k := newSink(false)
	s := e.open(t, 0, "a", k)
	specs := make([]Spec, n)
	for i := range specs {
		specs[i] = spec(fmt.Sprintf("w%04d", i), time.Second)
	}
	mustSchedule(t, s, specs...)
	e.advance(s, 2*time.Second)
	waitQueued(t, s, n)
	k.setOpen(true)
	tk := topicKey{"ns", "topic"}
	var got []string
	cancelled := make(map[string]bool)
	now := e.clock.Now().UnixMilli()
	for piece := 0; ; piece++ {
		// Cancel every third of the timers a little ahead of the drain.
		front := -1
		if len(got) > 0 {
			fmt.Sscanf(got[len(got)-1], "w%04d", &front)
		}
		var cancel []string
		for i := front + 20; i < min(n, front+30); i++ {
			if id := fmt.Sprintf("w%04d", i); i%3 == 1 && !cancelled[id] {
				cancel = append(cancel, id)
				cancelled[id] = true
			}
		}
		for i, err := range s.Cancel(ctx, "ns", cancel) {
			if err != nil {
				t.Fatalf("Cancel %s: %v", cancel[i], err)
			}
		}
		s.mu.Lock()
		if s.waiting[tk] == nil {
			s.mu.Unlock()
			break
		}
		s.drainLocked(tk, now, 5)
		delete(s.ready, tk) // the pieces are this test's, not the loop's
		if q := s.waiting[tk]; q != nil {
			if rest := len(q.entries) - q.head; q.head > rest || rest-q.live > q.live {
				s.mu.Unlock()
				t.Fatalf("piece %d: head %d, %d entries, %d live", piece, q.head, len(q.entries), q.live)
			}
		}
		s.mu.Unlock()
		for _, d := range k.ready() {
			got = append(got, d.TimerID)
		}
	}
	var want []string
	for i := range n {
		if id := fmt.Sprintf("w%04d", i); !cancelled[id] {
			want = append(want, id)
		}
	}
	if len(cancelled) < n/4 {
		t.Fatalf("only %d timers were cancelled while they waited", len(cancelled))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered %d timers %v..., want %d %v...", len(got), got[:min(5, len(got))], len(want), want[:min(5, len(want))])
	}
}

// gate is a Dispatcher that takes every delivery while open, and keeps
// none.
type gate struct{ open atomic.Bool }

func (g *gate) Dispatch(Delivery) (time.Duration, bool) { return 0, g.open.Load() }

// BenchmarkWaitingDrain drains a topic's queue of 100,000 waiting timers
// 32 at a time, as a subscriber paced by its namespace's delivery rate
// takes a herd, and reports the drain's cost per timer (ns/timer) beside
// that of dispatching the same timers when none waited (ns/timer-direct):
// what waiting adds is the difference.
func BenchmarkWaitingDrain(b *testing.B) {
	const (
		n     = 100_000
		piece = 32
	)
	tk := topicKey{"ns", "topic"}
	var drained, direct time.Duration
	for range b.N {
		for _, wait := range []bool{true, false} {
			e := newEmbeddedEnv(b)
			g := &gate{}
			g.open.Store(!wait)
			s := e.open(b, 0, "a", g)
			specs := make([]Spec, n)
			for i := range specs {
				specs[i] = spec(fmt.Sprintf("w%06d", i), time.Second)
			}
			for chunk := range slices.Chunk(specs, 4096) {
				mustSchedule(b, s, chunk...)
			}
			if !wait {
				start := time.Now()
				e.advance(s, 2*time.Second)
				for s.Stats().InFlight < n {
					time.Sleep(time.Millisecond)
				}
				direct += time.Since(start)
				continue
			}
			e.advance(s, 2*time.Second)
			waitQueued(b, s, n)
			g.open.Store(true)
			now := e.clock.Now().UnixMilli()
			start := time.Now()
			s.mu.Lock()
			for s.waiting[tk] != nil {
				s.drainLocked(tk, now, piece)
			}
			s.mu.Unlock()
			drained += time.Since(start)
		}
	}
	b.ReportMetric(float64(drained.Nanoseconds())/float64(b.N*n), "ns/timer")
	b.ReportMetric(float64(direct.Nanoseconds())/float64(b.N*n), "ns/timer-direct")
}
