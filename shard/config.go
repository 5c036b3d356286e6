package shard

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/timerd/timerd/store"
)

// Config configures one Shard. Start from DefaultConfig (production) or
// LocalConfig (tests) and set the dependencies.
type Config struct {
	// ID is the shard's number, in [0, shard count).
	ID uint32
	// Owner names this node in the shard's lease.
	Owner string

	// Store keeps the shard's records and lease; Committer carries its
	// writes to Store. Both are shared by every shard of a node and are
	// not closed by the shard.
	Store     store.Store
	Committer *store.Committer
	// Dispatcher receives due timers.
	Dispatcher Dispatcher
	// Events, when set, hears of acks and dead letters.
	Events Events
	// Census, when set, hears how many timers of each namespace the
	// shard holds (see Census).
	Census Census
	// Turns, when set, is shared by the shards of a node, which then
	// take turns at draining herds (see Turns). Without it a shard drains
	// a herd in steps of up to 4,096 timers, one after another.
	Turns *Turns
	// Clock tells the time. Default SystemClock.
	Clock Clock
	// Logger receives the shard's events. Default: discard.
	Logger *slog.Logger

	// Tick is the timing wheel's resolution (default 1ms): a timer fires
	// at most one tick late.
	Tick time.Duration
	// LeaseTTL is the lease's time to live (default 3s). The shard renews
	// it every LeaseTTL/3 and stops firing before it can have lapsed. It
	// bounds how long a dead owner's shards go unserved: their next owner
	// acquires them once the lease lapses, so a shorter TTL fails over
	// faster and costs more renewals (one per shard every LeaseTTL/3).
	LeaseTTL time.Duration
	// ClockDrift is how much faster the store's clock may run than the
	// shard's over one LeaseTTL: the shard treats its lease as lapsed
	// that much early. Zero means the default, ClockDriftFor(LeaseTTL):
	// 1% of LeaseTTL, at least 10ms (30ms for the default 3s).
	ClockDrift time.Duration
	// AckTimeout is how long a delivery waits for its ack when the
	// dispatcher does not say (default 30s).
	AckTimeout time.Duration
	// MaxAttempts is how many deliveries of one occurrence go unacked
	// before the timer becomes a dead letter (default 10).
	MaxAttempts uint32
	// BackoffMin and BackoffMax bound the wait before a redelivery, which
	// doubles with every unacked attempt (defaults 1s and 5m).
	BackoffMin, BackoffMax time.Duration
	// MaxPayload is the largest payload in bytes (default 64 KiB).
	MaxPayload int
	// MaxHorizon is how far ahead a timer may be due (default 100 years).
	MaxHorizon time.Duration
	// MinInterval is the shortest repeat interval (default 1s).
	MinInterval time.Duration
	// OpTimeout bounds each lease round trip (default 1.5s, half the
	// default TTL: a renewal sent a third into the lease that times out
	// still leaves time for a retry before it lapses); it must be below
	// LeaseTTL.
	OpTimeout time.Duration
	// RetryWindow is how long after a Schedule or Reschedule with a
	// request id (Spec.Req, Move.Req) a retry of it is still told apart
	// from a new call once the one-shot timer it made has been acked
	// (default 1m; 0 turns it off). An ack within the window leaves a
	// tombstone of the timer in memory (roughly 100 B with its key) until
	// the window has passed; it writes nothing, and a new owner of the
	// shard starts without tombstones. While the timer lives, its record
	// remembers the last request id whatever the window.
	// It should cover the clients' retries: the Go client's end with the
	// call's context (a Scheduler's batch timeout is 30s).
	RetryWindow time.Duration
}

// ClockDriftFor returns the default ClockDrift for a lease of ttl: 1% of
// it, at least 10ms. It allows for a store whose clock runs up to 1%
// faster than the shard's (quartz oscillators differ by parts per
// million, so that is a wide margin) and for the scheduling delay of the
// renewal's reply.
func ClockDriftFor(ttl time.Duration) time.Duration {
	return max(ttl/100, minClockDrift)
}

// minClockDrift is the least default ClockDrift.
const minClockDrift = 10 * time.Millisecond

