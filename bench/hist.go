package bench

import (
	"math"
	"sync"
	"time"

	hdr "github.com/HdrHistogram/hdrhistogram-go"
)

// The range of a Latency: 1 µs to 1 hour at 3 significant digits, so every
// recorded value is within 0.1% of what was measured. A larger value is
// clamped to the hour and counted in Over.
const (
	latencyLowest  = 1                       // µs
	latencyHighest = int64(time.Hour / 1000) // µs
	latencyDigits  = 3
)

// Latency records durations into an HDR histogram (in µs). A negative
// duration, which for lateness is an early delivery, cannot go into the
// histogram: it is recorded as 0 and counted by Early, and the earliest
// one is kept. Its methods may be called concurrently.
type Latency struct {
	mu sync.Mutex
	// h holds every value recorded, negatives as 0.
	h *hdr.Histogram
	// early counts negative values; earliest is the most negative one.
	// Invariant: early == 0 iff earliest == 0.
	early    int64
	earliest time.Duration
	// over counts values above the histogram's range, recorded as its top.
	over int64
}

// NewLatency returns an empty Latency.
func NewLatency() *Latency {
	return &Latency{h: hdr.New(latencyLowest, latencyHighest, latencyDigits)}
}

// Record adds one duration.
func (l *Latency) Record(d time.Duration) { l.recordN(d, 1) }

// recordN adds n of duration d.
func (l *Latency) recordN(d time.Duration, n int64) {
	us := int64(d / time.Microsecond)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case d < 0:
		l.early += n
		l.earliest = min(l.earliest, d)
		us = 0
	case us > latencyHighest:
		l.over += n
		us = latencyHighest
	}
	// RecordValues fails only outside the range, which was clamped above.
	_ = l.h.RecordValues(us, n)
}

// Count is the number of durations recorded, early ones included.
func (l *Latency) Count() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.h.TotalCount()
}

// Early is the number of negative durations recorded and the most negative.
func (l *Latency) Early() (n int64, earliest time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.early, l.earliest
}

// Over is the number of durations above an hour, recorded as an hour.
func (l *Latency) Over() int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.over
}

// Quantile is the value at percentile p (0 to 100).
func (l *Latency) Quantile(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Duration(l.h.ValueAtPercentile(p)) * time.Microsecond
}

// Dist summarises the durations recorded so far in milliseconds, with a
// percentile curve for the plots.
func (l *Latency) Dist(name string) Dist {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := func(us int64) float64 { return float64(us) / 1000 }
	d := Dist{Name: name, Unit: "ms", Count: l.h.TotalCount()}
	if d.Count == 0 {
		return d
	}
	d.Min = ms(l.h.Min())
	d.Mean = l.h.Mean() / 1000
	d.P50 = ms(l.h.ValueAtPercentile(50))
	d.P90 = ms(l.h.ValueAtPercentile(90))
	d.P99 = ms(l.h.ValueAtPercentile(99))
	d.P999 = ms(l.h.ValueAtPercentile(99.9))
	d.Max = ms(l.h.Max())
	d.Curve = curve(l.h, ms)
	return d
}

// curve samples h at percentiles that close in on 100 geometrically (five
// points per nine: 0, 36.9, 60.2, ..., 90, ..., 99, ...) as far as the
// count resolves them, then the maximum: the shape an HDR percentile plot
// draws on its log axis.
func curve(h *hdr.Histogram, ms func(int64) float64) []Point {
	n := float64(h.TotalCount())
	var pts []Point
	for k := 0; ; k++ {
		p := 100 * (1 - math.Pow(10, -float64(k)/5))
		// Beyond 1 - 1/n the percentile is the maximum. The margin keeps
		// a count that is a power of ten from losing its last point to
		// rounding (99.9 for 1,000 values).
		if (100-p)/100*n < 1-1e-9 {
			break
		}
		pts = append(pts, Point{X: p, Y: ms(h.ValueAtPercentile(p))})
	}
	return append(pts, Point{X: 100, Y: ms(h.Max())})
}
