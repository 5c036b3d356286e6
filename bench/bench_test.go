package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// This file tests the parts of a run that need no target: the latency
// histogram, the pacing of events (on a fake clock) and the config.

// within reports whether got is within the HDR precision of want: three
// significant digits, plus the microsecond the histogram counts in.
func within(got, want time.Duration) bool {
	tol := time.Duration(math.Abs(float64(want))/1000) + time.Microsecond
	return got >= want-tol && got <= want+tol
}

// withinMs is within for values in milliseconds, as a Dist holds them.
func withinMs(got, want float64) bool {
	return math.Abs(got-want) <= math.Abs(want)/1000+0.001+1e-9
}

func TestLatencyKnownInputs(t *testing.T) {
	t.Parallel()
	l := NewLatency()
	// 1 µs to 10 ms, each once, in a shuffled order.
	const n = 10000
	perm := rand.New(rand.NewPCG(1, 2)).Perm(n)
	for _, i := range perm {
		l.Record(time.Duration(i+1) * time.Microsecond)
	}
	if got := l.Count(); got != n {
		t.Fatalf("Count = %d, want %d", got, n)
	}
	if early, earliest := l.Early(); early != 0 || earliest != 0 {
		t.Errorf("Early = %d, %v, want 0, 0", early, earliest)
	}
	if got := l.Over(); got != 0 {
		t.Errorf("Over = %d, want 0", got)
	}
	for _, tc := range []struct {
		p    float64
		want time.Duration
	}{
		{0, time.Microsecond},
		{10, 1000 * time.Microsecond},
		{50, 5000 * time.Microsecond},
		{90, 9000 * time.Microsecond},
		{99, 9900 * time.Microsecond},
		{99.9, 9990 * time.Microsecond},
		{100, 10000 * time.Microsecond},
	} {
		if got := l.Quantile(tc.p); !within(got, tc.want) {
			t.Errorf("Quantile(%g) = %v, want %v within 0.1%%", tc.p, got, tc.want)
		}
	}

	d := l.Dist("rpc")
	if d.Name != "rpc" || d.Unit != "ms" || d.Count != n {
		t.Fatalf("Dist = %q %q count %d, want rpc ms %d", d.Name, d.Unit, d.Count, n)
	}
	for _, f := range []struct {
		name      string
		got, want float64
	}{
		{"Min", d.Min, 0.001},
		{"Mean", d.Mean, 5.0005},
		{"P50", d.P50, 5},
		{"P90", d.P90, 9},
		{"P99", d.P99, 9.9},
		{"P999", d.P999, 9.99},
		{"Max", d.Max, 10},
	} {
		if !withinMs(f.got, f.want) {
			t.Errorf("Dist.%s = %g ms, want %g ms within 0.1%%", f.name, f.got, f.want)
		}
	}
	checkCurve(t, d)
	// Five points per nine while the count resolves them: 0 to 99.99 for
	// 10,000 values (k = 0..20), then the maximum.
	if len(d.Curve) != 22 {
		t.Errorf("curve has %d points, want 22: %v", len(d.Curve), d.Curve)
	}
	if p := d.Curve[len(d.Curve)-2].X; math.Abs(p-99.99) > 1e-9 {
		t.Errorf("last percentile before the maximum = %g, want 99.99", p)
	}
}

// checkCurve checks that d's curve starts at percentile 0, climbs in X
// and never falls in Y, and ends at X = 100 with the maximum.
func checkCurve(t *testing.T, d Dist) {
	t.Helper()
	c := d.Curve
	if len(c) < 2 {
		t.Fatalf("curve of %d values has %d points: %v", d.Count, len(c), c)
	}
	if c[0].X != 0 {
		t.Errorf("curve starts at X = %g, want 0", c[0].X)
	}
	for i := 1; i < len(c); i++ {
		if c[i].X <= c[i-1].X || c[i].Y < c[i-1].Y {
			t.Errorf("curve not monotonic at %d: %v then %v", i, c[i-1], c[i])
		}
	}
	if last := c[len(c)-1]; last.X != 100 || last.Y != d.Max {
		t.Errorf("curve ends at %v, want {100 %g}", last, d.Max)
	}
	if c[0].Y != d.Min {
		t.Errorf("curve starts at Y = %g, want the minimum %g", c[0].Y, d.Min)
	}
}

func TestLatencyEarly(t *testing.T) {
	t.Parallel()
	l := NewLatency()
	for _, d := range []time.Duration{-3 * time.Millisecond, 5 * time.Millisecond, -7 * time.Millisecond, -time.Microsecond, 2 * time.Millisecond} {
		l.Record(d)
	}
	if got := l.Count(); got != 5 {
		t.Errorf("Count = %d, want 5 (early values are counted)", got)
	}
	if n, earliest := l.Early(); n != 3 || earliest != -7*time.Millisecond {
		t.Errorf("Early = %d, %v, want 3, -7ms", n, earliest)
	}
	// The three early ones are recorded as 0.
	if got := l.Quantile(0); got != 0 {
		t.Errorf("Quantile(0) = %v, want 0", got)
	}
	if got := l.Quantile(60); got != 0 {
		t.Errorf("Quantile(60) = %v, want 0 (three of five values are early)", got)
	}
	if got := l.Quantile(100); !within(got, 5*time.Millisecond) {
		t.Errorf("Quantile(100) = %v, want 5ms", got)
	}
	d := l.Dist("lateness")
	if d.Count != 5 || d.Min != 0 || !withinMs(d.Max, 5) || !withinMs(d.Mean, 7.0/5) {
		t.Errorf("Dist = %+v, want count 5, min 0, max 5, mean 1.4", d)
	}
	checkCurve(t, d)

	// Less than a microsecond late is 0, not early.
	l = NewLatency()
	l.Record(500 * time.Nanosecond)
	l.Record(0)
	if n, _ := l.Early(); n != 0 || l.Count() != 2 {
		t.Errorf("sub-µs lateness: Early %d, Count %d, want 0, 2", n, l.Count())
	}
}

