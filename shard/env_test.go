package shard

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/store"
)

// fakeClock is a Clock that moves only when the test says so.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	alarms []*fakeAlarm
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewAlarm(d time.Duration) Alarm {
	a := &fakeAlarm{c: c, ch: make(chan time.Time, 1)}
	c.mu.Lock()
	c.alarms = append(c.alarms, a)
	c.mu.Unlock()
	a.Reset(d)
	return a
}

// Advance moves the clock and sets off the alarms that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	for _, a := range c.alarms {
		a.fireLocked()
	}
}

// idle reports whether every alarm that went off has been set again or
// stopped by its goroutine: the goroutines the clock woke are done with
// what it woke them for (the shard's loop sets its alarm after each step,
// the lease keeper after each renewal).
func (c *fakeClock) idle() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, a := range c.alarms {
		if a.fired {
			return false
		}
	}
	return true
}

type fakeAlarm struct {
	c     *fakeClock
	ch    chan time.Time
	at    time.Time // guarded by c.mu
	armed bool      // guarded by c.mu
	// fired: the alarm went off and its goroutine has not yet set it
	// again or stopped it, so it may still be acting on it. Guarded by
	// c.mu.
	fired bool
}

func (a *fakeAlarm) C() <-chan time.Time { return a.ch }

func (a *fakeAlarm) Reset(d time.Duration) {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	select {
	case <-a.ch:
	default:
	}
	a.at, a.armed, a.fired = a.c.now.Add(d), true, false
	a.fireLocked()
}

func (a *fakeAlarm) Stop() {
	a.c.mu.Lock()
	defer a.c.mu.Unlock()
	a.armed, a.fired = false, false
}

func (a *fakeAlarm) fireLocked() {
	if a.armed && !a.at.After(a.c.now) {
		a.armed, a.fired = false, true
		select {
		case a.ch <- a.c.now:
		default:
		}
	}
}

// sink is a Dispatcher standing in for subscriber streams: it takes
// deliveries while open and has room.
type sink struct {
	mu         sync.Mutex
	open       bool
	ackTimeout time.Duration
	ch         chan Delivery
}

func newSink(open bool) *sink { return &sink{open: open, ch: make(chan Delivery, 1<<16)} }

func (k *sink) Dispatch(d Delivery) (time.Duration, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.open {
		return 0, false
	}
	select {
	case k.ch <- d:
		return k.ackTimeout, true
	default:
		return 0, false
	}
}

func (k *sink) setOpen(open bool) {
	k.mu.Lock()
	k.open = open
	k.mu.Unlock()
}

// take returns the next n deliveries, failing the test if they do not
// arrive within a generous real-time bound (a hang guard, not a timing
// assertion).
func (k *sink) take(t testing.TB, n int) []Delivery {
	t.Helper()
	out := make([]Delivery, 0, n)
	deadline := time.After(10 * time.Second)
	for len(out) < n {
		select {
		case d := <-k.ch:
			out = append(out, d)
		case <-deadline:
			t.Fatalf("got %d deliveries, want %d", len(out), n)
		}
	}
	return out
}

// ready returns the deliveries waiting now, without waiting for more.
func (k *sink) ready() []Delivery {
	var out []Delivery
	for {
		select {
		case d := <-k.ch:
			out = append(out, d)
		default:
			return out
		}
	}
}

// none fails the test if a delivery is waiting.
func (k *sink) none(t testing.TB) {
	t.Helper()
	select {
	case d := <-k.ch:
		t.Fatalf("unexpected delivery of %q attempt %d (due %v, fired %v)", d.TimerID, d.Attempt, d.Due, d.Fired)
	default:
	}
}

// env is one store with its committer and clock, shared by the shards a
// test opens.
type env struct {
	name  string
	st    store.Store
	com   *store.Committer
	clock *fakeClock
	redis *redistest.Server // the standalone Redis; nil for the other stores
	// client reaches the Redis store's server or cluster; nil for the
	// embedded store.
	client redis.UniversalClient
	prefix string // the Redis store's key prefix
	stats  commitStats
}

// commitStats collects what the group commit did.
type commitStats struct {
	mu        sync.Mutex
	cycles    int
	ops       int
	latencies []time.Duration
}

func (c *commitStats) record(s store.CommitStats) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cycles++
	c.ops += s.Ops
	c.latencies = append(c.latencies, s.Latency)
}

func (c *commitStats) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cycles, c.ops, c.latencies = 0, 0, nil
}

// report adds the mean writes per commit cycle and the median and 99th
// percentile commit latency to b's output.
func (c *commitStats) report(b *testing.B) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cycles == 0 {
		return
	}
	b.ReportMetric(float64(c.ops)/float64(c.cycles), "writes/commit")
	slices.Sort(c.latencies)
	b.ReportMetric(float64(c.latencies[len(c.latencies)/2].Microseconds())/1000, "p50-commit-ms")
	b.ReportMetric(float64(c.latencies[len(c.latencies)*99/100].Microseconds())/1000, "p99-commit-ms")
}

// stores runs fn once per store kind, each on a fresh store: embedded,
// standalone Redis, and a Redis Cluster of three masters.
func stores(t *testing.T, fn func(t *testing.T, e *env)) {
	t.Run("embedded", func(t *testing.T) { fn(t, newEmbeddedEnv(t)) })
	t.Run("redis", func(t *testing.T) { fn(t, newRedisEnv(t)) })
	t.Run("rediscluster", func(t *testing.T) { fn(t, newRedisClusterEnv(t)) })
}

