package server

import (
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// receiveAll receives and acks n deliveries of st, failing if any is
// early, and returns them in the order they came.
func receiveAll(t *testing.T, st *stream, n int) []*pb.Delivery {
	t.Helper()
	var got []*pb.Delivery
	for range n {
		d := st.next()
		if d.GetFiredTime().AsTime().Before(d.GetDueTime().AsTime()) {
			t.Fatalf("%s fired %v early", d.Id, d.GetDueTime().AsTime().Sub(d.GetFiredTime().AsTime()))
		}
		st.ack(d)
		got = append(got, d)
	}
	return got
}

// TestDeliverRate: a namespace's deliveries never exceed its delivery
// rate and burst, in any window of time, and all of them arrive, in due
// order per shard; another namespace's timers due at the same instant
// are not held behind them.
func TestDeliverRate(t *testing.T) {
	const (
		rate  = 200
		burst = 10
		n     = 300
	)
	path := limitsFile(t, t.TempDir(), `{"namespaces": {"slow": {"deliver_rate": 200, "deliver_burst": 10}}}`)
	e := start(t, "", func(c *Config) { c.NamespaceLimitsFile = path })
	slow := e.subscribe(&pb.Subscription{Namespace: "slow", Topic: "t", MaxInFlight: n})
	fast := e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: n})
	e.waitSubscribers("t", 1)
	e.schedule(batch("slow", "s", n, 300*time.Millisecond)...)
	e.schedule(batch("", "f", n, 300*time.Millisecond)...)

	fastGot := receiveAll(t, fast, n)
	slowGot := receiveAll(t, slow, n)
	fired := make([]time.Time, n)
	for i, d := range slowGot {
		fired[i] = d.GetFiredTime().AsTime()
	}
	slices.SortFunc(fired, time.Time.Compare)
	// Any window from one delivery's firing to a later one's holds at
	// most the burst plus what the rate refilled meanwhile.
	for i := range fired {
		for j := i + 1; j < n; j++ {
			allowed := burst + rate*fired[j].Sub(fired[i]).Seconds() + 1
			if got := float64(j - i + 1); got > allowed {
				t.Fatalf("%v deliveries fired within %v of each other; the rate allows %.1f", got, fired[j].Sub(fired[i]), allowed)
			}
		}
	}
	lastFast := fastGot[n-1].GetFiredTime().AsTime()
	if !lastFast.Before(fired[n-1]) {
		t.Errorf("the last of the other namespace fired at %v, not before the paced namespace's last at %v", lastFast, fired[n-1])
	}
	t.Logf("paced: %d deliveries over %v (%.0f/s); the other namespace's %d over %v",
		n, fired[n-1].Sub(fired[0]), float64(n-1)/fired[n-1].Sub(fired[0]).Seconds(), n, lastFast.Sub(fastGot[0].GetDueTime().AsTime()))
	if body := e.metricsText(); !strings.Contains(body, `timerd_deliveries_paced_total{namespace="slow"}`) ||
		!strings.Contains(body, `timerd_namespace_limit{kind="deliver_rate",namespace="slow"} 200`) {
		t.Errorf("/metrics lacks the paced namespace:\n%s", grepLines(body, "slow"))
	}
}

// TestDeliverRateLifted: timers held back by a slow delivery rate go out
// at once when the limits file lifts the rate, none lost and none twice,
// and the file's rate is what /metrics shows; a rate given to a namespace
// that delivered freely starts from a full burst.
func TestDeliverRateLifted(t *testing.T) {
	const n = 12
	dir := t.TempDir()
	path := limitsFile(t, dir, `{"namespaces": {"slow": {"deliver_rate": 0.2, "deliver_burst": 2}}}`)
	e := start(t, "", func(c *Config) { c.NamespaceLimitsFile = path })
	slow := e.subscribe(&pb.Subscription{Namespace: "slow", Topic: "t", MaxInFlight: n})
	e.schedule(batch("slow", "s", n, 200*time.Millisecond)...)
	got := receiveAll(t, slow, 2) // the burst
	// At 0.2/s the next would come 5 s after the burst.
	slow.none(time.Second)

	limitsFile(t, dir, `{"namespaces": {"slow": {}}}`)
	lifted := time.Now()
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	got = append(got, receiveAll(t, slow, n-2)...)
	seen := map[string]bool{}
	for _, d := range got {
		if seen[d.Id] {
			t.Fatalf("%s delivered twice", d.Id)
		}
		seen[d.Id] = true
	}
	// Paced, the rest would take 50 s.
	if last := got[n-1].GetFiredTime().AsTime(); last.Sub(lifted) > 5*time.Second {
		t.Fatalf("the last timer fired %v after the rate was lifted", last.Sub(lifted))
	}
	slow.none(300 * time.Millisecond)

	// A rate given now starts from a full burst of 3, and holds the rest.
	limitsFile(t, dir, `{"namespaces": {"slow": {"deliver_rate": 0.1, "deliver_burst": 3}}}`)
	if err := e.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	e.schedule(batch("slow", "again", 5, 100*time.Millisecond)...)
	receiveAll(t, slow, 3)
	slow.none(time.Second)
}

