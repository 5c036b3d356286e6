package bench

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Scenarios are the scenarios Run knows, in the order help lists them.
var Scenarios = []string{"schedule", "fire", "mixed", "burst", "failover", "recovery"}

// Sentinel errors.
var (
	// ErrConfig wraps every error of Config.Validate.
	ErrConfig = errors.New("bench: invalid config")
	// ErrScenario is returned for a scenario name Run does not know.
	ErrScenario = errors.New("bench: unknown scenario")
	// ErrUnsupported is returned when a target cannot run a scenario, such
	// as redis-raw (which stores but never fires) asked to fire.
	ErrUnsupported = errors.New("bench: scenario not supported by target")
	// errProbe fails a run whose subscription never took its probe timer.
	errProbe = errors.New("bench: the subscription received no probe timer within 30s")
)

// Config is what a run does. A zero field takes the scenario's default,
// listed beside it; Validate checks a Config after that.
type Config struct {
	// Duration bounds the load phase (default 10s). Count, when set, ends
	// it earlier. It bounds the whole of failover (default Lead + Spread +
	// Drain + 30s) and, in recovery, the wait for the cluster after the
	// restart (default 5m).
	Duration time.Duration
	// Count bounds the number of timers (0: Duration alone; burst: the
	// size of the herd, default 100,000; failover: the timers spread over
	// Spread, default 100,000; recovery: the timers loaded, default
	// 1,000,000).
	Count int64
	// Rate is timers per second offered (fire default 10,000; mixed
	// default 2,000; schedule default 0 = as fast as Concurrency callers
	// go, open loop when set).
	Rate float64
	// Rates are the rates of a sweep (Sweep), fire at each in turn; --rate
	// with more than one value sets them, and Rate to the first. Run
	// takes one rate and refuses more.
	Rates []float64
	// HeldP99 is the lateness p99 under which a sweep counts a rate as
	// held (default 10ms, the p99 the product promises).
	HeldP99 time.Duration
	// Batches are the batch sizes, timers per Schedule call; schedule runs
	// one phase per size, the other scenarios use the first (default
	// 100).
	Batches []int
	// Concurrency is the number of calls in flight (default 16).
	Concurrency int
	// PayloadSize is the payload of every timer in bytes (default 64).
	PayloadSize int
	// Lead is how long before their due time fire and burst schedule
	// timers (default 2s; burst: 5s, the time scheduling the herd may
	// take), and failover its first timer. In recovery it is how long
	// after the restart begins the probe timer is due (default 1s).
	Lead time.Duration
	// Delay is the time from schedule to due: schedule (default 1h, so
	// nothing fires during the run), mixed (default 2s; cancels and
	// reschedules happen halfway) and recovery (default 1h).
	Delay time.Duration
	// Spread is the span over which failover's timers fall due, evenly
	// (default 60s).
	Spread time.Duration
	// KillAfter is when failover runs Kill, counted from its first due
	// time (default a third of Spread).
	KillAfter time.Duration
	// Kill kills a node of the cluster, for failover (--kill-cmd).
	Kill Action
	// Restart restarts the node or nodes of the cluster, for recovery
	// (--restart-cmd).
	Restart Action
	// Drain bounds the wait for deliveries after the last due time
	// (default 10s).
	Drain time.Duration
	// Cancel and Reschedule are mixed's shares of timers cancelled and
	// moved before they fire (defaults 0.8 and 0.1, taken when both are
	// 0).
	Cancel, Reschedule float64
	// Keep leaves the timers of schedule in the target instead of
	// cancelling them after the run.
	Keep bool
	// Tick is how often rates are sampled (default 1s; runs shorter than
	// 10s sample every Duration/20, at least 50ms).
	Tick time.Duration
	// FloorRate is the rate of the floor probe, time.AfterFunc timers per
	// second in the bench's process beside every run (default 1,000; at
	// most 100,000): light enough not to load the machine it measures.
	FloorRate float64
	// StarvedP99 is the floor's p99 lateness above which a run is marked
	// "machine starved" (default 5ms): a quiet machine fires Go's own
	// timers within a few ms, and a target's lateness can be no better.
	StarvedP99 time.Duration
	// Clock is the time source (default the wall clock); tests fake it.
	Clock Clock
}

// DefaultConfig returns the defaults of scenario, which must be one of
// Scenarios.
func DefaultConfig(scenario string) Config {
	var c Config
	return c.WithDefaults(scenario)
}