func TestLatencyOver(t *testing.T) {
	t.Parallel()
	l := NewLatency()
	l.Record(time.Hour) // the top of the range is not over it
	l.Record(time.Hour + time.Millisecond)
	l.Record(48 * time.Hour)
	l.Record(time.Duration(math.MaxInt64))
	l.Record(time.Second)
	if got := l.Over(); got != 3 {
		t.Errorf("Over = %d, want 3", got)
	}
	if got := l.Count(); got != 5 {
		t.Errorf("Count = %d, want 5", got)
	}
	if got := l.Quantile(100); !within(got, time.Hour) {
		t.Errorf("Quantile(100) = %v, want 1h (clamped)", got)
	}
	if got := l.Quantile(10); !within(got, time.Second) {
		t.Errorf("Quantile(10) = %v, want 1s", got)
	}
	d := l.Dist("x")
	if !withinMs(d.Max, 3600e3) || !withinMs(d.Min, 1000) {
		t.Errorf("Dist min %g max %g, want 1000 and 3600000 ms", d.Min, d.Max)
	}
	checkCurve(t, d)
}

func TestLatencyEmptyAndSingle(t *testing.T) {
	t.Parallel()
	l := NewLatency()
	if d := l.Dist("none"); d.Count != 0 || d.Curve != nil || d.Max != 0 || d.Name != "none" || d.Unit != "ms" {
		t.Errorf("empty Dist = %+v", d)
	}
	if l.Quantile(99) != 0 || l.Count() != 0 || l.Over() != 0 {
		t.Errorf("empty Latency: Quantile %v Count %d Over %d", l.Quantile(99), l.Count(), l.Over())
	}
	l.Record(3 * time.Millisecond)
	d := l.Dist("one")
	checkCurve(t, d)
	if len(d.Curve) != 2 || !withinMs(d.Curve[0].Y, 3) {
		t.Errorf("curve of one value = %v, want [{0 3} {100 3}]", d.Curve)
	}
}

func TestLatencyCurveLength(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 2, 9, 10, 99, 100, 1000, 100000} {
		l := NewLatency()
		for i := range n {
			l.Record(time.Duration(i%5000+1) * time.Microsecond)
		}
		d := l.Dist("d")
		checkCurve(t, d)
		// Percentile k/5 nines is on the curve while (1 - p) * n >= 1;
		// where that is 1 exactly (n a power of ten) rounding may leave
		// the last percentile out, which the maximum then stands for.
		want := int(math.Floor(5*math.Log10(float64(n))+1e-9)) + 2
		if got := len(d.Curve); got != want && (got != want-1 || float64(n) != math.Pow(10, math.Round(math.Log10(float64(n))))) {
			t.Errorf("n=%d: curve has %d points, want %d: %v", n, len(d.Curve), want, d.Curve)
		}
	}
}

