package shard

import (
	"slices"
	"testing"
	"time"
)

// TestTurnsHoldHerdNotComingDue: with the node's only turn taken by
// another shard, a shard hands out one light step of a herd and leaves
// the rest due, while a timer of another namespace that comes due later
// goes out in the light step its alarm wakes it for; once it gets the
// turn, it drains the herd, each timer once.
func TestTurnsHoldHerdNotComingDue(t *testing.T) {
	e := newEmbeddedEnv(t)
	k := newSink(true)
	turns := NewTurns(1)
	cfg := e.config(0, "a", k)
	cfg.Turns = turns
	s := e.openConfig(t, cfg)
	const herd = 8 * turnFires
	scheduleHerd(t, s, herd, time.Second+5*time.Millisecond)

	turns.c <- struct{}{} // another shard's turn
	e.advance(s, time.Second)
	got := k.ready()
	e.advance(s, 5*time.Millisecond)
	got = append(got, k.ready()...)
	// Light steps only: the one the alarm woke the shard for, and any a
	// kick from advance added.
	if len(got) > 4*lightFires {
		t.Fatalf("%d of the herd went out without a turn, want at most a few light steps of %d", len(got), lightFires)
	}
	if !slices.ContainsFunc(got, func(d Delivery) bool { return d.Namespace == "b" }) {
		t.Fatalf("b's timer did not go out in the light step its alarm woke the shard for: %v", ids(got))
	}

	<-turns.c // the other shard's step is over
	got = append(got, k.take(t, herd+1-len(got))...)
	seen := map[string]bool{}
	for _, d := range got {
		if d.Fired.Before(d.Due) {
			t.Fatalf("%s/%s fired at %v, before its due time %v", d.Namespace, d.TimerID, d.Fired, d.Due)
		}
		if key := d.Namespace + "/" + d.TimerID; seen[key] {
			t.Fatalf("%s delivered twice", key)
		} else {
			seen[key] = true
		}
	}
	k.none(t)
	if n := len(turns.c); n != 0 {
		t.Fatalf("%d turns still held after the herd drained", n)
	}
}

// drainProbe takes namespace b always and namespace a once opened; at
// the first delivery of a it moves the clock on, so that b's timer comes
// due while a's waiting timers drain.
type drainProbe struct {
	*sink
	clock   *fakeClock
	open    bool // guarded by the shard's mu, which it holds while dispatching
	touched bool
	sent    int
	bAt     int // b's place among the deliveries, 1-based; 0 until it comes
}

func (p *drainProbe) Dispatch(d Delivery) (time.Duration, bool) {
	if d.Namespace == "a" && !p.open {
		return 0, false
	}
	if d.Namespace == "a" && !p.touched {
		p.touched = true
		p.clock.Advance(10 * time.Millisecond)
	}
	p.sent++
	if d.Namespace == "b" {
		p.bAt = p.sent
	}
	return p.sink.Dispatch(d)
}

// TestWaitingDrainLeavesHalfAStep: a herd waits for its subscriber, which
// then takes it all at once; a timer of another namespace coming due
// meanwhile goes out in the next step, which gives the waiting timers
// half its room, not after the whole backlog.
func TestWaitingDrainLeavesHalfAStep(t *testing.T) {
	e := newEmbeddedEnv(t)
	p := &drainProbe{sink: newSink(true), clock: e.clock}
	s := e.open(t, 0, "a", p)
	const herd = 3 * maxStepFires
	scheduleHerd(t, s, herd, time.Second+5*time.Millisecond)
	e.advance(s, time.Second) // the herd comes due and waits
	p.sink.none(t)

	s.mu.Lock()
	p.open = true
	s.mu.Unlock()
	s.Ready("a", "topic")
	got := p.sink.take(t, herd+1)
	s.mu.Lock()
	at := p.bAt
	s.mu.Unlock()
	t.Logf("b's timer was delivery %d of %d", at, len(got))
	// b comes due during the first step, after it took from the wheel;
	// the second gives the waiting timers half its room, and b the rest.
	// Before, each step gave the waiting timers all of it, and b waited
	// for the whole backlog.
	if at < 1 || at > maxStepFires+1 {
		t.Fatalf("b's timer was delivery %d of %d, want within the second step, at most %d", at, len(got), maxStepFires+1)
	}
}
