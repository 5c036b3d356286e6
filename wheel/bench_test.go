package wheel

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"
	"time"
)

// The benchmarks run with a million timers already pending, due over
// [1 s, 60 s], and set the wheel beside Go's runtime timers under the same
// load, so one run reads as a ratio:
//
//	go test -run '^$' -bench 'Wheel|Std' -benchmem ./wheel
const (
	benchPending = 1_000_000
	benchBatch   = benchPending / 16 // ops between untimed clean-ups; divides benchPending
	minDelay     = int64(time.Second / time.Millisecond)
	maxDelay     = int64(time.Minute / time.Millisecond)
)

// benchDelays are delays in ms, uniform over [minDelay, maxDelay].
var benchDelays = func() []int64 {
	r := rand.New(rand.NewPCG(1, 2))
	d := make([]int64, 1<<20)
	for i := range d {
		d[i] = minDelay + r.Int64N(maxDelay-minDelay+1)
	}
	return d
}()

func delay(i int) int64 { return benchDelays[i&(len(benchDelays)-1)] }

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// pendingWheel returns a wheel holding n timers due over [1 s, 60 s] from
// start, their handles, and the wheel memory per timer in bytes.
func pendingWheel(b *testing.B, n int) (*Wheel, []Handle, float64) {
	hs := make([]Handle, n)
	before := heapInUse()
	w := newWheel(b, time.Millisecond, start)
	for i := range hs {
		hs[i] = mustAdd(b, w, start+delay(i), uint64(i))
	}
	perTimer := float64(heapInUse()-before) / float64(n)
	runtime.KeepAlive(w)
	return w, hs, perTimer
}

func BenchmarkWheelAdd(b *testing.B) {
	w, _, perTimer := pendingWheel(b, benchPending)
	extra := make([]Handle, benchBatch)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % benchBatch
		if j == 0 && i > 0 {
			b.StopTimer()
			for _, h := range extra {
				w.Cancel(h)
			}
			b.StartTimer()
		}
		extra[j], _ = w.Add(start+delay(i), uint64(i))
	}
	b.StopTimer()
	b.ReportMetric(perTimer, "B/timer")
}

// cancelOrders are the orders the cancel benchmarks remove timers in:
// oldest first, or at random, as order timeouts are, where every cancel
// touches a cold timer somewhere in memory.
var cancelOrders = []struct {
	name string
	perm func(n int) []int
}{
	{"order=fifo", func(n int) []int {
		p := make([]int, n)
		for i := range p {
			p[i] = i
		}
		return p
	}},
	{"order=random", rand.New(rand.NewPCG(3, 4)).Perm},
}

func BenchmarkWheelCancel(b *testing.B) {
	for _, order := range cancelOrders {
		b.Run(order.name, func(b *testing.B) {
			w, hs, perTimer := pendingWheel(b, benchPending)
			perm := order.perm(len(hs))
			victims := make([]Handle, len(hs)) // handles in cancel order
			for j, k := range perm {
				victims[j] = hs[k]
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % len(perm)
				if i%benchBatch == 0 && i > 0 {
					b.StopTimer() // put back the batch just cancelled
					lo := (i - benchBatch) % len(perm)
					for v := lo; v < lo+benchBatch; v++ {
						victims[v] = mustAdd(b, w, start+delay(perm[v]), uint64(perm[v]))
					}
					b.StartTimer()
				}
				if !w.Cancel(victims[j]) {
					b.Fatal("cancel failed")
				}
			}
			b.StopTimer()
			b.ReportMetric(perTimer, "B/timer")
		})
	}
}

// BenchmarkWheelAdvance measures expiry throughput: the wheel advances 1 ms
// at a time, as a shard under load does, while timers keep arriving due
// over [1 s, 60 s] so that the pending count stays near its starting value.
// One op is one timer fired.
func BenchmarkWheelAdvance(b *testing.B) {
	for _, pending := range []int{benchPending, 10 * benchPending} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			w, _, _ := pendingWheel(b, pending)
			dst := make([]Timer, 0, 1<<16)
			now, fired, added, sinceRefill := start, 0, pending, 0
			b.ReportAllocs()
			b.ResetTimer()
			for fired < b.N {
				now++
				dst = w.Advance(now, dst[:0])
				fired += len(dst)
				sinceRefill += len(dst)
				if now%10_000 == 0 { // every 10 s of wheel time, top up
					b.StopTimer()
					for range sinceRefill {
						mustAdd(b, w, now+delay(added), uint64(added))
						added++
					}
					sinceRefill = 0
					b.StartTimer()
				}
			}
			b.StopTimer()
			if sec := b.Elapsed().Seconds(); sec > 0 {
				b.ReportMetric(float64(fired)/sec, "timers/s")
			}
		})
	}
}

// BenchmarkWheelBurst measures a thundering herd: a million timers due in
// the same millisecond, fired by one Advance. One op is one timer fired.
func BenchmarkWheelBurst(b *testing.B) {
	w := newWheel(b, time.Millisecond, start)
	dst := make([]Timer, 0, benchPending)
	now, fired := start, 0
	b.ReportAllocs()
	b.ResetTimer()
	for fired < b.N {
		b.StopTimer()
		now += minDelay
		for i := range benchPending {
			mustAdd(b, w, now, uint64(i))
		}
		b.StartTimer()
		dst = w.Advance(now, dst[:0])
		fired += len(dst)
	}
	b.StopTimer()
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(fired)/sec, "timers/s")
	}
}