func TestLatencyConcurrent(t *testing.T) {
	t.Parallel()
	l := NewLatency()
	const workers, each = 32, 2000
	var wg sync.WaitGroup
	stop := make(chan struct{})
	// A reader takes summaries while the writers record.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			d := l.Dist("live")
			if d.Count > 0 && len(d.Curve) == 0 {
				t.Error("a nonempty Dist without a curve")
				return
			}
			_ = l.Quantile(99)
			_, _ = l.Early()
			_ = l.Over()
		}
	}()
	var writers sync.WaitGroup
	for w := range workers {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := range each {
				switch i % 4 {
				case 0:
					l.Record(-time.Duration(w*each+i+1) * time.Microsecond)
				case 1:
					l.Record(2 * time.Hour)
				default:
					l.Record(time.Duration(i) * time.Microsecond)
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	wg.Wait()
	if got := l.Count(); got != workers*each {
		t.Errorf("Count = %d, want %d", got, workers*each)
	}
	n, earliest := l.Early()
	if n != workers*each/4 {
		t.Errorf("Early = %d, want %d", n, workers*each/4)
	}
	// The most negative: worker 31, i = 1996, as i%4 == 0.
	if want := -time.Duration((workers-1)*each+each-4+1) * time.Microsecond; earliest != want {
		t.Errorf("earliest = %v, want %v", earliest, want)
	}
	if got := l.Over(); got != workers*each/4 {
		t.Errorf("Over = %d, want %d", got, workers*each/4)
	}
}

// exactAt checks that at, the time Pacer p gives event i, is never before
// Start + i/Rate (exactly, in rationals) and less than a ms after it.
func exactAt(t *testing.T, p Pacer, i int64, at time.Time) {
	t.Helper()
	// exact = i * 1e9 / Rate, in ns.
	exact := new(big.Rat).SetInt64(i)
	exact.Mul(exact, big.NewRat(1e9, 1))
	rate := new(big.Rat)
	if rate.SetFloat64(p.Rate) == nil {
		t.Fatalf("rate %g is not finite", p.Rate)
	}
	exact.Quo(exact, rate)
	got := new(big.Rat).SetInt64(int64(at.Sub(p.Start)))
	if got.Cmp(exact) < 0 {
		t.Fatalf("rate %g: At(%d) = Start+%v, before Start + i/Rate = %s ns", p.Rate, i, at.Sub(p.Start), exact.FloatString(3))
	}
	limit := new(big.Rat).Add(exact, big.NewRat(int64(time.Millisecond), 1))
	if got.Cmp(limit) >= 0 {
		t.Fatalf("rate %g: At(%d) = Start+%v, a ms or more after Start + i/Rate = %s ns", p.Rate, i, at.Sub(p.Start), exact.FloatString(3))
	}
	if !at.Equal(at.Truncate(time.Millisecond)) {
		t.Fatalf("rate %g: At(%d) = %v is not a whole ms", p.Rate, i, at)
	}
}

var pacerRates = []float64{0.5, 1, 3, 7, 50, 333.3, 999.9, 1000, 3333, 10000, 12345.678, 1e5, 1e6}

func TestPacerAt(t *testing.T) {
	t.Parallel()
	starts := []time.Time{
		time.UnixMilli(1_700_000_000_123),
		time.Unix(1_700_000_000, 123_456_789), // not a whole ms
		time.UnixMilli(0),
	}
	for _, rate := range pacerRates {
		for _, start := range starts {
			p := Pacer{Start: start, Rate: rate}
			var prev time.Time
			for i := range int64(3000) {
				at := p.At(i)
				exactAt(t, p, i, at)
				if at.Before(prev) {
					t.Fatalf("rate %g: At(%d) = %v before At(%d) = %v", rate, i, at, i-1, prev)
				}
				prev = at
			}
			// Far along too.
			for _, i := range []int64{1e6 - 1, 1e6, 123456789, 1e9 + 7} {
				exactAt(t, p, i, p.At(i))
			}
		}
	}
	// On a whole-ms start, a rate of 1000/s is exactly one event per ms.
	p := Pacer{Start: time.UnixMilli(5000), Rate: 1000}
	for i := range int64(100) {
		if got, want := p.At(i), time.UnixMilli(5000+i); !got.Equal(want) {
			t.Errorf("At(%d) = %v, want %v", i, got, want)
		}
	}
	// At 3/s, event 1 is due at 333.33 ms: rounded up to 334.
	p = Pacer{Start: time.UnixMilli(0), Rate: 3}
	if got := p.At(1).Sub(p.Start); got != 334*time.Millisecond {
		t.Errorf("At(1) at 3/s = Start+%v, want 334ms", got)
	}
	if got := p.At(3).Sub(p.Start); got != time.Second {
		t.Errorf("At(3) at 3/s = Start+%v, want 1s", got)
	}
}

// owedBrute counts the events of p due at or before now by search.
func owedBrute(p Pacer, now time.Time) int64 {
	lo, hi := int64(0), int64(1)
	for !p.At(hi).After(now) {
		hi *= 2
	}
	// The first event due after now is in [lo, hi].
	for lo < hi {
		mid := lo + (hi-lo)/2
		if p.At(mid).After(now) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

func TestPacerOwed(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	for _, rate := range pacerRates {
		p := Pacer{Start: time.Unix(1_700_000_000, 7_000_000), Rate: rate}
		if got := p.Owed(p.Start.Add(-time.Nanosecond)); got != 0 {
			t.Errorf("rate %g: Owed before Start = %d, want 0", rate, got)
		}
		if got := p.Owed(p.Start); got != 1 {
			t.Errorf("rate %g: Owed at Start = %d, want 1", rate, got)
		}
		// At and around the due times of events, and at random times.
		var nows []time.Time
		for i := range int64(2000) {
			at := p.At(i)
			nows = append(nows, at, at.Add(-time.Nanosecond), at.Add(time.Nanosecond))
		}
		span := p.At(5000).Sub(p.Start)
		for range 2000 {
			nows = append(nows, p.Start.Add(time.Duration(rng.Int64N(int64(span)))))
		}
		for _, now := range nows {
			if got, want := p.Owed(now), owedBrute(p, now); got != want {
				t.Fatalf("rate %g: Owed(Start+%v) = %d, want %d (At(%d) = Start+%v)",
					rate, now.Sub(p.Start), got, want, want, p.At(want).Sub(p.Start))
			}
		}
	}
}

// fakeClock is a Clock on virtual time: Sleep returns at once, having
// moved the time on by the duration asked for.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps int
	// limit, when set, ends every Sleep after that many (returning false),
	// so that a loop that spins on virtual time stops.
	limit int
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) bool {
	if ctx.Err() != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps++
	if c.limit > 0 && c.sleeps > c.limit {
		return false
	}
	if d > 0 {
		c.now = c.now.Add(d)
	}
	return true
}

var _ Clock = (*fakeClock)(nil)

// released is one emit of release: the events [from, to) at a time.
type released struct {
	from, to int64
	at       time.Time
}

// runRelease runs release on a fake clock from start and returns what it
// emitted.
func runRelease(t *testing.T, start time.Time, p Pacer, n int64, size int, lead, linger time.Duration) ([]released, *fakeClock) {
	t.Helper()
	c := &fakeClock{now: start, limit: 4*int(n) + 100}
	var out []released
	ok := release(context.Background(), c, p, n, size, lead, linger, func(from, to int64) bool {
		out = append(out, released{from, to, c.Now()})
		return true
	})
	if !ok {
		t.Fatalf("release returned false after %d sleeps for %d events (spinning?)", c.sleeps, n)
	}
	return out, c
}

func TestReleaseRate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		rate   float64
		size   int
		lead   time.Duration
		linger time.Duration
		secs   int
		// minFull is the least share of batches that must be full.
		minFull float64
	}{
		{"10k/s batch 100 lead 0", 10000, 100, 0, 20 * time.Millisecond, 5, 0.99},
		{"10k/s batch 100 short linger", 10000, 100, 0, 5 * time.Millisecond, 3, 0},
		{"10k/s batch 100 lead 2s", 10000, 100, 2 * time.Second, 100 * time.Millisecond, 5, 0.99},
		{"10k/s batch 100 linger 0", 10000, 100, 2 * time.Second, 0, 3, 0},
		{"10k/s batch 1", 10000, 1, 0, 0, 2, 1},
		{"2k/s batch 1000 linger 100ms", 2000, 1000, 500 * time.Millisecond, 100 * time.Millisecond, 4, 0},
		{"777/s batch 64", 777, 64, time.Second, 100 * time.Millisecond, 6, 0.95},
		// Only whole batches (a linger longer than the run): each goes
		// out as its last event comes due, at an instant Owed must count.
		{"50/s batch 1 no linger", 50, 1, 0, time.Hour, 20, 1},
		{"50/s batch 5 no linger", 50, 5, 300 * time.Millisecond, time.Hour, 20, 1},
		{"3/s batch 2 no linger", 3, 2, 0, time.Hour, 30, 1},
		{"50/s batch 100 linger 100ms", 50, 100, 500 * time.Millisecond, 100 * time.Millisecond, 10, 0},
		{"50/s batch 100 lead 0 linger 25ms", 50, 100, 0, 25 * time.Millisecond, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			origin := time.Unix(1_700_000_000, 0)
			p := Pacer{Start: origin.Add(tc.lead), Rate: tc.rate}
			n := int64(tc.rate * float64(tc.secs))
			out, c := runRelease(t, origin, p, n, tc.size, tc.lead, tc.linger)

			// Every event once, in order, in batches of at most size.
			var next int64
			full := 0
			perSec := make([]int64, tc.secs+1)
			for _, r := range out {
				if r.from != next || r.to <= r.from || r.to-r.from > int64(tc.size) {
					t.Fatalf("emitted [%d, %d) after %d, batch size %d", r.from, r.to, next, tc.size)
				}
				next = r.to
				if r.to-r.from == int64(tc.size) {
					full++
				}
				// Each event goes out no sooner than lead before its due
				// time, and no later than linger after that.
				for i := r.from; i < r.to; i++ {
					earliest := p.At(i).Add(-tc.lead)
					if r.at.Before(earliest) {
						t.Fatalf("event %d released at origin+%v, before its due time less lead (origin+%v)", i, r.at.Sub(origin), earliest.Sub(origin))
					}
					if r.at.After(earliest.Add(tc.linger)) {
						t.Fatalf("event %d released at origin+%v, more than linger %v after its due time less lead (origin+%v)", i, r.at.Sub(origin), tc.linger, earliest.Sub(origin))
					}
				}
				sec := int(r.at.Sub(origin) / time.Second)
				if sec > tc.secs {
					t.Fatalf("events released at origin+%v, after the %ds of the run", r.at.Sub(origin), tc.secs)
				}
				perSec[sec] += r.to - r.from
			}
			if next != n {
				t.Fatalf("released %d events, want %d", next, n)
			}
			if got := float64(full) / float64(len(out)); got < tc.minFull {
				t.Errorf("%d of %d batches full (%.3f), want at least %.2f", full, len(out), got, tc.minFull)
			}
			// The released rate, per simulated second where a batch is
			// at most 1% of a second's events, and over the whole run.
			if float64(tc.size) <= tc.rate/100 {
				for s := range tc.secs {
					if got := float64(perSec[s]); math.Abs(got-tc.rate) > 0.05*tc.rate {
						t.Errorf("second %d: %g events released, want %g within 5%%", s, got, tc.rate)
					}
				}
			}
			last := out[len(out)-1].at.Sub(origin)
			if got := float64(n) / last.Seconds(); math.Abs(got-tc.rate) > 0.05*tc.rate {
				t.Errorf("released %d events in %v: %.1f/s, want %g within 5%%", n, last, got, tc.rate)
			}
			// No spinning: one sleep at most per emit and per batch
			// boundary.
			if c.sleeps > 2*len(out)+2 {
				t.Errorf("%d sleeps for %d emits", c.sleeps, len(out))
			}
		})
	}
}

