package shard

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/store"
)

// withCommitter replaces e's group commit with one whose config edit
// changed from the defaults; it closes with the test, before the store.
func withCommitter(t testing.TB, e *env, edit func(*store.CommitterConfig)) {
	t.Helper()
	cfg := store.DefaultCommitterConfig()
	cfg.OnCommit = e.stats.record
	edit(&cfg)
	com, err := store.NewCommitter(e.st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { com.Close() })
	e.com = com
}

// seedDead stores n dead letters in shard id, as a previous owner would
// have left them, so that the next Open loads them.
func seedDead(t testing.TB, e *env, id uint32, n int) {
	t.Helper()
	g, err := e.st.Acquire(ctx, id, "seed", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	now := e.clock.Now().UnixMilli()
	ops := make([]store.Op, n)
	for i := range ops {
		rec := store.Record{
			Namespace: "ns", ID: fmt.Sprintf("dead%05d", i), Topic: "topic", Payload: []byte("p"),
			Due: now, Next: now, Delay: 0, Created: now, State: store.Dead, Attempts: 3,
			LastAttempt: now, Reason: "not acknowledged after 3 attempts", OccEpoch: g.Epoch, OccSeq: uint64(i + 1),
		}
		ops[i] = store.Op{Key: store.Key(rec.Namespace, rec.ID), Value: rec.AppendBinary(nil)}
	}
	if err := e.com.Submit(id, g, ops).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Release(ctx, id, g); err != nil {
		t.Fatal(err)
	}
}

// TestReplayAllInPages: a Replay of every dead letter, more than a page
// and more than the group commit's whole queue may hold, replays them all
// in bounded round trips, and the store has them pending.
func TestReplayAllInPages(t *testing.T) {
	stores(t, func(t *testing.T, e *env) {
		withCommitter(t, e, func(c *store.CommitterConfig) {
			c.MaxBatchOps, c.MaxCycleOps, c.MaxQueueOps = 250, 500, replayPage
		})
		const n = 2*replayPage + 500
		seedDead(t, e, 0, n)
		s := e.open(t, 0, "a", newSink(false))
		if st := s.Stats(); st.Dead != n {
			t.Fatalf("loaded %d dead letters, want %d", st.Dead, n)
		}
		e.stats.reset()
		_, got, err := s.Replay(ctx, "ns", nil, "", time.Time{}, time.Hour)
		if err != nil || got != n {
			t.Fatalf("Replay(all) = %d, %v; want %d", got, err, n)
		}
		e.stats.mu.Lock()
		cycles, ops := e.stats.cycles, e.stats.ops
		e.stats.mu.Unlock()
		if ops != n || cycles < n/500 {
			t.Fatalf("%d writes in %d cycles, want %d in at least %d", ops, cycles, n, n/500)
		}
		pending := 0
		err = e.st.Load(ctx, 0, s.Grant(), func(page []store.Record) error {
			for _, r := range page {
				if r.State == store.Pending {
					pending++
				}
			}
			return nil
		})
		if err != nil || pending != n {
			t.Fatalf("store holds %d pending timers (%v), want %d", pending, err, n)
		}
		if st := s.Stats(); st.Dead != 0 {
			t.Fatalf("%d dead letters left", st.Dead)
		}
	})
}

// TestCommitGivenUpStopsShard: while the store is down, a Schedule fails
// within the group commit's GiveUpAfter with store.ErrUnavailable, and the
// shard, whose memory holds the timer the store may lack, stops. Reopened
// once the store is back, it has what the store has: the acknowledged
// timer and not the failed one.
func TestCommitGivenUpStopsShard(t *testing.T) {
	e := newRedisEnv(t, redistest.AppendFsync("always"))
	withCommitter(t, e, func(c *store.CommitterConfig) {
		c.GiveUpAfter, c.CommitTimeout, c.RetryMax = 300*time.Millisecond, time.Second, 50*time.Millisecond
	})
	s := e.open(t, 0, "a", newSink(false))
	mustSchedule(t, s, spec("kept", time.Hour))
	e.redis.Kill(t)
	// The test's bound, far above GiveUpAfter.
	bounded, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if res := s.Schedule(bounded, []Spec{spec("lost", time.Hour)}); !errors.Is(res[0].Err, store.ErrUnavailable) {
		t.Fatalf("Schedule with the store down: %v, want store.ErrUnavailable", res[0].Err)
	}
	select {
	case <-s.Done():
	case <-bounded.Done():
		t.Fatal("the shard still runs after its write was given up")
	}
	if _, err := s.Get("ns", "lost"); !errors.Is(err, ErrNotOwner) {
		t.Fatalf("Get on the stopped shard: %v, want ErrNotOwner", err)
	}
	e.redis.Restart(t)
	s2 := e.open(t, 0, "a", newSink(false))
	mustGone(t, s2, "lost")
	mustState(t, s2, "kept", Pending, 0)
	mustSchedule(t, s2, spec("after", time.Hour))
}

// TestScheduleRefusedWhenQueueFull: with the store down and the group
// commit's queue full, a Schedule is refused at once with
// store.ErrOverloaded and changes nothing; what was queued before is
// durable once the store is back, and the refused timers are nowhere.
func TestScheduleRefusedWhenQueueFull(t *testing.T) {
	e := newRedisEnv(t, redistest.AppendFsync("always"))
	withCommitter(t, e, func(c *store.CommitterConfig) {
		c.Lanes = 1
		c.MaxBatchOps, c.MaxCycleOps, c.MaxQueueOps = 16, 32, 64
		c.GiveUpAfter, c.RetryMax = time.Minute, 20*time.Millisecond
	})
	s := e.open(t, 0, "a", newSink(false))
	batch := func(prefix string, n int) []Spec {
		out := make([]Spec, n)
		for i := range out {
			out[i] = spec(fmt.Sprintf("%s%02d", prefix, i), time.Hour)
		}
		return out
	}
	e.redis.Kill(t)
	held := make(chan []Result, 1)
	go func() { held <- s.Schedule(ctx, batch("held", 60)) }()
	for deadline := time.Now().Add(20 * time.Second); e.com.Queue().Ops < 60; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the group commit holds %d writes, want 60", e.com.Queue().Ops)
		}
	}
	// Bounded by the test: not refused, the call would wait for the store.
	bounded, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	refused := batch("refused", 10)
	for i, r := range s.Schedule(bounded, refused) {
		if !errors.Is(r.Err, store.ErrOverloaded) {
			t.Fatalf("Schedule(%q) past the queue's bound: %v, want store.ErrOverloaded", refused[i].ID, r.Err)
		}
	}
	mustGone(t, s, "refused00")
	if q := e.com.Queue(); q.Refused != 1 {
		t.Fatalf("Queue().Refused = %d, want 1", q.Refused)
	}
	e.redis.Restart(t)
	for _, r := range <-held {
		if r.Err != nil {
			t.Fatalf("queued Schedule after the store came back: %v", r.Err)
		}
	}
	s.crash()
	s2 := e.open(t, 0, "a", newSink(false))
	for _, sp := range refused {
		mustGone(t, s2, sp.ID)
	}
	mustState(t, s2, "held59", Pending, 0)
}
