package shard

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// heldRenewals is a real store whose lease renewals fail, without
// fencing, while held: the shard then stops firing, so its wheel stays
// behind the clock, while its calls still work.
type heldRenewals struct {
	store.Store
	mu   sync.Mutex
	held bool
}

var errRenewalHeld = errors.New("renewal held by the test")

func (h *heldRenewals) Renew(ctx context.Context, shard uint32, g store.Grant, ttl time.Duration) error {
	h.mu.Lock()
	held := h.held
	h.mu.Unlock()
	if held {
		return errRenewalHeld
	}
	return h.Store.Renew(ctx, shard, g, ttl)
}

func (h *heldRenewals) hold(held bool) {
	h.mu.Lock()
	h.held = held
	h.mu.Unlock()
}

// wheelLag is how far a test moves the clock while the shard's wheel
// stands still: far enough that a due time near the clock is past the
// wheel's horizon (2^42 ms, ~139 years, ahead of the wheel's time).
const wheelLag = 140 * 365 * 24 * time.Hour

// renewAndSettle lets the held store renew the lease again and waits,
// moving the clock one renewal retry at a time, until the shard fires
// again (a Redis lease runs on real time, so it has not lapsed).
func renewAndSettle(t *testing.T, e *env, s *Shard, h *heldRenewals, cfg Config) {
	t.Helper()
	h.hold(false)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		e.advance(s, cfg.LeaseTTL/12) // the keeper retries every LeaseTTL/12
		s.mu.Lock()
		valid := s.clock.Now().Before(s.validUntil)
		s.mu.Unlock()
		if valid {
			s.settle()
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the lease was not renewed")
		}
	}
}