func TestReleaseLowRateSmallBatches(t *testing.T) {
	t.Parallel()
	// fire's linger: min(lead/4, 100ms).
	origin := time.Unix(1_700_000_000, 0)
	lead := 2 * time.Second
	linger := min(lead/4, 100*time.Millisecond)
	p := Pacer{Start: origin.Add(lead), Rate: 50}
	out, _ := runRelease(t, origin, p, 500, 100, lead, linger)
	// 50/s is an event every 20ms: a batch waits 100ms for its first, so
	// it takes 5 or 6 events, never the 100 asked for.
	for _, r := range out {
		if k := r.to - r.from; k < 1 || k > 6 {
			t.Errorf("batch [%d, %d) of %d events at 50/s with a 100ms linger, want 1 to 6", r.from, r.to, k)
		}
		if late := r.at.Sub(p.At(r.from).Add(-lead)); late > linger {
			t.Errorf("batch [%d, %d) released %v after its first event, more than the linger", r.from, r.to, late)
		}
	}
	if len(out) < 500/6 {
		t.Errorf("%d batches for 500 events", len(out))
	}
}

func TestReleaseStops(t *testing.T) {
	t.Parallel()
	p := Pacer{Start: time.Unix(100, 0), Rate: 1000}
	t.Run("emit false", func(t *testing.T) {
		c := &fakeClock{now: p.Start}
		calls := 0
		ok := release(context.Background(), c, p, 1000, 10, 0, time.Millisecond, func(from, to int64) bool {
			calls++
			return calls < 3
		})
		if ok || calls != 3 {
			t.Errorf("release = %v after %d emits, want false after 3", ok, calls)
		}
	})
	t.Run("ctx ends", func(t *testing.T) {
		c := &fakeClock{now: p.Start}
		ctx, cancel := context.WithCancel(context.Background())
		var last int64
		ok := release(ctx, c, p, 1000, 10, 0, time.Millisecond, func(from, to int64) bool {
			if last = to; to >= 100 {
				cancel()
			}
			return true
		})
		if ok || last != 100 {
			t.Errorf("release = %v, last emitted %d, want false at 100", ok, last)
		}
	})
	t.Run("nothing to do", func(t *testing.T) {
		c := &fakeClock{now: p.Start}
		if !release(context.Background(), c, p, 0, 10, 0, 0, func(int64, int64) bool { t.Error("emit called"); return true }) {
			t.Error("release of no events = false")
		}
	})
	t.Run("wall clock", func(t *testing.T) {
		// The real clock: 200 events at 2,000/s go out in order, none
		// before its time.
		start := time.Now().Truncate(time.Millisecond).Add(time.Millisecond)
		p := Pacer{Start: start, Rate: 2000}
		var next int64
		ok := release(context.Background(), wallClock{}, p, 200, 16, 0, 2*time.Millisecond, func(from, to int64) bool {
			now := time.Now()
			if from != next {
				t.Errorf("emitted [%d, %d) after %d", from, to, next)
			}
			if now.Before(p.At(to - 1)) {
				t.Errorf("event %d released at %v, before its time %v", to-1, now, p.At(to-1))
			}
			next = to
			return true
		})
		if !ok || next != 200 {
			t.Errorf("release = %v after %d events", ok, next)
		}
	})
}

