package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// SteadyClock is a node's clock for firing and for leases that a step of
// the wall clock (an NTP step, an operator's date -s) does not move. It is
// anchored at a wall reading and advanced by the monotonic clock, and it
// follows the wall only by slewing: once per SteadyConfig.Every it bends
// toward the wall at most SteadyConfig.Slew (500 ppm by default, the
// kernel's own slewing limit), so NTP's small corrections are followed.
// A disagreement larger than SteadyConfig.Step is a step, and is settled
// by a referee, the store's clock (Redis TIME): the clock jumps forward
// to the store's time when the wall and the store agree that it is behind,
// and ignores the wall when the store agrees with the clock. Without a
// referee a step is never followed.
//
// Invariants:
//   - Now never runs slower than the monotonic clock less Slew, and jumps
//     only forward. The shard measures its lease on Now, so its lease is
//     stretched by at most Slew (500 ppm), well inside the ClockDrift
//     allowance (1%); a forward jump can only make the shard think its
//     lease lapsed sooner.
//   - Now jumps forward only to a time the store's clock had already
//     reached, so a followed step fires nothing early by the store's
//     clock; an unfollowed step of the wall moves nothing.
//   - A clock ahead of both the wall and the store by more than Step (it
//     was anchored at a wrong wall with no referee to ask) slews back at
//     Slew and says so in an error log: the one case where timers may fire
//     early, by at most the skew the log reports.
//
// Skew and StoreSkew report the last disagreements, for metrics.
type SteadyClock struct {
	cfg SteadyConfig
	log *slog.Logger
	// base is the monotonic origin: Now is base + time since base + off.
	base time.Time
	// adj is what Now adds to base's wall reading and the monotonic time
	// since it. Only Sync and check replace it (under syncMu).
	adj atomic.Pointer[adjustment]
	// skew is the wall's reading less Now's at the last check, in ns.
	skew atomic.Int64
	// storeSkew is the store's clock less Now's at the last referee read,
	// in ns.
	storeSkew atomic.Int64

	// syncMu serializes checks, so the warnings below describe one
	// sequence of them.
	syncMu sync.Mutex
	// stepping is whether the last check saw a step: a warning is logged
	// when a step is first seen, not at every check while it lasts.
	stepping bool
}

// SteadyConfig configures a SteadyClock. Start from DefaultSteadyConfig.
type SteadyConfig struct {
	// Wall reads the wall clock the clock is anchored at and slews toward.
	// Default (nil) time.Now. timerd's test hook moves it.
	Wall func() time.Time
	// Referee reads the store's clock; it settles a step (see
	// SteadyClock). Optional: without it a step is never followed.
	Referee func(ctx context.Context) (time.Time, error)
	// Every is how often Run compares the clock with the wall (default
	// 1s).
	Every time.Duration
	// Step is the largest disagreement with the wall that is slewed away
	// (default 128ms, ntpd's own step threshold); a larger one is a step.
	Step time.Duration
	// Slew is the fastest rate at which the clock bends toward the wall,
	// as a fraction of elapsed time (default 500e-6, 500 ppm). It must
	// stay below 0.005: a lease is stretched by at most Slew of its TTL,
	// which ClockDrift (1%) must cover with room to spare.
	Slew float64
	// RefereeTimeout bounds one read of the referee (default 1s).
	RefereeTimeout time.Duration
	// Logger receives the steps seen and what was done. Default: discard.
	Logger *slog.Logger
}

// DefaultSteadyConfig returns the defaults documented on SteadyConfig.
func DefaultSteadyConfig() SteadyConfig {
	return SteadyConfig{
		Wall:           time.Now,
		Every:          time.Second,
		Step:           128 * time.Millisecond,
		Slew:           500e-6,
		RefereeTimeout: time.Second,
	}
}

// Validate reports the first invalid field. Errors wrap ErrInvalidConfig.
func (c SteadyConfig) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: SteadyConfig.%s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Every <= 0:
		return bad("Every", "must be positive, got %v", c.Every)
	case c.Step <= 0:
		return bad("Step", "must be positive, got %v", c.Step)
	case c.Slew < 0 || c.Slew >= 0.005:
		return bad("Slew", "must be in [0, 0.005), got %v", c.Slew)
	case c.Referee != nil && c.RefereeTimeout <= 0:
		return bad("RefereeTimeout", "must be positive with a Referee, got %v", c.RefereeTimeout)
	}
	return nil
}

