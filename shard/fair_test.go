package shard

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/store"
)

func TestFairQueueOrder(t *testing.T) {
	for _, tc := range []struct {
		name string
		push []string // namespace of each timer, in push order
		want []string // namespace of each pop
	}{
		{"empty", nil, nil},
		{"one namespace", []string{"a", "a", "a"}, []string{"a", "a", "a"}},
		{"a herd and one other", []string{"a", "a", "a", "a", "b"}, []string{"a", "b", "a", "a", "a"}},
		{"three namespaces take turns", []string{"a", "a", "a", "b", "b", "c"}, []string{"a", "b", "c", "a", "b", "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var f fairQueue
			tb := newTable(new(sync.Mutex))
			order := map[string][]uint32{} // slots pushed per namespace
			for i, ns := range tc.push {
				tm := tb.add(&store.Record{Namespace: ns, ID: fmt.Sprint(i), Topic: "topic"})
				f.push(waitEntry{slot: tm.slot}, ns)
				order[ns] = append(order[ns], tm.slot)
			}
			var got []string
			for e, ok := f.pop(); ok; e, ok = f.pop() {
				ns := tb.namespace(tb.at(e.slot))
				got = append(got, ns)
				if e.slot != order[ns][0] {
					t.Fatalf("namespace %s popped slot %d before %d", ns, e.slot, order[ns][0])
				}
				order[ns] = order[ns][1:]
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("pops = %v, want %v", got, tc.want)
			}
			if f.len() != 0 || len(f.queues) != 0 || len(f.ring) != 0 {
				t.Fatalf("drained queue holds %d entries, %d queues, a ring of %d", f.len(), len(f.queues), len(f.ring))
			}
		})
	}
}

// scheduleHerd schedules on s a herd of n timers of namespace a due in a
// second, then one timer of namespace b, "b", due in bDue.
func scheduleHerd(t *testing.T, s *Shard, n int, bDue time.Duration) {
	t.Helper()
	specs := make([]Spec, 0, n+1)
	for i := range n {
		sp := spec(fmt.Sprintf("a%05d", i), time.Second)
		sp.Namespace = "a"
		specs = append(specs, sp)
	}
	mustSchedule(t, s, specs...)
	b := spec("b", bDue)
	b.Namespace = "b"
	mustSchedule(t, s, b)
}

// TestHerdDoesNotStarveOtherNamespace: namespace a has a herd of timers
// due at one instant and b one timer due at the same instant, scheduled
// after the herd. b's timer goes out among the first deliveries, not
// after the whole herd; every timer goes out once, none early.
func TestHerdDoesNotStarveOtherNamespace(t *testing.T) {
	e := newEmbeddedEnv(t)
	k := newSink(true)
	s := e.open(t, 0, "a", k)
	const herd = 3*maxStepFires + 17
	scheduleHerd(t, s, herd, time.Second)

	e.advance(s, time.Second)
	got := k.take(t, herd+1)
	at := slices.IndexFunc(got, func(d Delivery) bool { return d.Namespace == "b" })
	t.Logf("b's timer was delivery %d of %d", at+1, len(got))
	// The herd's queue was made first, so it has the first turn and b
	// the second.
	if at != 1 {
		t.Fatalf("b's timer was delivery %d of %d, want 2", at+1, len(got))
	}
	seen := map[string]bool{}
	for _, d := range got {
		if d.Fired.Before(d.Due) {
			t.Fatalf("%s/%s fired at %v, before its due time %v", d.Namespace, d.TimerID, d.Fired, d.Due)
		}
		key := d.Namespace + "/" + d.TimerID
		if seen[key] {
			t.Fatalf("%s delivered twice", key)
		}
		seen[key] = true
	}
	k.none(t)
}

// herdProbe is a sink that, at the first delivery, notes how many timers
// the shard's wheel still holds and moves the clock on by a millisecond,
// so that a timer comes due while the herd drains.
type herdProbe struct {
	*sink
	clock *fakeClock
	s     *Shard
	// left is the wheel's Len at the first delivery, or -1; it is read
	// and written under s.mu, which the shard holds while it dispatches.
	left int
}

func (p *herdProbe) Dispatch(d Delivery) (time.Duration, bool) {
	if p.left < 0 {
		p.left = p.s.wheel.Len()
		p.clock.Advance(time.Millisecond)
	}
	return p.sink.Dispatch(d)
}

