package bench

import (
	"context"
	"math"
	"math/bits"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Floor is what the machine itself allowed while a run went, measured in
// the bench's process at the same time as the target: the lateness of a
// light stream of Go's time.AfterFunc timers, the Go scheduler's latency
// and GC pauses, the process's CPU time, and the host's load and steal.
// A target's lateness can be no better than its floor; when the floor
// itself is late, the machine was starved and the run says little about
// the target.
type Floor struct {
	// Rate is the probe's timers per second.
	Rate float64 `json:"rate"`
	// Elapsed is the time the probe ran, in seconds.
	Elapsed float64 `json:"elapsed_s"`
	// Lateness is that of the probe's timers: from each one's due time to
	// its callback, on the monotonic clock. The probe records it without
	// a lock (to within 3%), so that it measures the machine, not itself.
	Lateness Dist `json:"lateness"`
	// Unfired counts the probe's timers due during the run that had not
	// fired a second after it ended.
	Unfired int64 `json:"unfired"`
	// SchedLatency is how long the bench's goroutines waited runnable
	// before they ran, over the run (/sched/latencies:seconds).
	SchedLatency Dist `json:"sched_latency"`
	// GCPauses are the stop-the-world pauses of the bench's GC over the
	// run (/sched/pauses/total/gc:seconds).
	GCPauses Dist `json:"gc_pauses"`
	// CPUUser and CPUSystem are the CPU seconds the bench's process used
	// over the run; zero where getrusage is missing.
	CPUUser   float64 `json:"cpu_user_s"`
	CPUSystem float64 `json:"cpu_system_s"`
	// HostKnown reports whether Load, HostBusy and Steal were read (from
	// /proc, so on Linux).
	HostKnown bool `json:"host_known"`
	// Load is the host's 1-minute load average at the end of the run.
	Load float64 `json:"load1"`
	// HostBusy is the share of the host's CPU time, over all its CPUs and
	// the run, that was not idle (steal included), 0 to 1.
	HostBusy float64 `json:"host_busy"`
	// Steal is the share of the host's CPU time over the run that the
	// hypervisor gave to other guests, 0 to 1.
	Steal float64 `json:"steal"`
	// StarvedP99 is the threshold in ms: a Lateness p99 above it (or a
	// timer still unfired) marks the machine starved.
	StarvedP99 float64 `json:"starved_p99_ms"`
	// Starved reports that the floor crossed StarvedP99 (or left a timer
	// unfired).
	Starved bool `json:"starved"`
}

// Names of the floor's figures in tables and comparisons.
const (
	floorLatenessName = "floor: time.AfterFunc lateness"
	floorSchedName    = "floor: Go scheduler latency"
	floorGCName       = "floor: GC pauses"
)

// dists returns the floor's distributions, named for tables, comparisons
// and plots.
func (f *Floor) dists() []Dist {
	named := func(d Dist, name string) Dist { d.Name = name; return d }
	return []Dist{named(f.Lateness, floorLatenessName), named(f.SchedLatency, floorSchedName), named(f.GCPauses, floorGCName)}
}

// metrics returns the floor's single figures, named for tables and
// comparisons.
func (f *Floor) metrics() []Metric {
	var cores float64 // of the bench's process
	if f.Elapsed > 0 {
		cores = (f.CPUUser + f.CPUSystem) / f.Elapsed
	}
	ms := []Metric{
		{Name: "floor: probe rate", Value: f.Rate, Unit: "timers/s"},
		{Name: "floor: probe timers unfired", Value: float64(f.Unfired), Unit: "timers"},
		{Name: "floor: bench CPU", Value: cores, Unit: "cores"},
	}
	if f.HostKnown {
		ms = append(ms,
			Metric{Name: "floor: host CPU busy", Value: 100 * f.HostBusy, Unit: "%"},
			Metric{Name: "floor: host CPU steal", Value: 100 * f.Steal, Unit: "%"},
			Metric{Name: "floor: host load (1 min)", Value: f.Load, Unit: ""})
	}
	return ms
}

// verdict says in a line whether the machine was starved.
func (f *Floor) verdict() string {
	p99 := strconv.FormatFloat(roundSig(f.Lateness.P99, 3), 'f', -1, 64)
	limit := strconv.FormatFloat(f.StarvedP99, 'f', -1, 64)
	switch {
	case f.Unfired > 0:
		return "MACHINE STARVED: " + strconv.FormatInt(f.Unfired, 10) + " of the floor's time.AfterFunc timers had not fired a second after the run"
	case f.Starved:
		return "MACHINE STARVED: the floor's time.AfterFunc p99 lateness is " + p99 + " ms, above " + limit + " ms; the target's lateness says little about the target"
	}
	return "floor p99 " + p99 + " ms, within " + limit + " ms"
}

// floorProbe measures a run's Floor: start it before the load, stop it
// after.
type floorProbe struct {
	p     Pacer
	lat   atomicLatency
	start time.Time
	// limit is the number of probe timers that count: those due before
	// the run ended (math.MaxInt64 while it goes); fired counts the ones
	// of them that fired.
	limit, fired atomic.Int64
	cancel       context.CancelFunc
	done         chan struct{} // closed when the releasing goroutine ends
	before       floorSample
}

// floorSample is a reading of the counters a Floor is a difference of.
type floorSample struct {
	sched, gc      *metrics.Float64Histogram
	user, system   float64 // CPU seconds of the process
	cpuOK          bool
	busy, steal, t uint64 // host CPU ticks: busy, stolen, all
	hostOK         bool
}

// The runtime metrics a Floor reads. The GC pause histogram is the one
// that replaced /gc/pauses:seconds (Go 1.22).
const (
	schedLatencyMetric = "/sched/latencies:seconds"
	gcPauseMetric      = "/sched/pauses/total/gc:seconds"
)

func readFloorSample() floorSample {
	ms := []metrics.Sample{{Name: schedLatencyMetric}, {Name: gcPauseMetric}}
	metrics.Read(ms)
	var s floorSample
	if ms[0].Value.Kind() == metrics.KindFloat64Histogram {
		s.sched = ms[0].Value.Float64Histogram()
	}
	if ms[1].Value.Kind() == metrics.KindFloat64Histogram {
		s.gc = ms[1].Value.Float64Histogram()
	}
	s.user, s.system, s.cpuOK = processCPU()
	s.busy, s.steal, s.t, s.hostOK = hostCPU()
	return s
}

// startFloor starts a floor probe of rate timers per second.
func startFloor(rate float64) *floorProbe {
	fp := &floorProbe{before: readFloorSample(), done: make(chan struct{})}
	fp.limit.Store(math.MaxInt64)
	fp.start = time.Now()
	// The first timer is due a tick from now, on a whole ms as the run's
	// are; the start keeps its monotonic reading.
	fp.p = Pacer{Start: ceilMilli(fp.start.Add(floorLead)), Rate: rate}
	ctx, cancel := context.WithCancel(context.Background())
	fp.cancel = cancel
	go func() {
		defer close(fp.done)
		release(ctx, wallClock{}, fp.p, math.MaxInt64, floorBatch, floorLead, floorLead/2, func(from, to int64) bool {
			for seq := from; seq < to; seq++ {
				due := fp.p.At(seq)
				time.AfterFunc(time.Until(due), func() {
					// Lock-free: the probe must not add a wait of its own.
					if seq < fp.limit.Load() {
						fp.lat.record(time.Since(due))
						fp.fired.Add(1)
					}
				})
			}
			return true
		})
	}()
	return fp
}

// The probe arms its timers floorLead ahead of their due times, up to
// floorBatch at a time, and gives the timers due by the end of the run
// floorGrace to fire.
const (
	floorLead  = 20 * time.Millisecond
	floorBatch = 16
	floorGrace = time.Second
)

// stop ends the probe and returns its Floor; starved is the p99 threshold.
// It waits up to floorGrace for the timers due before it was called.
func (fp *floorProbe) stop(starved time.Duration) *Floor {
	fp.cancel()
	<-fp.done
	end := time.Now()
	n := fp.p.Owed(end)
	fp.limit.Store(n)
	for deadline := end.Add(floorGrace); fp.fired.Load() < n && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	fp.limit.Store(0) // a timer firing from now on is not counted
	after := readFloorSample()
	f := &Floor{
		Rate:       fp.p.Rate,
		Elapsed:    end.Sub(fp.start).Seconds(),
		Lateness:   fp.lat.latency().Dist("time.AfterFunc lateness"),
		Unfired:    max(0, n-fp.fired.Load()),
		StarvedP99: float64(starved) / float64(time.Millisecond),
	}
	f.SchedLatency = histDelta(fp.before.sched, after.sched).Dist("Go scheduler latency")
	f.GCPauses = histDelta(fp.before.gc, after.gc).Dist("GC pauses")
	if fp.before.cpuOK && after.cpuOK {
		f.CPUUser, f.CPUSystem = after.user-fp.before.user, after.system-fp.before.system
	}
	if fp.before.hostOK && after.hostOK && after.t > fp.before.t {
		all := float64(after.t - fp.before.t)
		f.HostKnown = true
		f.HostBusy = float64(after.busy-fp.before.busy) / all
		f.Steal = float64(after.steal-fp.before.steal) / all
		f.Load = loadAverage()
	}
	f.Starved = f.Unfired > 0 || (f.Lateness.Count > 0 && f.Lateness.P99 > f.StarvedP99)
	return f
}

// histDelta returns the values a cumulative runtime histogram gained from
// a to b as a Latency, each at the middle of its bucket (an infinite
// bound gives way to the finite one). Either being nil gives an empty one.
func histDelta(a, b *metrics.Float64Histogram) *Latency {
	l := NewLatency()
	if a == nil || b == nil || len(a.Counts) != len(b.Counts) {
		return l
	}
	for i, c := range b.Counts {
		n := c - a.Counts[i]
		if n == 0 {
			continue
		}
		lo, hi := b.Buckets[i], b.Buckets[i+1]
		mid := (lo + hi) / 2
		switch {
		case math.IsInf(lo, -1):
			mid = hi
		case math.IsInf(hi, 1):
			mid = lo
		}
		l.recordN(time.Duration(mid*float64(time.Second)), int64(n))
	}
	return l
}

// atomicLatency is a histogram of durations that records without a lock:
// 32 buckets to each power of two of microseconds (within 3%), from 0 to
// the hour of a Latency, early values counted apart. The zero value is
// empty; record may be called concurrently.
type atomicLatency struct {
	buckets [atomicBuckets]atomic.Int64
	early   atomic.Int64
}

const (
	atomicSubBits = 5
	atomicSub     = 1 << atomicSubBits
	// atomicBuckets covers values up to latencyHighest µs (< 2^32).
	atomicBuckets = (32 - atomicSubBits + 1) * atomicSub
)

func (a *atomicLatency) record(d time.Duration) {
	if d < 0 {
		a.early.Add(1)
		return
	}
	a.buckets[atomicBucket(min(int64(d/time.Microsecond), latencyHighest))].Add(1)
}

// atomicBucket is the bucket of us µs: us itself below 2*atomicSub, then
// atomicSub buckets to each power of two.
func atomicBucket(us int64) int {
	if us < 2*atomicSub {
		return int(us)
	}
	shift := bits.Len64(uint64(us)) - 1 - atomicSubBits
	return (shift+1)*atomicSub + int(us>>shift) - atomicSub
}

// atomicValue is the middle of bucket i in µs: the value it records.
func atomicValue(i int) int64 {
	if i < 2*atomicSub {
		return int64(i)
	}
	shift := i/atomicSub - 1
	lo := int64(i%atomicSub+atomicSub) << shift
	return lo + (int64(1)<<shift)/2
}

// latency returns what a recorded as a Latency.
func (a *atomicLatency) latency() *Latency {
	l := NewLatency()
	for i := range a.buckets {
		if n := a.buckets[i].Load(); n > 0 {
			l.recordN(time.Duration(atomicValue(i))*time.Microsecond, n)
		}
	}
	if n := a.early.Load(); n > 0 {
		l.recordN(-time.Microsecond, n)
	}
	return l
}

// hostCPU reads the host's CPU time from /proc/stat: busy (all but idle
// and iowait), stolen, and all, in clock ticks summed over the CPUs.
func hostCPU() (busy, steal, all uint64, ok bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	// cpu user nice system idle iowait irq softirq steal [guest ...]:
	// guest time is already counted in user.
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, 0, false
	}
	var v [8]uint64
	for i := range v {
		if v[i], err = strconv.ParseUint(f[i+1], 10, 64); err != nil {
			return 0, 0, 0, false
		}
		all += v[i]
	}
	idle := v[3] + v[4]
	return all - idle, v[7], all, true
}

// loadAverage is the host's 1-minute load average, 0 when unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