func TestWallClockSleep(t *testing.T) {
	t.Parallel()
	var c wallClock
	ctx, cancel := context.WithCancel(context.Background())
	if !c.Sleep(ctx, 0) || !c.Sleep(ctx, -time.Second) || !c.Sleep(ctx, time.Millisecond) {
		t.Error("Sleep on a live context = false")
	}
	cancel()
	if c.Sleep(ctx, 0) || c.Sleep(ctx, time.Hour) {
		t.Error("Sleep on an ended context = true")
	}
}

// validConfig is a config every check passes.
func validConfig() Config { return DefaultConfig("mixed") }

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		field  string // "" for a valid config
		change func(*Config)
	}{
		{"", func(*Config) {}},
		{"", func(c *Config) { c.Concurrency, c.PayloadSize = 4096, 1<<20 }},
		{"", func(c *Config) { c.Concurrency, c.PayloadSize, c.Batches = 1, 0, []int{1, 100000} }},
		{"", func(c *Config) { c.Cancel, c.Reschedule = 1, 0 }},
		{"", func(c *Config) { c.Cancel, c.Reschedule = 0.5, 0.5 }},
		{"", func(c *Config) { c.Lead, c.Delay, c.Drain, c.Count, c.Rate = 0, 0, 0, 0, 0 }},
		{"Duration", func(c *Config) { c.Duration = 0 }},
		{"Duration", func(c *Config) { c.Duration = -time.Second }},
		{"Count", func(c *Config) { c.Count = -1 }},
		{"Rate", func(c *Config) { c.Rate = -0.5 }},
		{"Rate", func(c *Config) { c.Rate = math.NaN() }},
		{"Rate", func(c *Config) { c.Rate = math.Inf(1) }},
		{"Concurrency", func(c *Config) { c.Concurrency = 0 }},
		{"Concurrency", func(c *Config) { c.Concurrency = 4097 }},
		{"PayloadSize", func(c *Config) { c.PayloadSize = -1 }},
		{"PayloadSize", func(c *Config) { c.PayloadSize = 1<<20 + 1 }},
		{"Lead", func(c *Config) { c.Lead = -time.Millisecond }},
		{"Delay", func(c *Config) { c.Delay = -time.Millisecond }},
		{"Drain", func(c *Config) { c.Drain = -time.Millisecond }},
		{"Cancel", func(c *Config) { c.Cancel = -0.1 }},
		{"Cancel", func(c *Config) { c.Cancel = math.NaN() }},
		{"Reschedule", func(c *Config) { c.Reschedule = -0.1 }},
		{"Reschedule", func(c *Config) { c.Reschedule = math.NaN() }},
		{"Cancel", func(c *Config) { c.Cancel, c.Reschedule = 0.9, 0.2 }},
		{"Tick", func(c *Config) { c.Tick = 0 }},
		{"Tick", func(c *Config) { c.Tick = -time.Second }},
		{"FloorRate", func(c *Config) { c.FloorRate = 0 }},
		{"FloorRate", func(c *Config) { c.FloorRate = 100001 }},
		{"FloorRate", func(c *Config) { c.FloorRate = math.NaN() }},
		{"", func(c *Config) { c.FloorRate, c.StarvedP99 = 100000, time.Nanosecond }},
		{"", func(c *Config) { c.Rates, c.HeldP99 = []float64{0.5, 1e6}, time.Nanosecond }},
		{"Rates", func(c *Config) { c.Rates = []float64{100, 0} }},
		{"Rates", func(c *Config) { c.Rates = []float64{-1, 100} }},
		{"Rates", func(c *Config) { c.Rates = []float64{100, math.Inf(1)} }},
		{"Rates", func(c *Config) { c.Rates = []float64{math.NaN(), 100} }},
		{"HeldP99", func(c *Config) { c.HeldP99 = 0 }},
		{"HeldP99", func(c *Config) { c.HeldP99 = -time.Millisecond }},
		{"StarvedP99", func(c *Config) { c.StarvedP99 = 0 }},
		{"StarvedP99", func(c *Config) { c.StarvedP99 = -time.Millisecond }},
		{"Batches", func(c *Config) { c.Batches = nil }},
		{"Batches", func(c *Config) { c.Batches = []int{0} }},
		{"Batches", func(c *Config) { c.Batches = []int{100, 100001} }},
		{"Batches", func(c *Config) { c.Batches = []int{10, -1, 100} }},
	} {
		c := validConfig()
		tc.change(&c)
		err := c.Validate()
		name := tc.field
		if name == "" {
			name = "valid"
		}
		t.Run(name, func(t *testing.T) {
			switch {
			case tc.field == "" && err != nil:
				t.Errorf("Validate(%+v) = %v, want nil", c, err)
			case tc.field == "":
			case !errors.Is(err, ErrConfig):
				t.Errorf("Validate = %v, want an error wrapping ErrConfig", err)
			case !strings.Contains(err.Error(), tc.field):
				t.Errorf("Validate = %q, does not name %s", err, tc.field)
			}
		})
	}
}

