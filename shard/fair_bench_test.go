package shard

import (
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

// lateSink is a Dispatcher that takes every delivery at once, as
// subscribers with credit to spare would, and records the lateness of
// namespace "b"'s.
type lateSink struct {
	mu    sync.Mutex
	late  []time.Duration // of b's deliveries, guarded by mu
	herd  int             // a's deliveries, guarded by mu
	lastA time.Time       // when a's last delivery went out, guarded by mu
}

func (k *lateSink) Dispatch(d Delivery) (time.Duration, bool) {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if d.Namespace == "b" {
		k.late = append(k.late, now.Sub(d.Due))

	} else {
		k.herd++
		k.lastA = now
	}
	return 0, true
}

func (k *lateSink) counts() (b, a int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.late), k.herd
}

// BenchmarkHerdFairness measures the lateness of namespace b's steady
// 1,000 timers/s on one shard, alone and while namespace a has 500,000
// timers due at one instant on the same shard, in the same run: the
// shard hands due timers out round-robin across namespaces, so b's p99
// should stay near its figure alone rather than wait behind the herd.
// Run it with -benchtime 1x; the timers go straight to the store and
// the shard loads them, with the system clock.
func BenchmarkHerdFairness(b *testing.B) {
	const (
		herd   = 500_000
		rate   = 1000            // b's timers per second
		window = 3 * time.Second // b's timers are due over it
	)
	for range b.N {
		alone := herdRun(b, 0, rate, window)
		with := herdRun(b, herd, rate, window)
		b.ReportMetric(ms(pct(alone.late, 50)), "b-p50-alone-ms")
		b.ReportMetric(ms(pct(alone.late, 99)), "b-p99-alone-ms")
		b.ReportMetric(ms(pct(with.late, 50)), "b-p50-herd-ms")
		b.ReportMetric(ms(pct(with.late, 99)), "b-p99-herd-ms")
		b.ReportMetric(ms(with.drain), "herd-drain-ms")
	}
}

type herdResult struct {
	late  []time.Duration // b's, sorted
	drain time.Duration   // from the herd's due time to its last delivery
}

// herdRun loads a shard with herd timers of namespace a due at one
// instant and rate timers/s of namespace b due over window around it,
// and returns b's lateness once everything went out.
func herdRun(b *testing.B, herd, rate int, window time.Duration) herdResult {
	b.Helper()
	e := newEmbeddedEnv(b)
	// Far enough ahead for the fill and the load to finish first.
	at := time.Now().Add(2*time.Second + time.Duration(herd)*30*time.Microsecond)
	due := at.UnixMilli()
	bFirst := at.Add(-window / 3).UnixMilli()
	nB := int(window.Seconds() * float64(rate))
	fillRecords(b, e, 0, herd+nB, func(i int, epoch uint64) store.Record {
		r := store.Record{Namespace: "a", ID: "a" + strconv.Itoa(i), Topic: "t", Payload: benchPayload,
			Due: due, Next: due, Delay: -1, Created: due, State: store.Pending, OccEpoch: epoch, OccSeq: uint64(i)}
		if i >= herd {
			j := i - herd
			r.Namespace, r.ID = "b", "b"+strconv.Itoa(j)
			r.Due = bFirst + int64(j)*1000/int64(rate)
			r.Next = r.Due
		}
		return r
	})
	k := &lateSink{}
	cfg := e.config(0, "bench", k)
	cfg.Clock = SystemClock{}
	cfg.AckTimeout = time.Hour // no redelivery within the run
	s := e.openConfig(b, cfg)
	if left := time.Until(at.Add(-window / 3)); left < 0 {
		b.Fatalf("the load took %v too long: b's first timers were due before it ended", -left)
	}
	deadline := time.Now().Add(time.Minute + time.Until(at) + window)
	for {
		nb, na := k.counts()
		if nb == nB && na == herd {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d b timers and %d of %d a timers went out", nb, nB, na, herd)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Close(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	late := slices.Clone(k.late)
	slices.Sort(late)
	if late[0] < 0 {
		b.Fatalf("a timer of b went out %v early", -late[0])
	}
	r := herdResult{late: late}
	if herd > 0 {
		r.drain = k.lastA.Sub(time.UnixMilli(due))
	}
	b.Logf("herd %d: b p50 %v p99 %v max %v; herd drained in %v", herd, pct(late, 50), pct(late, 99), late[len(late)-1], r.drain)
	return r
}

func pct(sorted []time.Duration, p int) time.Duration {
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