// BenchmarkWheelBurstLimited is BenchmarkWheelBurst drained as a shard
// drains it: AdvanceLimit calls of 4,096 timers each, so beside
// BenchmarkWheelBurst it reads as what bounding each call costs. One op
// is one timer fired.
func BenchmarkWheelBurstLimited(b *testing.B) {
	const limit = 4096
	w := newWheel(b, time.Millisecond, start)
	dst := make([]Timer, 0, limit)
	now, fired := start, 0
	b.ReportAllocs()
	b.ResetTimer()
	for fired < b.N {
		b.StopTimer()
		now += minDelay
		for i := range benchPending {
			mustAdd(b, w, now, uint64(i))
		}
		b.StartTimer()
		for w.Len() > 0 {
			dst = w.AdvanceLimit(now, dst[:0], limit)
			fired += len(dst)
		}
	}
	b.StopTimer()
	if sec := b.Elapsed().Seconds(); sec > 0 {
		b.ReportMetric(float64(fired)/sec, "timers/s")
	}
}

// stdPending starts n runtime timers due over [1 s, 60 s] and returns them
// with the heap bytes per timer; the caller stops them.
func stdPending(n int) ([]*time.Timer, float64) {
	noop := func() {}
	ts := make([]*time.Timer, n)
	before := heapInUse()
	for i := range ts {
		ts[i] = time.AfterFunc(time.Duration(delay(i))*time.Millisecond, noop)
	}
	return ts, float64(heapInUse()-before) / float64(n)
}

func stopAll(ts []*time.Timer) {
	for _, t := range ts {
		if t != nil {
			t.Stop()
		}
	}
}

// BenchmarkStdAfterFunc is the peer of BenchmarkWheelAdd.
func BenchmarkStdAfterFunc(b *testing.B) {
	ts, perTimer := stdPending(benchPending)
	defer stopAll(ts)
	noop := func() {}
	extra := make([]*time.Timer, benchBatch)
	defer stopAll(extra)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % benchBatch
		if j == 0 && i > 0 {
			b.StopTimer()
			stopAll(extra)
			b.StartTimer()
		}
		extra[j] = time.AfterFunc(time.Duration(delay(i))*time.Millisecond, noop)
	}
	b.StopTimer()
	b.ReportMetric(perTimer, "B/timer")
}

// BenchmarkStdStop is the peer of BenchmarkWheelCancel.
func BenchmarkStdStop(b *testing.B) {
	noop := func() {}
	for _, order := range cancelOrders {
		b.Run(order.name, func(b *testing.B) {
			ts, perTimer := stdPending(benchPending)
			defer func() { stopAll(ts) }()
			perm := order.perm(len(ts))
			victims := make([]*time.Timer, len(ts)) // timers in stop order
			for j, k := range perm {
				victims[j] = ts[k]
			}
			ts = victims
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				j := i % len(perm)
				if i%benchBatch == 0 && i > 0 {
					b.StopTimer()
					lo := (i - benchBatch) % len(perm)
					for v := lo; v < lo+benchBatch; v++ {
						victims[v] = time.AfterFunc(time.Duration(delay(perm[v]))*time.Millisecond, noop)
					}
					b.StartTimer()
				}
				victims[j].Stop()
			}
			b.StopTimer()
			b.ReportMetric(perTimer, "B/timer")
		})
	}
}

// BenchmarkWheelHerdCascade measures what a herd costs the timers due
// around it: 500,000 timers due at one instant, two levels up, among one
// timer due every millisecond for four seconds around it, as another
// tenant's steady timers would be. The wheel advances a millisecond at a
// time up to the herd's tick, cascading the herd twice on the way; the
// longest call is how long a timer due then waits behind the cascades
// (the median over the herds, the machine's noise aside). One op is one
// herd.
func BenchmarkWheelHerdCascade(b *testing.B) {
	const herd = 500_000
	dst := make([]Timer, 0, 64)
	longests := make([]time.Duration, 0, b.N)
	for range b.N {
		var longest time.Duration
		b.StopTimer()
		w := newWheel(b, time.Millisecond, start)
		due := start + 200_000 + 77 // level 2 now
		for i := range herd {
			mustAdd(b, w, due, uint64(i))
		}
		for t := due - 2000; t < due+2000; t++ {
			mustAdd(b, w, t, 0)
		}
		dst = w.Advance(due-3000, dst[:0])
		b.StartTimer()
		for now := due - 2999; now < due; now++ {
			t0 := time.Now()
			dst = w.AdvanceLimit(now, dst[:0], 64)
			longest = max(longest, time.Since(t0))
		}
		longests = append(longests, longest)
	}
	slices.Sort(longests)
	b.ReportMetric(float64(longests[len(longests)/2].Microseconds()), "longest-call-µs")
}