// DefaultConfig returns the production defaults documented on Config, for
// shard id owned by owner. The dependencies are left to the caller.
func DefaultConfig(id uint32, owner string) Config {
	const ttl = 3 * time.Second
	return Config{
		ID:          id,
		Owner:       owner,
		Clock:       SystemClock{},
		Tick:        time.Millisecond,
		LeaseTTL:    ttl,
		ClockDrift:  ClockDriftFor(ttl),
		AckTimeout:  30 * time.Second,
		MaxAttempts: 10,
		BackoffMin:  time.Second,
		BackoffMax:  5 * time.Minute,
		MaxPayload:  64 << 10,
		MaxHorizon:  100 * 365 * 24 * time.Hour,
		MinInterval: time.Second,
		OpTimeout:   1500 * time.Millisecond,
		RetryWindow: time.Minute,
	}
}

// LocalConfig returns defaults for tests: short timeouts and backoffs so
// redelivery and dead letters happen in milliseconds of (fake) time.
func LocalConfig(id uint32, owner string) Config {
	c := DefaultConfig(id, owner)
	c.LeaseTTL = 2 * time.Second
	c.ClockDrift = ClockDriftFor(c.LeaseTTL)
	c.AckTimeout = time.Second
	c.MaxAttempts = 3
	c.BackoffMin = 100 * time.Millisecond
	c.BackoffMax = time.Second
	c.OpTimeout = time.Second
	return c
}

// Validate reports the first invalid field. Errors wrap ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Owner == "":
		return bad("Owner", "must not be empty")
	case c.Store == nil:
		return bad("Store", "must be set")
	case c.Committer == nil:
		return bad("Committer", "must be set")
	case c.Dispatcher == nil:
		return bad("Dispatcher", "must be set")
	case c.Clock == nil:
		return bad("Clock", "must be set")
	case c.Tick < time.Millisecond || c.Tick > time.Second || c.Tick%time.Millisecond != 0:
		return bad("Tick", "must be a whole number of milliseconds in [1ms, 1s], got %v", c.Tick)
	case c.LeaseTTL < 100*time.Millisecond:
		return bad("LeaseTTL", "must be >= 100ms, got %v", c.LeaseTTL)
	case c.ClockDrift < 0 || c.ClockDrift >= c.LeaseTTL/3:
		return bad("ClockDrift", "must be in [0, LeaseTTL/3), got %v", c.ClockDrift)
	case c.AckTimeout < time.Millisecond:
		return bad("AckTimeout", "must be >= 1ms, got %v", c.AckTimeout)
	case c.MaxAttempts < 1:
		return bad("MaxAttempts", "must be >= 1, got %d", c.MaxAttempts)
	case c.BackoffMin < time.Millisecond:
		return bad("BackoffMin", "must be >= 1ms, got %v", c.BackoffMin)
	case c.BackoffMax < c.BackoffMin:
		return bad("BackoffMax", "must be >= BackoffMin, got %v", c.BackoffMax)
	case c.MaxPayload < 0:
		return bad("MaxPayload", "must be >= 0, got %d", c.MaxPayload)
	case c.MaxHorizon <= 0 || c.MaxHorizon > 130*365*24*time.Hour:
		return bad("MaxHorizon", "must be in (0, 130 years] (the wheel's span), got %v", c.MaxHorizon)
	case c.MinInterval < time.Millisecond:
		return bad("MinInterval", "must be >= 1ms, got %v", c.MinInterval)
	case c.OpTimeout <= 0 || c.OpTimeout >= c.LeaseTTL:
		return bad("OpTimeout", "must be in (0, LeaseTTL), got %v", c.OpTimeout)
	case c.RetryWindow < 0 || c.RetryWindow > 24*time.Hour || c.RetryWindow%time.Millisecond != 0:
		return bad("RetryWindow", "must be a whole number of milliseconds in [0, 24h], got %v", c.RetryWindow)
	}
	return nil
}

// backoff returns the wait before redelivering after attempts unacked
// attempts (attempts >= 1).
func (c Config) backoff(attempts uint32) time.Duration {
	d := c.BackoffMin
	for i := uint32(1); i < attempts && d < c.BackoffMax; i++ {
		d *= 2
	}
	return min(d, c.BackoffMax)
}