func TestConfigWithDefaults(t *testing.T) {
	t.Parallel()
	common := Config{Duration: 10 * time.Second, Batches: []int{100}, Concurrency: 16, PayloadSize: 64,
		Lead: 2 * time.Second, Delay: time.Hour, Drain: 10 * time.Second, Tick: time.Second, FloorRate: 1000,
		StarvedP99: 5 * time.Millisecond, HeldP99: 10 * time.Millisecond}
	with := func(f func(*Config)) Config {
		c := common
		f(&c)
		return c
	}
	for i, tc := range []struct {
		scenario string
		in, want Config
	}{
		{"schedule", Config{}, common},
		{"fire", Config{}, with(func(c *Config) { c.Rate = 10000 })},
		{"mixed", Config{}, with(func(c *Config) { c.Rate, c.Delay, c.Cancel, c.Reschedule = 2000, 2*time.Second, 0.8, 0.1 })},
		{"burst", Config{}, with(func(c *Config) { c.Count, c.Lead = 100000, 5*time.Second })},
		// Short runs sample every Duration/20, at least every 50ms.
		{"fire", Config{Duration: 5 * time.Second}, with(func(c *Config) { c.Rate, c.Duration, c.Tick = 10000, 5*time.Second, 250*time.Millisecond })},
		{"fire", Config{Duration: 500 * time.Millisecond}, with(func(c *Config) { c.Rate, c.Duration, c.Tick = 10000, 500*time.Millisecond, 50*time.Millisecond })},
		{"schedule", Config{Duration: time.Minute}, with(func(c *Config) { c.Duration = time.Minute })},
		// Set fields are kept.
		{"mixed", Config{Cancel: 0.5}, with(func(c *Config) { c.Rate, c.Delay, c.Cancel = 2000, 2*time.Second, 0.5 })},
		{"mixed", Config{Reschedule: 0.3}, with(func(c *Config) { c.Rate, c.Delay, c.Reschedule = 2000, 2*time.Second, 0.3 })},
		{"burst", Config{Count: 7, Lead: time.Second, Batches: []int{5, 6}, Keep: true, Tick: 3 * time.Millisecond},
			with(func(c *Config) {
				c.Count, c.Lead, c.Batches, c.Keep, c.Tick = 7, time.Second, []int{5, 6}, true, 3*time.Millisecond
			})},
		{"fire", Config{Rate: 1, Concurrency: 2, PayloadSize: 3, Delay: 4 * time.Second, Drain: 5 * time.Second},
			with(func(c *Config) {
				c.Rate, c.Concurrency, c.PayloadSize, c.Delay, c.Drain = 1, 2, 3, 4*time.Second, 5*time.Second
			})},
	} {
		t.Run(fmt.Sprintf("%s#%d", tc.scenario, i), func(t *testing.T) {
			got := tc.in.WithDefaults(tc.scenario)
			if _, ok := got.Clock.(wallClock); !ok {
				t.Errorf("Clock = %T, want the wall clock", got.Clock)
			}
			got.Clock = nil
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("WithDefaults(%s) =\n%+v, want\n%+v", tc.scenario, got, tc.want)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("the defaults do not validate: %v", err)
			}
		})
	}
	// A clock of the caller's is kept; DefaultConfig is WithDefaults of
	// the zero Config.
	c := &fakeClock{}
	if got := (Config{Clock: c}).WithDefaults("fire").Clock; got != c {
		t.Errorf("WithDefaults replaced the Clock: %v", got)
	}
	for _, s := range Scenarios {
		got, want := DefaultConfig(s), (Config{}).WithDefaults(s)
		got.Clock, want.Clock = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("DefaultConfig(%s) = %+v, want %+v", s, got, want)
		}
	}
}

// parseFlags parses args into a Config through AddFlags.
func parseFlags(args ...string) (Config, error) {
	var c Config
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	c.AddFlags(fs)
	err := fs.Parse(args)
	return c, err
}

func TestConfigAddFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		args    []string
		want    Config
		wantErr string
	}{
		{name: "none", want: Config{}},
		{name: "all", args: []string{"--duration", "2s", "--count", "5", "--rate", "100.5", "--batch", "1,10,100",
			"--concurrency", "4", "--payload-size", "10", "--lead", "1s", "--delay", "3s", "--drain", "4s",
			"--cancel", "0.5", "--reschedule", "0.25", "--keep", "--tick", "100ms", "--floor-rate", "200", "--starved-p99", "2ms",
			"--held-p99", "20ms"},
			want: Config{Duration: 2 * time.Second, Count: 5, Rate: 100.5, Batches: []int{1, 10, 100}, Concurrency: 4,
				PayloadSize: 10, Lead: time.Second, Delay: 3 * time.Second, Drain: 4 * time.Second, Cancel: 0.5,
				Reschedule: 0.25, Keep: true, Tick: 100 * time.Millisecond, FloorRate: 200, StarvedP99: 2 * time.Millisecond,
				HeldP99: 20 * time.Millisecond}},
		{name: "one rate", args: []string{"--rate", "500"}, want: Config{Rate: 500}},
		{name: "rate sweep", args: []string{"--rate", "10000, 20000,5e4"}, want: Config{Rate: 10000, Rates: []float64{10000, 20000, 50000}}},
		{name: "last rate wins", args: []string{"--rate", "1,2", "--rate", "3"}, want: Config{Rate: 3}},
		{name: "bad rate item", args: []string{"--rate", "100,fast"}, wantErr: `rate "fast" is not a number`},
		{name: "empty rate item", args: []string{"--rate", "100,"}, wantErr: `rate "" is not a number`},
		{name: "one batch", args: []string{"--batch=7"}, want: Config{Batches: []int{7}}},
		{name: "batch with spaces", args: []string{"--batch", " 1, 2 ,3"}, want: Config{Batches: []int{1, 2, 3}}},
		{name: "last batch wins", args: []string{"--batch", "1,2", "--batch", "3"}, want: Config{Batches: []int{3}}},
		{name: "bad batch", args: []string{"--batch", "1,x,3"}, wantErr: `batch size "x" is not a number`},
		{name: "empty batch item", args: []string{"--batch", "10,"}, wantErr: `batch size "" is not a number`},
		{name: "fractional batch", args: []string{"--batch", "1.5"}, wantErr: `"1.5"`},
		{name: "bad duration", args: []string{"--duration", "10"}, wantErr: "duration"},
		{name: "bad rate", args: []string{"--rate", "fast"}, wantErr: "rate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseFlags(tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("parse %q = %v, want an error with %q", tc.args, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parse %q =\n%+v, want\n%+v", tc.args, got, tc.want)
			}
		})
	}
	// A batch size out of range parses, and Validate names it.
	c, err := parseFlags("--batch", "10,0")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.WithDefaults("schedule").Validate(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "Batches") {
		t.Errorf("Validate of --batch 10,0 = %v", err)
	}
}

func TestConfigParams(t *testing.T) {
	t.Parallel()
	names := func(ps []Param) string {
		var s []string
		for _, p := range ps {
			s = append(s, p.Name+"="+p.Value)
		}
		return strings.Join(s, " ")
	}
	for _, tc := range []struct {
		scenario string
		cfg      Config
		want     string
	}{
		{"schedule", Config{Batches: []int{10, 100}}, "duration=10s batch=10,100 concurrency=16 payload-size=64 delay=1h0m0s"},
		{"fire", Config{Duration: time.Second, Rate: 500}, "duration=1s rate=500 batch=100 concurrency=16 payload-size=64 lead=2s drain=10s"},
		{"burst", Config{Count: 2000}, "duration=10s count=2000 batch=100 concurrency=16 payload-size=64 lead=5s drain=10s"},
		{"mixed", Config{}, "duration=10s rate=2000 batch=100 concurrency=16 payload-size=64 delay=2s cancel=0.8 reschedule=0.1 drain=10s"},
	} {
		if got := names(tc.cfg.WithDefaults(tc.scenario).params(tc.scenario)); got != tc.want {
			t.Errorf("params(%s) = %s, want %s", tc.scenario, got, tc.want)
		}
	}
}

// validFields reports whether c is within the documented ranges: what
// Validate must accept, and all it may.
func validFields(c Config) bool {
	share := func(f float64) bool { return f >= 0 && f <= 1 }
	ok := c.Duration > 0 && c.Count >= 0 && c.Rate >= 0 && !math.IsInf(c.Rate, 0) &&
		c.Concurrency >= 1 && c.Concurrency <= 4096 && c.PayloadSize >= 0 && c.PayloadSize <= 1<<20 &&
		c.Lead >= 0 && c.Delay >= 0 && c.Drain >= 0 && share(c.Cancel) && share(c.Reschedule) &&
		c.Cancel+c.Reschedule <= 1 && c.Tick > 0 && len(c.Batches) > 0 &&
		c.FloorRate > 0 && c.FloorRate <= 100000 && c.StarvedP99 > 0 && c.HeldP99 > 0
	for _, r := range c.Rates {
		ok = ok && r > 0 && !math.IsInf(r, 0)
	}
	for _, b := range c.Batches {
		ok = ok && b >= 1 && b <= 100000
	}
	return ok
}

