package shard

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// TestSteadyClock drives a SteadyClock's checks by hand through steps of
// its wall and of the store's clock, and checks where it ends up against
// the true clock (the machine's).
func TestSteadyClock(t *testing.T) {
	const step = 128 * time.Millisecond
	for _, tc := range []struct {
		name string
		// wallAtStart offsets the wall when the clock is made and synced.
		wallAtStart time.Duration
		// wall and store offset the wall and the store's clock from the
		// true clock after the start; noStore runs without a referee.
		wall, store time.Duration
		noStore     bool
		storeErr    bool
		// want is where the clock must be, from the true clock, give or
		// take step; wantSkew likewise for Skew.
		want, wantSkew time.Duration
	}{
		{name: "no step", want: 0, wantSkew: 0},
		{name: "wall forward, store agrees with the clock", wall: 5 * time.Minute, want: 0, wantSkew: 5 * time.Minute},
		{name: "wall back, store agrees with the clock", wall: -5 * time.Minute, want: 0, wantSkew: -5 * time.Minute},
		{name: "wall forward, no store", wall: 5 * time.Minute, noStore: true, want: 0, wantSkew: 5 * time.Minute},
		{name: "wall back, no store", wall: -5 * time.Minute, noStore: true, want: 0, wantSkew: -5 * time.Minute},
		{name: "wall forward, store unreachable", wall: 5 * time.Minute, storeErr: true, want: 0, wantSkew: 5 * time.Minute},
		{name: "wall and store forward: the clock was behind", wall: 5 * time.Minute, store: 5 * time.Minute, want: 5 * time.Minute, wantSkew: 0},
		{name: "wall and store back: the clock only slews back", wall: -5 * time.Minute, store: -5 * time.Minute, want: 0, wantSkew: -5 * time.Minute},
		{name: "all three disagree", wall: 5 * time.Minute, store: -5 * time.Minute, want: 0, wantSkew: 5 * time.Minute},
		{name: "wall wrong at start: anchored at the store", wallAtStart: 5 * time.Minute, wall: 5 * time.Minute, want: 0, wantSkew: 5 * time.Minute},
		{name: "wall wrong at start, no store", wallAtStart: 5 * time.Minute, wall: 5 * time.Minute, noStore: true, want: 5 * time.Minute, wantSkew: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wall := &steppedWall{}
			wall.step(tc.wallAtStart)
			var storeOff time.Duration
			cfg := DefaultSteadyConfig()
			cfg.Wall = wall.Now
			if !tc.noStore {
				cfg.Referee = func(context.Context) (time.Time, error) {
					if tc.storeErr {
						return time.Time{}, errors.New("unreachable")
					}
					return time.Now().Add(storeOff), nil
				}
			}
			c, err := NewSteadyClock(cfg)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Sync(context.Background()); err != nil && !tc.storeErr {
				t.Fatal(err)
			}
			wall.step(tc.wall - tc.wallAtStart)
			storeOff = tc.store
			prev := c.Now()
			for range 5 {
				c.check(context.Background())
				now := c.Now()
				if now.Before(prev) {
					t.Fatalf("the clock went back from %v to %v", prev, now)
				}
				if off := time.Until(now); off > tc.store && !tc.noStore && tc.store > 0 {
					t.Fatalf("the clock is %v ahead of the true clock, past the store's %v", off, tc.store)
				}
				prev = now
			}
			if got := time.Until(c.Now().Round(0)); got < tc.want-step || got > tc.want+step {
				t.Errorf("the clock is %v from the true clock, want %v ± %v", got, tc.want, step)
			}
			if got := c.Skew(); got < tc.wantSkew-step || got > tc.wantSkew+step {
				t.Errorf("Skew() = %v, want %v ± %v", got, tc.wantSkew, step)
			}
		})
	}
}

// TestSteadyClockSlew checks that a small disagreement with the wall is
// slewed away at no more than Slew, so that a lease measured on the clock
// is stretched by no more than Slew.
func TestSteadyClockSlew(t *testing.T) {
	wall := &steppedWall{}
	cfg := DefaultSteadyConfig()
	cfg.Wall = wall.Now
	c, err := NewSteadyClock(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{100 * time.Millisecond, -100 * time.Millisecond} {
		wall.step(d)
		most := time.Duration(cfg.Slew * float64(cfg.Every))
		for range 3 {
			c.check(context.Background())
			a := c.adj.Load()
			if moved := time.Duration(a.at(a.to) - a.at(a.from)); moved.Abs() > most || moved == 0 || (moved > 0) != (d > 0) {
				t.Fatalf("one check after a step of %v moved the clock %v, want toward it by at most %v", d, moved, most)
			}
		}
		wall.step(-d)
	}
}

func TestSteadyConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*SteadyConfig)
	}{
		{"Every", func(c *SteadyConfig) { c.Every = 0 }},
		{"Step", func(c *SteadyConfig) { c.Step = -time.Second }},
		{"Slew", func(c *SteadyConfig) { c.Slew = 0.01 }},
		{"RefereeTimeout", func(c *SteadyConfig) {
			c.Referee = func(context.Context) (time.Time, error) { return time.Now(), nil }
			c.RefereeTimeout = 0
		}},
	} {
		cfg := DefaultSteadyConfig()
		tc.edit(&cfg)
		_, err := NewSteadyClock(cfg)
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: NewSteadyClock = %v, want ErrInvalidConfig naming the field", tc.field, err)
		}
	}
}