// WithDefaults returns c with every zero field set to scenario's default.
func (c Config) WithDefaults(scenario string) Config {
	switch scenario {
	case "failover":
		if c.Count == 0 {
			c.Count = 100000
		}
		if c.Spread == 0 {
			c.Spread = time.Minute
		}
		if c.KillAfter == 0 {
			c.KillAfter = c.Spread / 3
		}
		if c.Lead == 0 {
			c.Lead = 2 * time.Second
		}
		if c.Drain == 0 {
			c.Drain = 10 * time.Second
		}
		if c.Duration == 0 {
			c.Duration = c.Lead + c.Spread + c.Drain + 30*time.Second
		}
	case "recovery":
		if c.Count == 0 {
			c.Count = 1000000
		}
		if c.Lead == 0 {
			c.Lead = time.Second
		}
		if c.Duration == 0 {
			c.Duration = 5 * time.Minute
		}
		if len(c.Batches) == 0 {
			c.Batches = []int{1000}
		}
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.Rate == 0 {
		switch scenario {
		case "fire":
			c.Rate = 10000
		case "mixed":
			c.Rate = 2000
		}
	}
	if scenario == "burst" && c.Count == 0 {
		c.Count = 100000
	}
	if len(c.Batches) == 0 {
		c.Batches = []int{100}
	}
	if c.Concurrency == 0 {
		c.Concurrency = 16
	}
	if c.PayloadSize == 0 {
		c.PayloadSize = 64
	}
	if c.Lead == 0 {
		c.Lead = 2 * time.Second
		if scenario == "burst" {
			c.Lead = 5 * time.Second
		}
	}
	if c.Delay == 0 {
		c.Delay = time.Hour
		if scenario == "mixed" {
			c.Delay = 2 * time.Second
		}
	}
	if c.Drain == 0 {
		c.Drain = 10 * time.Second
	}
	if c.Cancel == 0 && c.Reschedule == 0 && scenario == "mixed" {
		c.Cancel, c.Reschedule = 0.8, 0.1
	}
	if c.Tick == 0 {
		c.Tick = time.Second
		if c.Duration < 10*time.Second {
			c.Tick = max(50*time.Millisecond, c.Duration/20)
		}
	}
	if c.HeldP99 == 0 {
		c.HeldP99 = 10 * time.Millisecond
	}
	if c.FloorRate == 0 {
		c.FloorRate = 1000
	}
	if c.StarvedP99 == 0 {
		c.StarvedP99 = 5 * time.Millisecond
	}
	if c.Clock == nil {
		c.Clock = wallClock{}
	}
	return c
}

// Validate reports the first bad field, by its name.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, args...))
	}
	switch {
	case c.Duration <= 0:
		return bad("Duration", "must be positive, got %v", c.Duration)
	case c.Count < 0:
		return bad("Count", "must not be negative, got %d", c.Count)
	case !(c.Rate >= 0 && c.Rate <= math.MaxFloat64): // NaN and +Inf too
		return bad("Rate", "must be a finite number, not negative, got %g", c.Rate)
	case c.Concurrency < 1 || c.Concurrency > 4096:
		return bad("Concurrency", "must be 1 to 4096, got %d", c.Concurrency)
	case c.PayloadSize < 0 || c.PayloadSize > 1<<20:
		return bad("PayloadSize", "must be 0 to 1 MiB, got %d", c.PayloadSize)
	case c.Lead < 0:
		return bad("Lead", "must not be negative, got %v", c.Lead)
	case c.Delay < 0:
		return bad("Delay", "must not be negative, got %v", c.Delay)
	case c.Drain < 0:
		return bad("Drain", "must not be negative, got %v", c.Drain)
	case c.Spread < 0:
		return bad("Spread", "must not be negative, got %v", c.Spread)
	case c.KillAfter < 0:
		return bad("KillAfter", "must not be negative, got %v", c.KillAfter)
	case c.Spread > 0 && c.KillAfter >= c.Spread:
		return bad("KillAfter", "must be less than Spread (%v), so that timers fall due after the kill, got %v", c.Spread, c.KillAfter)
	case !(c.Cancel >= 0 && c.Reschedule >= 0 && c.Cancel+c.Reschedule <= 1): // NaN too
		return bad("Cancel", "Cancel and Reschedule must be shares from 0 to 1 that add up to at most 1, got %g and %g", c.Cancel, c.Reschedule)
	case c.Tick <= 0:
		return bad("Tick", "must be positive, got %v", c.Tick)
	case !(c.FloorRate > 0 && c.FloorRate <= 100000): // NaN too
		return bad("FloorRate", "must be above 0 and at most 100000 timers/s, got %g", c.FloorRate)
	case c.StarvedP99 <= 0:
		return bad("StarvedP99", "must be positive, got %v", c.StarvedP99)
	case c.HeldP99 <= 0:
		return bad("HeldP99", "must be positive, got %v", c.HeldP99)
	}
	for _, r := range c.Rates {
		if !(r > 0 && r <= math.MaxFloat64) {
			return bad("Rates", "a sweep's rate must be a finite number above 0, got %g", r)
		}
	}
	if len(c.Batches) == 0 {
		return bad("Batches", "at least one batch size is needed")
	}
	for _, b := range c.Batches {
		if b < 1 || b > 100000 {
			return bad("Batches", "a batch size must be 1 to 100000, got %d", b)
		}
	}
	return nil
}