// TestUnarmable: a timer the wheel refuses to arm is never left pending or
// in flight without a wheel entry (which would never fire again): a
// redelivery or an ack deadline that cannot be armed makes a dead letter,
// a replay that cannot be armed fails and leaves the dead letter as it was.
func TestUnarmable(t *testing.T) {
	t.Run("redelivery", func(t *testing.T) {
		stores(t, func(t *testing.T, e *env) {
			k := newSink(true)
			cfg := e.config(0, "a", k)
			// A backoff past the wheel's horizon: the redelivery after the
			// first unacked attempt cannot be armed.
			cfg.BackoffMin, cfg.BackoffMax = wheelLag, wheelLag
			s := e.openConfig(t, cfg)
			mustSchedule(t, s, spec("r", 0))
			e.advance(s, 0)
			d := k.take(t, 1)[0]
			e.advance(s, cfg.AckTimeout)
			tm := mustState(t, s, "r", Dead, 1)
			if !strings.Contains(tm.Reason, "horizon") {
				t.Fatalf("reason %q does not say why", tm.Reason)
			}
			mustAck(t, s, d) // ignored: a dead letter
			mustState(t, s, "r", Dead, 1)
			if dead, _, _ := s.DeadLetters("ns", "", "", 10); len(dead) != 1 || dead[0].ID != "r" {
				t.Fatalf("DeadLetters = %+v", dead)
			}
			// Written: the next owner finds the dead letter.
			s.Close(ctx)
			s = e.open(t, 0, "b", k)
			mustState(t, s, "r", Dead, 1)
		})
	})
	t.Run("load", func(t *testing.T) {
		stores(t, func(t *testing.T, e *env) {
			// A stored due time past the wheel's horizon, as a clock that
			// had jumped ahead by centuries would have written.
			far := e.clock.Now().Add(wheelLag).UnixMilli()
			fillRecords(t, e, 0, 1, func(_ int, epoch uint64) store.Record {
				return store.Record{Namespace: "ns", ID: "far", Topic: "topic", Delay: -1, SpecDue: far, Due: far, Next: far,
					State: store.Pending, OccEpoch: epoch, OccSeq: 1}
			})
			s := e.open(t, 0, "a", newSink(true))
			tm := mustState(t, s, "far", Dead, 0)
			if !strings.Contains(tm.Reason, "horizon") {
				t.Fatalf("reason %q does not say why", tm.Reason)
			}
			if dead, _, _ := s.DeadLetters("ns", "", "", 10); len(dead) != 1 {
				t.Fatalf("DeadLetters = %+v", dead)
			}
			if errs := s.Cancel(ctx, "ns", []string{"far"}); errs[0] != nil {
				t.Fatal(errs[0])
			}
		})
	})
	// The other two need the wheel to stand still while the clock moves
	// on: a shard whose renewals fail stops firing (and refuses calls).
	// Only Redis's leases outlast such a jump of the test's clock.
	t.Run("ack deadline", func(t *testing.T) {
		e := newRedisEnv(t)
		k := newSink(false)
		h := &heldRenewals{Store: e.st}
		cfg := e.config(0, "a", k)
		cfg.Store = h
		s := e.openConfig(t, cfg)
		mustSchedule(t, s, spec("w", time.Second))
		e.advance(s, time.Second) // no subscriber: it waits
		h.hold(true)
		e.advance(s, wheelLag)
		k.setOpen(true)
		s.Ready("ns", "topic") // taken once the shard fires again
		renewAndSettle(t, e, s, h, cfg)
		d := k.take(t, 1)[0]
		if d.TimerID != "w" {
			t.Fatalf("delivered %q", d.TimerID)
		}
		tm := mustState(t, s, "w", Dead, 1)
		if !strings.Contains(tm.Reason, "horizon") {
			t.Fatalf("reason %q does not say why", tm.Reason)
		}
	})
	t.Run("replay", func(t *testing.T) {
		e := newRedisEnv(t)
		k := newSink(true)
		h := &heldRenewals{Store: e.st}
		cfg := e.config(0, "a", k)
		cfg.Store = h
		cfg.MaxAttempts = 1
		cfg.MaxHorizon = 130 * 365 * 24 * time.Hour
		s := e.openConfig(t, cfg)
		mustSchedule(t, s, spec("x", 0), spec("y", 0), spec("p", 30*365*24*time.Hour))
		e.advance(s, 0)
		k.take(t, 2)
		e.advance(s, cfg.AckTimeout)
		mustState(t, s, "x", Dead, 1)
		h.hold(true)
		e.advance(s, 20*365*24*time.Hour)
		// The keeper has just renewed, and the loop, not yet kicked, has
		// not stepped: the shard takes calls again while its wheel still
		// stands where it was.
		s.mu.Lock()
		s.validUntil = e.clock.Now().Add(cfg.LeaseTTL)
		s.mu.Unlock()
		// Within MaxHorizon of the clock, past the wheel's horizon.
		far := 125 * 365 * 24 * time.Hour
		// A Reschedule the wheel refuses leaves the timer armed where it
		// was.
		if r := s.Reschedule(ctx, "ns", []Move{{ID: "p", Delay: far}})[0]; !errors.Is(r.Err, ErrInvalidDue) {
			t.Fatalf("Reschedule(p) = %v, want ErrInvalidDue", r.Err)
		}
		s.mu.Lock()
		armed := s.timers.get(store.Key("ns", "p")).armed
		s.mu.Unlock()
		if !armed {
			t.Fatal("a refused Reschedule disarmed the timer")
		}
		res, n, err := s.Replay(ctx, "ns", []string{"x"}, "", time.Time{}, far)
		if n != 0 || err != nil || !errors.Is(res[0].Err, ErrInvalidDue) {
			t.Fatalf("Replay(x) = %v, %d, %v; want ErrInvalidDue for x and none replayed", res[0].Err, n, err)
		}
		if _, n, err := s.Replay(ctx, "ns", nil, "", time.Time{}, far); n != 0 || !errors.Is(err, ErrInvalidDue) {
			t.Fatalf("Replay(all) = %d, %v; want none replayed and ErrInvalidDue", n, err)
		}
		mustState(t, s, "x", Dead, 1)
		mustState(t, s, "y", Dead, 1)
		if dead, _, _ := s.DeadLetters("ns", "", "", 10); len(dead) != 2 {
			t.Fatalf("DeadLetters = %+v, want both", dead)
		}
		// Once the wheel has caught up, the same replay works.
		renewAndSettle(t, e, s, h, cfg)
		if _, n, err := s.Replay(ctx, "ns", nil, "", time.Time{}, far); n != 2 || err != nil {
			t.Fatalf("Replay(all) after the wheel caught up = %d, %v", n, err)
		}
		mustState(t, s, "x", Pending, 0)
	})
}