// newTestPacer returns the pacer of limits on a node that serves every
// shard, telling ready of each shard it wakes.
func newTestPacer(t testing.TB, limits Limits, ready func(shard uint32, key topicKey)) *pacer {
	t.Helper()
	m := newMetrics(prometheus.NewRegistry(), 10, func() []shardStats { return nil }, func() store.QueueStats { return store.QueueStats{} })
	l, err := newLimiter(limits, "", func() (uint32, uint32) { return 64, 64 }, m, nil)
	if err != nil {
		t.Fatal(err)
	}
	p := newPacer(l, ready)
	t.Cleanup(p.close)
	return p
}

// TestPacerWakesInTurn: the shards refused for want of tokens are woken
// in the order they were refused, each once however often it was
// refused, and one refused again after it was woken goes to the back.
// The buckets fill by a clock the test moves, so that a bucket it
// emptied stays empty however slowly the test runs.
func TestPacerWakesInTurn(t *testing.T) {
	woken := make(chan uint32, 16)
	p := newTestPacer(t, Limits{DeliverRate: 1000, DeliverBurst: 4, MaxSubscribeStreams: 1}, func(shard uint32, key topicKey) {
		if key != (topicKey{"a", "t"}) {
			t.Errorf("woke %v", key)
		}
		woken <- shard
	})
	start := time.Now()
	var elapsed atomic.Int64 // ns
	p.now = func() time.Time { return start.Add(time.Duration(elapsed.Load())) }
	refill := func() { elapsed.Add(int64(time.Second)) } // a full burst back
	take := func(s uint32) bool {
		_, ok := p.take(&shard.Delivery{Namespace: "a", Topic: "t", Shard: s})
		return ok
	}
	for i := range 4 {
		if !take(0) {
			t.Fatalf("delivery %d of a full burst of 4 refused", i)
		}
	}
	for _, s := range []uint32{1, 2, 1, 3, 2} {
		if take(s) {
			t.Fatalf("shard %d took a token from an empty bucket", s)
		}
	}
	next := func() uint32 {
		select {
		case s := <-woken:
			return s
		case <-time.After(5 * time.Second):
			t.Fatal("no shard woken within 5s")
			return 0
		}
	}
	select {
	case s := <-woken:
		t.Fatalf("woke shard %d before a token was back", s)
	case <-time.After(50 * time.Millisecond):
	}
	refill()
	for _, want := range []uint32{1, 2} {
		if got := next(); got != want {
			t.Fatalf("woke shard %d, want %d", got, want)
		}
	}
	// Shard 1 took what it was woken for and was refused again: it
	// comes after 3.
	p.bucket("a").mu.Lock()
	p.bucket("a").tokens = 0
	p.bucket("a").mu.Unlock()
	if take(1) {
		t.Fatal("shard 1 took a token from an empty bucket")
	}
	refill()
	for _, want := range []uint32{3, 1} {
		if got := next(); got != want {
			t.Fatalf("woke shard %d, want %d", got, want)
		}
	}
	select {
	case s := <-woken:
		t.Fatalf("woke shard %d, which waits for nothing", s)
	case <-time.After(50 * time.Millisecond):
	}
}

// BenchmarkPacerTake measures what the pacer adds to a delivery: for a
// namespace without a delivery rate (every namespace, once a limits
// file is given), and for one whose rate always has a token.
func BenchmarkPacerTake(b *testing.B) {
	p := newTestPacer(b, Limits{DeliverRate: 1, MaxSubscribeStreams: 1}, func(uint32, topicKey) {})
	for _, tc := range []struct {
		name string
		ns   string
		rate float64
	}{{"rate=none", "free", 0}, {"rate=1e12", "paced", 1e12}} {
		b.Run(tc.name, func(b *testing.B) {
			p.l.cfg.DeliverRate = tc.rate
			d := &shard.Delivery{Namespace: tc.ns, Topic: "t"}
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, ok := p.take(d); !ok {
						b.Fatal("refused")
					}
				}
			})
		})
	}
}
