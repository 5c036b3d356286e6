package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// counter is one named count a run keeps, such as timers scheduled or
// delivered. It is sampled into a Series and shown on the progress line.
type counter struct {
	name string
	n    atomic.Int64
}

func (c *counter) add(n int64) { c.n.Add(n) }

// meter samples a run's counters every tick into rate series and drives
// the progress display. Its owner starts it with run and stops it by
// ending run's context; the counters may be added to concurrently.
type meter struct {
	start    time.Time
	tick     time.Duration
	counters []*counter
	prog     *progress

	// mu guards the fields below, which run writes and report reads.
	mu     sync.Mutex
	series [][]Point
	last   []int64
	lastAt time.Time
	phase  string
}

func newMeter(start time.Time, tick time.Duration, prog *progress, names ...string) *meter {
	m := &meter{start: start, tick: tick, prog: prog, lastAt: start,
		series: make([][]Point, len(names)), last: make([]int64, len(names))}
	for _, name := range names {
		m.counters = append(m.counters, &counter{name: name})
	}
	return m
}

// counter returns the counter named name; it panics on a name not given
// to newMeter, which is a bug in a scenario.
func (m *meter) counter(name string) *counter {
	for _, c := range m.counters {
		if c.name == name {
			return c
		}
	}
	panic("bench: no counter " + name)
}

// setPhase names what the run is doing now, for the progress line.
func (m *meter) setPhase(p string) {
	m.mu.Lock()
	m.phase = p
	m.mu.Unlock()
}

// run samples every tick until ctx ends, then takes a last sample.
func (m *meter) run(ctx context.Context, c Clock) {
	for c.Sleep(ctx, m.tick) {
		m.sample(c.Now())
	}
	m.sample(c.Now())
	m.prog.finish()
}

// sample appends the rate of every counter since the last sample.
func (m *meter) sample(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dt := now.Sub(m.lastAt).Seconds()
	if dt <= 0 {
		return
	}
	rates := make([]rate, len(m.counters))
	for i, c := range m.counters {
		n := c.n.Load()
		r := float64(n-m.last[i]) / dt
		m.series[i] = append(m.series[i], Point{X: now.Sub(m.start).Seconds(), Y: r})
		m.last[i] = n
		rates[i] = rate{name: c.name, total: n, perSec: r}
	}
	m.lastAt = now
	m.prog.update(now.Sub(m.start), m.phase, rates)
}

// Series returns the sampled rates, one Series per counter.
func (m *meter) Series() []Series {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Series, len(m.counters))
	for i, c := range m.counters {
		out[i] = Series{Name: c.name, Unit: "timers/s", Points: append([]Point(nil), m.series[i]...)}
	}
	return out
}

// rate is one counter's figures at a sample.
type rate struct {
	name   string
	total  int64
	perSec float64
}

// progress shows how a run goes: on a terminal one line redrawn in place
// with a bar, elsewhere a plain line every interval (so logs stay
// readable). The meter is its only caller.
type progress struct {
	w     io.Writer // nil: no progress shown
	tty   bool
	every time.Duration
	// budget is the run's expected length, for the bar; 0 draws none.
	budget time.Duration

	lastLine time.Duration // when the last plain line was written
	drawn    bool          // a tty line is on screen
}

func (p *progress) update(elapsed time.Duration, phase string, rates []rate) {
	if p == nil || p.w == nil {
		return
	}
	var b strings.Builder
	if p.tty {
		b.WriteString("\r\033[K")
		if p.budget > 0 {
			const width = 24
			frac := min(1, elapsed.Seconds()/p.budget.Seconds())
			fill := int(frac * width)
			fmt.Fprintf(&b, "[%s%s] %3.0f%% ", strings.Repeat("=", fill), strings.Repeat(" ", width-fill), frac*100)
		}
	} else if elapsed-p.lastLine < p.every {
		return
	}
	fmt.Fprintf(&b, "%6.1fs", elapsed.Seconds())
	if phase != "" {
		fmt.Fprintf(&b, "  %s", phase)
	}
	for _, r := range rates {
		fmt.Fprintf(&b, "  %s %s (%s/s)", r.name, human(float64(r.total)), human(r.perSec))
	}
	if !p.tty {
		b.WriteByte('\n')
		p.lastLine = elapsed
	}
	p.drawn = p.tty
	io.WriteString(p.w, b.String())
}

// finish ends the line a terminal display left open.
func (p *progress) finish() {
	if p != nil && p.w != nil && p.drawn {
		io.WriteString(p.w, "\n")
		p.drawn = false
	}
}