// AddFlags registers the flags that set c on fs, with the scenarios'
// defaults described in their usage (a flag left unset keeps its zero,
// which means the scenario's default).
func (c *Config) AddFlags(fs *flag.FlagSet) {
	fs.DurationVar(&c.Duration, "duration", 0, "how long to offer load (default 10s); failover: bound on the whole run (default --lead + --spread + --drain + 30s); recovery: bound on the wait after the restart (default 5m)")
	fs.Int64Var(&c.Count, "count", 0, "stop after this many timers (burst: the size of the herd, default 100000; failover: the timers spread over --spread, default 100000; recovery: the timers loaded, default 1000000)")
	fs.Func("rate", "timers per second offered, open loop (fire default 10000, mixed 2000; schedule: as fast as it goes); fire takes a comma-separated list and sweeps it, a run per rate", func(s string) error {
		var rs []float64
		for _, f := range strings.Split(s, ",") {
			r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil {
				return fmt.Errorf("rate %q is not a number", f)
			}
			rs = append(rs, r)
		}
		c.Rate, c.Rates = rs[0], nil
		if len(rs) > 1 {
			c.Rates = rs
		}
		return nil
	})
	fs.DurationVar(&c.HeldP99, "held-p99", 0, "fire with a --rate list: the lateness p99 a rate must stay under to be held (default 10ms)")
	fs.Func("batch", "timers per Schedule call; schedule takes a comma-separated list and runs each (default 100)", func(s string) error {
		var bs []int
		for _, f := range strings.Split(s, ",") {
			b, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("batch size %q is not a number", f)
			}
			bs = append(bs, b)
		}
		c.Batches = bs
		return nil
	})
	fs.IntVar(&c.Concurrency, "concurrency", 0, "calls in flight at once (default 16)")
	fs.IntVar(&c.PayloadSize, "payload-size", 0, "payload bytes per timer (default 64)")
	fs.DurationVar(&c.Lead, "lead", 0, "how long before their due time timers are scheduled (fire 2s, burst 5s, failover 2s); recovery: when the probe timer is due after the restart begins (1s)")
	fs.DurationVar(&c.Delay, "delay", 0, "time from schedule to due (schedule 1h, mixed 2s, recovery 1h)")
	fs.DurationVar(&c.Spread, "spread", 0, "failover: the span over which the timers fall due, evenly (default 60s)")
	fs.DurationVar(&c.KillAfter, "kill-after", 0, "failover: when to run --kill-cmd, after the first timer is due (default a third of --spread)")
	fs.Func("kill-cmd", "failover: shell `command` (sh -c) that kills a node of the cluster, such as 'kill -9 1234'", func(s string) error {
		c.Kill = ShellAction(s, os.Stderr)
		return nil
	})
	fs.Func("restart-cmd", "recovery: shell `command` (sh -c) that restarts the cluster's node or nodes and returns once they are started again", func(s string) error {
		c.Restart = ShellAction(s, os.Stderr)
		return nil
	})
	fs.DurationVar(&c.Drain, "drain", 0, "longest wait for deliveries after the last due time (default 10s)")
	fs.Float64Var(&c.Cancel, "cancel", 0, "mixed: share of timers cancelled before due (default 0.8)")
	fs.Float64Var(&c.Reschedule, "reschedule", 0, "mixed: share of timers moved before due (default 0.1)")
	fs.BoolVar(&c.Keep, "keep", false, "schedule: leave the timers in place instead of cancelling them afterwards")
	fs.DurationVar(&c.Tick, "tick", 0, "how often rates are sampled for the progress line and the plots (default 1s)")
	fs.Float64Var(&c.FloorRate, "floor-rate", 0, "timers/s of the floor probe, Go's time.AfterFunc in this process beside every run (default 1000)")
	fs.DurationVar(&c.StarvedP99, "starved-p99", 0, "floor p99 lateness above which a run is marked machine starved (default 5ms)")
}

// params lists c's settings that matter to scenario, for the report.
func (c Config) params(scenario string) []Param {
	p := func(name string, v any) Param { return Param{Name: name, Value: fmt.Sprint(v)} }
	ps := []Param{p("duration", c.Duration)}
	if c.Count > 0 {
		ps = append(ps, p("count", c.Count))
	}
	if c.Rate > 0 {
		ps = append(ps, p("rate", c.Rate))
	}
	batches := make([]string, len(c.Batches))
	for i, b := range c.Batches {
		batches[i] = strconv.Itoa(b)
	}
	ps = append(ps, p("batch", strings.Join(batches, ",")), p("concurrency", c.Concurrency), p("payload-size", c.PayloadSize))
	switch scenario {
	case "schedule":
		ps = append(ps, p("delay", c.Delay))
	case "fire", "burst":
		ps = append(ps, p("lead", c.Lead), p("drain", c.Drain))
	case "mixed":
		ps = append(ps, p("delay", c.Delay), p("cancel", c.Cancel), p("reschedule", c.Reschedule), p("drain", c.Drain))
	case "failover":
		ps = append(ps, p("lead", c.Lead), p("spread", c.Spread), p("kill-after", c.KillAfter), p("drain", c.Drain), p("kill", c.Kill.Name))
	case "recovery":
		ps = append(ps, p("delay", c.Delay), p("lead", c.Lead), p("restart", c.Restart.Name))
	}
	return ps
}
