package shard

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// steppedWall is a wall clock an operator (or NTP) steps: the machine's
// time plus an offset the test sets. The machine's own clock is the true
// clock the test judges by.
type steppedWall struct{ offset atomic.Int64 } // ns

func (w *steppedWall) Now() time.Time { return time.Now().Add(time.Duration(w.offset.Load())).Round(0) }

func (w *steppedWall) step(d time.Duration) { w.offset.Add(int64(d)) }

// trueSink records when, by the true clock, each delivery was handed out.
type trueSink struct {
	mu  sync.Mutex
	got map[string]time.Time // timer id -> first dispatch, true clock
	ch  chan string
}

func newTrueSink() *trueSink {
	return &trueSink{got: make(map[string]time.Time), ch: make(chan string, 1<<12)}
}

func (k *trueSink) Dispatch(d Delivery) (time.Duration, bool) {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.got[d.TimerID]; !ok {
		k.got[d.TimerID] = now
		k.ch <- d.TimerID
	}
	return time.Minute, true
}

// TestClockStep steps the wall clock a shard's node reads by minutes,
// forward and back, while timers are due, and checks by the true clock
// that none fired early and none was held past its due time by the step.
func TestClockStep(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []time.Duration
	}{
		{"forward", []time.Duration{5 * time.Minute}},
		{"back", []time.Duration{-5 * time.Minute}},
		{"forward-and-back", []time.Duration{5 * time.Minute, -10 * time.Minute, 5 * time.Minute}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEmbeddedEnv(t)
			wall := &steppedWall{}
			cfg := e.config(0, "a", nil)
			k := newTrueSink()
			cfg.Dispatcher = k
			cfg.Clock = stepClock(t, wall)
			cfg.LeaseTTL = 2 * time.Second
			s := e.openConfig(t, cfg)
			// Due times are absolute, by the true clock: 20 timers 100ms
			// apart from 500ms on.
			const n = 20
			base := time.Now()
			due := make(map[string]time.Time, n)
			var specs []Spec
			for i := range n {
				sp := spec(idRange("t", i, i+1)[0], 0)
				sp.Due = base.Add(500*time.Millisecond + time.Duration(i)*100*time.Millisecond)
				due[sp.ID] = sp.Due
				specs = append(specs, sp)
			}
			mustSchedule(t, s, specs...)
			// The steps come while the timers are due: one before the
			// first is due, the rest spread over the others.
			for i, d := range tc.steps {
				time.Sleep(time.Duration(i) * 400 * time.Millisecond)
				wall.step(d)
			}
			// A held timer would wait minutes; the bound ends the wait.
			deadline := time.After(20 * time.Second)
			for range n {
				select {
				case <-k.ch:
				case <-deadline:
					k.mu.Lock()
					t.Fatalf("%d of %d timers delivered; the rest were held by the step", len(k.got), n)
				}
			}
			k.mu.Lock()
			defer k.mu.Unlock()
			var worst time.Duration
			for id, at := range k.got {
				late := at.Sub(due[id])
				if late < 0 {
					t.Errorf("%s delivered %v early by the true clock", id, -late)
				}
				worst = max(worst, late)
			}
			t.Logf("latest delivery %v after its due time", worst)
		})
	}
}

// stepClock returns the clock a node runs its shards on: a SteadyClock
// anchored at wall and refereed by the true clock (the store's, in a
// deployment), checking often so that the test sees several checks per
// step.
func stepClock(t *testing.T, wall *steppedWall) Clock {
	cfg := DefaultSteadyConfig()
	cfg.Wall = wall.Now
	cfg.Every = 20 * time.Millisecond
	cfg.Referee = func(context.Context) (time.Time, error) { return time.Now(), nil }
	c, err := NewSteadyClock(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return c
}