func newEmbeddedEnv(t testing.TB) *env {
	clock := newFakeClock()
	// The store's leases follow the test's clock, as the shards' do.
	cfg := store.DefaultEmbeddedConfig(t.TempDir())
	cfg.Now = clock.Now
	st, err := store.OpenEmbedded(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return finishEnv(t, &env{name: "embedded", st: st, clock: clock})
}

func newRedisEnv(t testing.TB, opts ...redistest.Option) *env {
	srv := redistest.Start(t, opts...)
	client := srv.Client(t)
	cfg := store.DefaultRedisConfig()
	st, err := store.NewRedis(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return finishEnv(t, &env{name: "redis", st: st, clock: newFakeClock(), redis: srv, client: client, prefix: cfg.Prefix})
}

func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m)) }

// clusterEnvs numbers the stores on the package's shared Redis Cluster,
// each under a key prefix of its own.
var clusterEnvs atomic.Int64

// newRedisClusterEnv is a store on a Redis Cluster of three masters,
// shared by the package's tests, so that a test's shards, spread over the
// masters, are committed by per-master group commit cycles.
func newRedisClusterEnv(t testing.TB) *env {
	client := redistest.SharedRedisCluster(t, 3, 0).ClusterClient(t)
	cfg := store.DefaultRedisConfig()
	cfg.Prefix = fmt.Sprint("c", clusterEnvs.Add(1))
	st, err := store.NewRedis(client, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return finishEnv(t, &env{name: "rediscluster", st: st, clock: newFakeClock(), client: client, prefix: cfg.Prefix})
}

func finishEnv(t testing.TB, e *env) *env {
	cfg := store.DefaultCommitterConfig()
	cfg.OnCommit = e.stats.record
	com, err := store.NewCommitter(e.st, cfg)
	if err != nil {
		t.Fatal(err)
	}
	e.com = com
	t.Cleanup(func() {
		com.Close()
		e.st.Close()
	})
	return e
}

func (e *env) config(id uint32, owner string, d Dispatcher) Config {
	cfg := LocalConfig(id, owner)
	cfg.Store, cfg.Committer, cfg.Dispatcher, cfg.Clock = e.st, e.com, d, e.clock
	// Redis expires leases in real time while tests move the shards'
	// clock by hours; a lease longer than any test keeps the two apart.
	// Tests of lapsing leases use lapseLease.
	cfg.LeaseTTL = 24 * time.Hour
	return cfg
}

// open opens shard id for owner and closes it at the end of the test.
func (e *env) open(t testing.TB, id uint32, owner string, d Dispatcher) *Shard {
	t.Helper()
	return e.openConfig(t, e.config(id, owner, d))
}

func (e *env) openConfig(t testing.TB, cfg Config) *Shard {
	t.Helper()
	s, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open(shard %d, %s): %v", cfg.ID, cfg.Owner, err)
	}
	t.Cleanup(func() { s.Close(context.Background()) })
	return s
}

// advance moves the clock and waits until the shard has acted on it.
func (e *env) advance(s *Shard, d time.Duration) {
	e.clock.Advance(d)
	s.settle()
}

// spec is a valid spec due in d.
func spec(id string, d time.Duration) Spec {
	return Spec{Namespace: "ns", ID: id, Topic: "topic", Delay: d, Payload: []byte("payload " + id)}
}

func mustSchedule(t testing.TB, s *Shard, specs ...Spec) {
	t.Helper()
	for i, r := range s.Schedule(context.Background(), specs) {
		if r.Err != nil {
			t.Fatalf("Schedule(%q): %v", specs[i].ID, r.Err)
		}
	}
}

func mustAck(t testing.TB, s *Shard, ds ...Delivery) {
	t.Helper()
	ids := make([]DeliveryID, len(ds))
	for i, d := range ds {
		id, err := ParseDeliveryID(d.ID)
		if err != nil {
			t.Fatal(err)
		}
		ids[i] = id
	}
	c, err := s.Ack(ids)
	if err != nil {
		t.Fatalf("ack: %v", err)
	}
	if c != nil {
		if err := c.Wait(context.Background()); err != nil {
			t.Fatalf("ack: %v", err)
		}
	}
}

func mustState(t testing.TB, s *Shard, id string, want State, attempts uint32) Timer {
	t.Helper()
	tm, err := s.Get("ns", id)
	if err != nil {
		t.Fatalf("Get(%q): %v", id, err)
	}
	if tm.State != want || tm.Attempts != attempts {
		t.Fatalf("Get(%q) = %v with %d attempts, want %v with %d", id, tm.State, tm.Attempts, want, attempts)
	}
	return tm
}

func mustGone(t testing.TB, s *Shard, id string) {
	t.Helper()
	if _, err := s.Get("ns", id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get(%q) = %v, want ErrNotFound", id, err)
	}
}

// ids returns the sorted timer ids of ds.
func ids(ds []Delivery) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.TimerID
	}
	sort.Strings(out)
	return out
}

func idRange(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s%04d", prefix, i))
	}
	sort.Strings(out)
	return out
}