// TestHerdStepIsBounded: namespace a has a herd of timers due at one
// instant, twice maxBacklog, and b one timer due a millisecond later,
// which comes due while the herd drains. The step that finds the herd due
// takes at most maxBacklog of it from the wheel, leaving the rest due, so
// that it does not hold the shard for the whole herd; b's timer goes out
// at the step's next look at the clock, refillEvery deliveries on, not
// behind the herd; every timer goes out once, none early.
func TestHerdStepIsBounded(t *testing.T) {
	e := newEmbeddedEnv(t)
	p := &herdProbe{sink: newSink(true), clock: e.clock, left: -1}
	s := e.open(t, 0, "a", p)
	p.s = s
	const herd = 2 * maxBacklog
	scheduleHerd(t, s, herd, time.Second+time.Millisecond)

	e.advance(s, time.Second)
	got := p.take(t, herd+1)
	s.mu.Lock()
	left := p.left
	s.mu.Unlock()
	t.Logf("the wheel held %d of %d timers at the first delivery", left, herd+1)
	if left < herd+1-maxBacklog {
		t.Fatalf("the first step took %d timers from the wheel, more than maxBacklog %d", herd+1-left, maxBacklog)
	}
	at := slices.IndexFunc(got, func(d Delivery) bool { return d.Namespace == "b" })
	t.Logf("b's timer was delivery %d of %d", at+1, len(got))
	if at < 0 || at >= 2*refillEvery {
		t.Fatalf("b's timer was delivery %d of %d, want it within the first %d", at+1, len(got), 2*refillEvery)
	}
	seen := map[string]bool{}
	for _, d := range got {
		if d.Fired.Before(d.Due) {
			t.Fatalf("%s/%s fired at %v, before its due time %v", d.Namespace, d.TimerID, d.Fired, d.Due)
		}
		key := d.Namespace + "/" + d.TimerID
		if seen[key] {
			t.Fatalf("%s delivered twice", key)
		}
		seen[key] = true
	}
	p.none(t)
}

// census records what shards report to it.
type census struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *census) Count(ns string, delta int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[ns] += delta
	if c.n[ns] == 0 {
		delete(c.n, ns)
	}
}

func (c *census) get(ns string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[ns]
}

// TestCensus: a shard reports the timers of each namespace as they come
// and go, reports what it loaded once loaded, and takes it all back when
// it stops.
func TestCensus(t *testing.T) {
	e := newEmbeddedEnv(t)
	k := newSink(true)
	var c census
	cfg := e.config(0, "a", k)
	cfg.Census = &c
	s := e.openConfig(t, cfg)
	check := func(when string, want map[string]int) {
		t.Helper()
		for ns, n := range want {
			if got, own := c.get(ns), s.Timers(ns); got != n || own != n {
				t.Fatalf("%s: census counts %d timers of %s, the shard %d; want %d", when, got, ns, own, n)
			}
		}
	}
	a1, a2 := spec("1", time.Second), spec("2", time.Hour)
	a1.Namespace, a2.Namespace = "a", "a"
	mustSchedule(t, s, a1, a2, spec("x", time.Hour))
	check("scheduled", map[string]int{"a": 2, "ns": 1})
	mustSchedule(t, s, a1) // a retry adds nothing
	check("retried", map[string]int{"a": 2, "ns": 1})
	if errs := s.Cancel(ctx, "ns", []string{"x"}); errs[0] != nil {
		t.Fatal(errs[0])
	}
	check("cancelled", map[string]int{"a": 2, "ns": 0})
	e.advance(s, time.Second)
	mustAck(t, s, k.take(t, 1)...)
	check("acked", map[string]int{"a": 1})
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.get("a"); got != 0 {
		t.Fatalf("closed: census counts %d timers of a, want 0", got)
	}

	// A new owner reports what it loads.
	var c2 census
	cfg.Census = &c2
	s2 := e.openConfig(t, cfg)
	if got := c2.get("a"); got != 1 || s2.Timers("a") != 1 {
		t.Fatalf("loaded: census counts %d timers of a, the shard %d; want 1", got, s2.Timers("a"))
	}
}

// TestFairQueueStreamKeepsSmallArray: a herd streams through a
// namespace's queue, pushed a few at a time as the shard takes it from
// the wheel and popped as fast: the queue's array stays about twice what
// it holds, rather than growing as long as the herd with every timer it
// ever held (each growth copying all of it, with the shard's mutex held).
func TestFairQueueStreamKeepsSmallArray(t *testing.T) {
	var f fairQueue
	const (
		held = 1000    // entries queued at any time
		herd = 200_000 // entries streamed through
	)
	for i := range held {
		f.push(waitEntry{slot: uint32(i)}, "a")
	}
	next := 0 // key of the next pop
	for i := held; i < herd; i++ {
		f.push(waitEntry{slot: uint32(i)}, "a")
		got, _ := f.pop()
		if got.slot != uint32(next) {
			t.Fatalf("popped %d, want %d", got.slot, next)
		}
		next++
		if c := cap(f.queues["a"].items); c > 4*held {
			t.Fatalf("after %d pushes the queue holding %d has an array of %d", i+1, f.len(), c)
		}
	}
	for e, ok := f.pop(); ok; e, ok = f.pop() {
		if e.slot != uint32(next) {
			t.Fatalf("popped %d, want %d", e.slot, next)
		}
		next++
	}
	if next != herd {
		t.Fatalf("popped %d of %d", next, herd)
	}
}