// NewSteadyClock returns a clock anchored at cfg.Wall's reading now. Call
// Sync before the clock is used, and run Run to keep it in step.
func NewSteadyClock(cfg SteadyConfig) (*SteadyClock, error) {
	if cfg.Wall == nil {
		cfg.Wall = time.Now
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	c := &SteadyClock{cfg: cfg, log: cfg.Logger, base: time.Now()}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.adj.Store(&adjustment{off: cfg.Wall().UnixNano() - c.base.UnixNano()})
	return c, nil
}

// adjustment is a SteadyClock's correction: off, plus a slew of rate from
// from until to (all in ns of monotonic time since base). A slew is spread
// over the interval rather than applied at once so that Now never goes
// back.
type adjustment struct {
	off      int64
	rate     float64
	from, to int64
}

// at returns the correction e ns after base.
func (a *adjustment) at(e int64) int64 {
	return a.off + int64(a.rate*float64(min(max(e, a.from), a.to)-a.from))
}

// Now returns the clock's time. Its monotonic reading follows the clock,
// so that Sub between two readings is the clock's own elapsed time.
func (c *SteadyClock) Now() time.Time {
	e := time.Since(c.base)
	return c.base.Add(e + time.Duration(c.adj.Load().at(int64(e))))
}

// move replaces the correction with its value now plus jump, slewing d
// more over the next Every. Callers hold syncMu.
func (c *SteadyClock) move(jump, d int64) {
	e := int64(time.Since(c.base))
	every := int64(c.cfg.Every)
	c.adj.Store(&adjustment{off: c.adj.Load().at(e) + jump, rate: float64(d) / float64(every), from: e, to: e + every})
}

// NewAlarm returns an alarm over a time.Timer: durations are the same on
// this clock as on the monotonic one, up to Slew.
func (c *SteadyClock) NewAlarm(d time.Duration) Alarm { return SystemClock{}.NewAlarm(d) }

// Skew returns the wall clock's reading less the clock's at the last check:
// how far the wall has been stepped away (or has drifted) from the time the
// node fires by.
func (c *SteadyClock) Skew() time.Duration { return time.Duration(c.skew.Load()) }

// StoreSkew returns the store's clock less the clock's at the last read of
// the referee (zero until one).
func (c *SteadyClock) StoreSkew() time.Duration { return time.Duration(c.storeSkew.Load()) }

// Sync anchors the clock before it is used: when the wall and the referee
// disagree by more than Step, the clock takes the store's time, which
// every node of a deployment shares (and which expires the leases). Only
// before the clock is used may it move back. Without a referee it does
// nothing.
func (c *SteadyClock) Sync(ctx context.Context) error {
	if c.cfg.Referee == nil {
		return nil
	}
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	ref, at, err := c.readReferee(ctx)
	if err != nil {
		return fmt.Errorf("clock: the store's time: %w", err)
	}
	wall := c.cfg.Wall().UnixNano()
	if d := wall - ref; abs(d) > int64(c.cfg.Step) {
		c.move(ref-at, 0)
		c.log.Warn("the wall clock disagrees with the store's; firing by the store's clock",
			"wall_minus_store", time.Duration(d))
	}
	c.skew.Store(wall - c.Now().UnixNano())
	c.storeSkew.Store(ref - c.Now().UnixNano())
	return nil
}

// Run compares the clock with the wall every Every until ctx ends.
func (c *SteadyClock) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			c.check(ctx)
		}
	}
}

// check slews the clock toward the wall, or settles a step.
func (c *SteadyClock) check(ctx context.Context) {
	c.syncMu.Lock()
	defer c.syncMu.Unlock()
	skew := c.cfg.Wall().UnixNano() - c.Now().UnixNano()
	c.skew.Store(skew)
	step := int64(c.cfg.Step)
	if abs(skew) <= step {
		if c.stepping {
			c.stepping = false
			c.log.Info("the wall clock agrees with the clock again", "skew", time.Duration(skew))
		}
		c.slew(skew)
		return
	}
	first := !c.stepping
	c.stepping = true
	if c.cfg.Referee == nil {
		if first {
			c.log.Warn("the wall clock stepped; not followed (no store clock to settle it)", "skew", time.Duration(skew))
		}
		return
	}
	ref, at, err := c.readReferee(ctx)
	if err != nil {
		if first {
			c.log.Warn("the wall clock stepped; not followed (the store's time is unknown)", "skew", time.Duration(skew), "err", err)
		}
		return
	}
	behind := ref - at // > 0: the store is ahead of the clock
	c.storeSkew.Store(behind)
	switch {
	case abs(behind) <= step:
		if first {
			c.log.Warn("the wall clock stepped; not followed, the store's clock agrees with the node's", "skew", time.Duration(skew))
		}
	case behind > 0 && abs(skew-behind) <= step:
		// The wall and the store agree that the clock is behind: jump to
		// the time the store had reached when it answered, never past it.
		c.move(behind, 0)
		c.skew.Store(skew - behind)
		c.log.Warn("the clock was behind the wall and the store's clock; stepped forward", "step", time.Duration(behind))
	case behind < 0 && abs(skew-behind) <= step:
		c.slew(behind)
		if first {
			c.log.Error("the clock is ahead of the wall and the store's clock; slewing back, timers may fire early by up to the skew",
				"skew", time.Duration(behind))
		}
	default:
		if first {
			c.log.Warn("the wall clock, the store's and the node's all disagree; not followed",
				"skew", time.Duration(skew), "store_skew", time.Duration(behind))
		}
	}
}

// slew moves the clock toward d (ns) over the next Every, by at most Slew
// of it.
func (c *SteadyClock) slew(d int64) {
	most := int64(c.cfg.Slew * float64(c.cfg.Every))
	c.move(0, min(max(d, -most), most))
}

// readReferee returns the store's time and the clock's reading when the
// answer came, both in unix ns. The store's clock had reached ref by then,
// so taking it as the time at the answer errs toward late.
func (c *SteadyClock) readReferee(ctx context.Context) (ref, at int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RefereeTimeout)
	defer cancel()
	t, err := c.cfg.Referee(ctx)
	at = c.Now().UnixNano()
	if err == nil && t.IsZero() {
		err = errors.New("zero time")
	}
	if err != nil {
		return 0, 0, err
	}
	return t.UnixNano(), at, nil
}

func abs(d int64) int64 {
	if d < 0 {
		return -d
	}
	return d
}