func FuzzConfigValidate(f *testing.F) {
	d := validConfig()
	f.Add(int64(d.Duration), d.Count, d.Rate, "100", d.Concurrency, d.PayloadSize, int64(d.Lead), int64(d.Delay), int64(d.Drain), d.Cancel, d.Reschedule, int64(d.Tick))
	f.Add(int64(time.Second), int64(5), 0.0, "1,10,100000", 4096, 1<<20, int64(0), int64(0), int64(0), 1.0, 0.0, int64(1))
	f.Add(int64(0), int64(-1), -1.0, "0", 0, -1, int64(-1), int64(-1), int64(-1), -1.0, 2.0, int64(0))
	f.Add(int64(1), int64(0), math.NaN(), "", 1, 0, int64(0), int64(0), int64(0), math.NaN(), math.Inf(1), int64(1))
	f.Add(int64(1), int64(0), math.Inf(1), " 5 ,x", 1, 0, int64(0), int64(0), int64(0), 0.5, 0.5, int64(1))
	f.Fuzz(func(t *testing.T, dur, count int64, rate float64, batch string, conc, payload int, lead, delay, drain int64, cancel, resched float64, tick int64) {
		c := Config{Duration: time.Duration(dur), Count: count, Rate: rate, Concurrency: conc, PayloadSize: payload,
			Lead: time.Duration(lead), Delay: time.Duration(delay), Drain: time.Duration(drain), Cancel: cancel,
			Reschedule: resched, Tick: time.Duration(tick), FloorRate: 1000, StarvedP99: 5 * time.Millisecond,
			HeldP99: 10 * time.Millisecond}
		// The batch sizes as the flag takes them.
		fs := flag.NewFlagSet("f", flag.ContinueOnError)
		fs.SetOutput(new(strings.Builder))
		c.AddFlags(fs)
		if err := fs.Set("batch", batch); err != nil {
			c.Batches = nil
		}
		err := c.Validate()
		if err != nil && !errors.Is(err, ErrConfig) {
			t.Fatalf("Validate = %v, does not wrap ErrConfig", err)
		}
		if valid := validFields(c); valid != (err == nil) {
			t.Fatalf("Validate(%+v) = %v, but the fields are valid: %v", c, err, valid)
		}
		// WithDefaults never makes a valid config invalid.
		if err == nil {
			if err := c.WithDefaults("mixed").Validate(); err != nil {
				t.Fatalf("WithDefaults of a valid config: %v", err)
			}
		}
	})
}

func FuzzBatchFlag(f *testing.F) {
	for _, s := range []string{"100", "1,10,100", " 1 , 2", "", ",", "1,,2", "x", "0", "-5", "100001", "+7", "1e3", "99999999999999999999"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseFlags("--batch", s)
		fields := strings.Split(s, ",")
		var want []int
		for _, fl := range fields {
			b, perr := strconv.Atoi(strings.TrimSpace(fl))
			if perr != nil {
				if err == nil {
					t.Fatalf("--batch %q parsed as %v, but %q is not a number", s, c.Batches, fl)
				}
				return
			}
			want = append(want, b)
		}
		if err != nil {
			t.Fatalf("--batch %q: %v", s, err)
		}
		if !reflect.DeepEqual(c.Batches, want) {
			t.Fatalf("--batch %q = %v, want %v", s, c.Batches, want)
		}
		inRange := true
		for _, b := range want {
			inRange = inRange && b >= 1 && b <= 100000
		}
		err = c.WithDefaults("schedule").Validate()
		if inRange != (err == nil) {
			t.Fatalf("--batch %q: Validate = %v, sizes in range: %v", s, err, inRange)
		}
	})
}

// FuzzRateFlag checks that --rate takes exactly a comma-separated list of
// numbers: one sets Rate alone, more set Rates too (a sweep) with Rate the
// first, and Validate accepts the list exactly when each is a finite rate
// above 0.
func FuzzRateFlag(f *testing.F) {
	for _, s := range []string{"100", "10000,20000,50000,100000", " 1 , 2.5", "", ",", "1,,2", "x", "0", "-5", "1e3", "NaN", "Inf", "1,NaN", "1e400", "0x10", "200,500"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := parseFlags("--rate", s)
		var want []float64
		for _, fl := range strings.Split(s, ",") {
			r, perr := strconv.ParseFloat(strings.TrimSpace(fl), 64)
			if perr != nil {
				if err == nil {
					t.Fatalf("--rate %q parsed as %g %v, but %q is not a number", s, c.Rate, c.Rates, fl)
				}
				return
			}
			want = append(want, r)
		}
		if err != nil {
			t.Fatalf("--rate %q: %v", s, err)
		}
		same := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) }
		if !same(c.Rate, want[0]) {
			t.Fatalf("--rate %q: Rate = %g, want %g", s, c.Rate, want[0])
		}
		if len(want) == 1 && c.Rates != nil {
			t.Fatalf("--rate %q: one rate set Rates %v", s, c.Rates)
		}
		if len(want) > 1 {
			if len(c.Rates) != len(want) {
				t.Fatalf("--rate %q: Rates = %v, want %v", s, c.Rates, want)
			}
			for i := range want {
				if !same(c.Rates[i], want[i]) {
					t.Fatalf("--rate %q: Rates = %v, want %v", s, c.Rates, want)
				}
			}
		}
		valid := !math.IsNaN(want[0]) && want[0] >= 0 && !math.IsInf(want[0], 0)
		if len(want) > 1 {
			for _, r := range want {
				valid = valid && r > 0 && !math.IsInf(r, 0)
			}
		}
		err = c.WithDefaults("fire").Validate()
		if valid != (err == nil) {
			t.Fatalf("--rate %q: Validate = %v, rates valid: %v", s, err, valid)
		}
	})
}
