package shard

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// queueLen returns how many entries, live or stale, the queue of
// namespace ns and topic holds.
func queueLen(s *Shard, topic string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if q := s.waiting[topicKey{"ns", topic}]; q != nil {
		return len(q.entries)
	}
	return 0
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
