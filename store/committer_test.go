package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
)

// committerStores runs fn on a fresh store of each kind.
func committerStores(t *testing.T, fn func(t *testing.T, s Store)) {
	t.Run("embedded", func(t *testing.T) {
		fn(t, openTestEmbedded(t, DefaultEmbeddedConfig(t.TempDir())))
	})
	t.Run("redis", func(t *testing.T) {
		fn(t, newTestRedis(t, redistest.Start(t).Client(t), "td", 1000))
	})
}

func newTestCommitter(t testing.TB, s Store, cfg CommitterConfig) *Committer {
	t.Helper()
	c, err := NewCommitter(s, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestCommitterCoalesces: writes submitted concurrently share commit
// cycles, and every one of them is durable once its Commit says so.
func TestCommitterCoalesces(t *testing.T) {
	committerStores(t, func(t *testing.T, s Store) {
		const shards, writers, per = 8, 64, 20
		var cycles, ops atomic.Int64
		cfg := DefaultCommitterConfig()
		cfg.OnCommit = func(st CommitStats) {
			cycles.Add(1)
			ops.Add(int64(st.Ops))
		}
		c := newTestCommitter(t, s, cfg)
		epochs := make([]Grant, shards)
		for sh := range epochs {
			epochs[sh] = mustAcquire(t, s, uint32(sh), "a", longTTL)
		}
		var wg sync.WaitGroup
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range per {
					sh := uint32((w + i) % shards)
					cm := c.Submit(sh, epochs[sh], []Op{put(rec("ns", fmt.Sprintf("w%d-%d", w, i)))})
					if err := cm.Wait(context.Background()); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		total := 0
		for sh := range epochs {
			total += len(loadAll(t, s, uint32(sh), epochs[sh]))
		}
		if total != writers*per || ops.Load() != writers*per {
			t.Fatalf("stored %d records, committed %d ops, want %d", total, ops.Load(), writers*per)
		}
		if cycles.Load() >= writers*per {
			t.Fatalf("%d cycles for %d writes: nothing was coalesced", cycles.Load(), writers*per)
		}
		t.Logf("%d writes in %d cycles", writers*per, cycles.Load())
	})
}

// TestCommitterOrder: writes to one shard submitted without waiting reach
// the store in submission order, whatever cycles carry them.
func TestCommitterOrder(t *testing.T) {
	committerStores(t, func(t *testing.T, s Store) {
		cfg := DefaultCommitterConfig()
		cfg.MaxBatchOps = 3 // cut batches inside cycles, too
		c := newTestCommitter(t, s, cfg)
		e := mustAcquire(t, s, 0, "a", longTTL)
		var last *Commit
		for i := range 100 {
			r := rec("ns", fmt.Sprintf("k%d", i%7))
			r.Topic = fmt.Sprintf("v%d", i)
			ops := []Op{put(r)}
			if i%5 == 4 {
				ops = append(ops, Op{Key: Key("ns", fmt.Sprintf("k%d", i%7))})
			}
			last = c.Submit(0, e, ops)
		}
		if err := last.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{}
		for i := range 100 {
			k := Key("ns", fmt.Sprintf("k%d", i%7))
			want[k] = fmt.Sprintf("v%d", i)
			if i%5 == 4 {
				delete(want, k)
			}
		}
		got := loadAll(t, s, 0, e)
		if len(got) != len(want) {
			t.Fatalf("stored %d keys, want %d", len(got), len(want))
		}
		for k, v := range want {
			if got[k].Topic != v {
				t.Errorf("%q = %q, want %q (the last write)", k, got[k].Topic, v)
			}
		}
	})
}

// TestCommitterFencedBatch: a stale epoch fails only its own shard's
// Commit; the other shards' writes of the cycle are durable.
func TestCommitterFencedBatch(t *testing.T) {
	committerStores(t, func(t *testing.T, s Store) {
		c := newTestCommitter(t, s, DefaultCommitterConfig())
		stale := mustAcquire(t, s, 1, "a", longTTL)
		mustRelease(t, s, 1, stale)
		current := mustAcquire(t, s, 1, "b", longTTL)
		good := mustAcquire(t, s, 2, "a", longTTL)
		// An empty submission under the current epoch must not lend its
		// batch to a stale one.
		empty := c.Submit(1, current, nil)
		bad := c.Submit(1, stale, []Op{put(rec("ns", "evil"))})
		ok := c.Submit(2, good, []Op{put(rec("ns", "fine"))})
		if err := bad.Wait(context.Background()); !errors.Is(err, ErrFenced) {
			t.Fatalf("stale batch: %v, want ErrFenced", err)
		}
		if err := ok.Wait(context.Background()); err != nil {
			t.Fatalf("good batch: %v", err)
		}
		if err := empty.Wait(context.Background()); err != nil {
			t.Fatalf("empty batch: %v", err)
		}
		if q := c.Queue(); q.Fenced != 1 {
			t.Fatalf("Queue().Fenced = %d, want 1 (the stale batch alone)", q.Fenced)
		}
		if got := loadAll(t, s, 1, current); len(got) != 0 {
			t.Fatalf("fenced write landed: %v", got)
		}
		if got := loadAll(t, s, 2, good); len(got) != 1 {
			t.Fatalf("good write missing: %v", got)
		}
	})
}

func TestCommitterClose(t *testing.T) {
	committerStores(t, func(t *testing.T, s Store) {
		c, err := NewCommitter(s, DefaultCommitterConfig())
		if err != nil {
			t.Fatal(err)
		}
		e := mustAcquire(t, s, 0, "a", longTTL)
		var pending []*Commit
		for i := range 50 {
			pending = append(pending, c.Submit(0, e, []Op{put(rec("ns", fmt.Sprint(i)))}))
		}
		c.Close()
		c.Close()
		for _, cm := range pending {
			if err := cm.Err(); err != nil {
				t.Fatalf("write submitted before Close: %v", err)
			}
		}
		if got := loadAll(t, s, 0, e); len(got) != 50 {
			t.Fatalf("%d records after Close, want 50", len(got))
		}
		if err := c.Submit(0, e, nil).Err(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Submit after Close: %v, want ErrClosed", err)
		}
	})
}

// TestCommitterRetriesThroughRestart: a cycle whose round trip fails is
// retried until the store is back, and then is durable.
func TestCommitterRetriesThroughRestart(t *testing.T) {
	srv := redistest.Start(t, redistest.AppendFsync("always")) // the acquires must survive the kill
	s := newTestRedis(t, srv.Client(t), "td", 1000)
	c := newTestCommitter(t, s, DefaultCommitterConfig())
	e := mustAcquire(t, s, 0, "a", longTTL)
	srv.Kill(t)
	cm := c.Submit(0, e, []Op{put(rec("ns", "survivor"))})
	select {
	case <-cm.Done():
		t.Fatalf("commit finished with the store down: %v", cm.Err())
	default:
	}
	srv.Restart(t)
	if err := cm.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := loadAll(t, s, 0, e); len(got) != 1 {
		t.Fatalf("after restart: %v", got)
	}
}

func TestCommitterConfig(t *testing.T) {
	cases := []struct {
		field string
		edit  func(*CommitterConfig)
	}{
		{"Linger", func(c *CommitterConfig) { c.Linger = -1 }},
		{"Lanes", func(c *CommitterConfig) { c.Lanes = 0 }},
		{"MaxBatchOps", func(c *CommitterConfig) { c.MaxBatchOps = 0 }},
		{"MaxCycleOps", func(c *CommitterConfig) { c.MaxCycleOps = c.MaxBatchOps - 1 }},
		{"MaxQueueOps", func(c *CommitterConfig) { c.MaxQueueOps = c.MaxCycleOps - 1 }},
		{"CommitTimeout", func(c *CommitterConfig) { c.CommitTimeout = 0 }},
		{"GiveUpAfter", func(c *CommitterConfig) { c.GiveUpAfter = 0 }},
		{"RetryMin", func(c *CommitterConfig) { c.RetryMin = 0 }},
		{"RetryMax", func(c *CommitterConfig) { c.RetryMax = c.RetryMin / 2 }},
	}
	if err := DefaultCommitterConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		cfg := DefaultCommitterConfig()
		tc.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: Validate() = %v", tc.field, err)
		}
		if _, err := NewCommitter(nil, cfg); err == nil {
			t.Errorf("%s: NewCommitter accepted the config", tc.field)
		}
	}
}

// gatedStore holds the first Commit until gate is closed and records the
// batches of every Commit: which shard, how many writes.
type gatedStore struct {
	Store
	gate     chan struct{}
	entered  chan struct{} // closed when the first Commit is held
	once     sync.Once
	openOnce sync.Once

	mu    sync.Mutex
	calls [][]batchShape // guarded by mu
}

type batchShape struct {
	shard uint32
	ops   int
}

// newGatedStore wraps s. Tests defer open, so that a test that fails
// does not leave the lane held when its committer closes.
func newGatedStore(s Store) *gatedStore {
	return &gatedStore{Store: s, gate: make(chan struct{}), entered: make(chan struct{})}
}

// open lets the held Commit, and every later one, through.
func (g *gatedStore) open() { g.openOnce.Do(func() { close(g.gate) }) }

func (g *gatedStore) Commit(ctx context.Context, batches []Batch) error {
	g.once.Do(func() {
		close(g.entered)
		<-g.gate
	})
	shape := make([]batchShape, len(batches))
	for i, b := range batches {
		shape[i] = batchShape{b.Shard, len(b.Ops)}
	}
	g.mu.Lock()
	g.calls = append(g.calls, shape)
	g.mu.Unlock()
	return g.Store.Commit(ctx, batches)
}

// TestCommitterSplitsBigSubmission: a submission of ten times MaxBatchOps
// is committed in pieces of at most MaxBatchOps, in round trips of at most
// MaxCycleOps, and the submissions of other shards of the lane ride the
// first round trips rather than wait for the last piece.
func TestCommitterSplitsBigSubmission(t *testing.T) {
	committerStores(t, func(t *testing.T, s Store) {
		g := newGatedStore(s)
		defer g.open()
		cfg := DefaultCommitterConfig()
		cfg.Lanes = 1
		cfg.MaxBatchOps = 50
		cfg.MaxCycleOps = 100
		c := newTestCommitter(t, g, cfg)
		const big = 10 * 50
		epochs := make([]Grant, 4)
		for sh := range epochs {
			epochs[sh] = mustAcquire(t, s, uint32(sh), "a", longTTL)
		}
		ops := make([]Op, big)
		for i := range ops {
			ops[i] = put(rec("ns", fmt.Sprintf("big%03d", i)))
		}
		bigCommit := c.Submit(0, epochs[0], ops)
		<-g.entered // the first round trip is held: the rest queue behind it
		var small []*Commit
		for sh := 1; sh < len(epochs); sh++ {
			small = append(small, c.Submit(uint32(sh), epochs[sh], []Op{put(rec("ns", "small"))}))
		}
		g.open()
		for _, cm := range small {
			if err := cm.Wait(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		if err := bigCommit.Wait(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got := loadAll(t, s, 0, epochs[0]); len(got) != big {
			t.Fatalf("%d of the big submission's writes stored once its Commit was done, want %d", len(got), big)
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		lastBig, lastSmall, pieces := -1, -1, 0
		for i, call := range g.calls {
			total := 0
			for _, b := range call {
				total += b.ops
				if b.ops > cfg.MaxBatchOps {
					t.Errorf("round trip %d: shard %d batch of %d writes, MaxBatchOps is %d", i, b.shard, b.ops, cfg.MaxBatchOps)
				}
				if b.shard == 0 {
					lastBig = i
					pieces++
				} else {
					lastSmall = i
				}
			}
			if total > cfg.MaxCycleOps {
				t.Errorf("round trip %d carried %d writes, MaxCycleOps is %d", i, total, cfg.MaxCycleOps)
			}
		}
		if pieces < big/cfg.MaxBatchOps {
			t.Errorf("the big submission went in %d batches, want at least %d", pieces, big/cfg.MaxBatchOps)
		}
		if lastSmall >= lastBig {
			t.Errorf("the other shards' writes went in round trip %d, not before the big submission's last (%d)", lastSmall, lastBig)
		}
		t.Logf("%d round trips, big submission in %d pieces", len(g.calls), pieces)
	})
}

// TestCommitterGivesUp: while the store is down, a cycle is retried for
// GiveUpAfter and then its writers fail with ErrUnavailable, as do the
// shard's later writes under the same epoch; once the store is back the
// lane commits again, for other shards and for the shard under a new
// epoch.
func TestCommitterGivesUp(t *testing.T) {
	srv := redistest.Start(t, redistest.AppendFsync("always")) // the acquires must survive the kill
	s := newTestRedis(t, srv.Client(t), "td", 1000)
	cfg := DefaultCommitterConfig()
	cfg.Lanes = 1
	cfg.GiveUpAfter = 300 * time.Millisecond
	cfg.CommitTimeout = time.Second
	cfg.RetryMax = 50 * time.Millisecond
	var gaveUp atomic.Int64
	cfg.OnCommit = func(st CommitStats) {
		if errors.Is(st.Err, ErrUnavailable) {
			gaveUp.Add(1)
		}
	}
	c := newTestCommitter(t, s, cfg)
	e0 := mustAcquire(t, s, 0, "a", longTTL)
	e1 := mustAcquire(t, s, 1, "a", longTTL)
	srv.Kill(t)
	// The bound is the test's, far above GiveUpAfter: without giving up
	// the commit would wait for ever.
	bound := func() context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		t.Cleanup(cancel)
		return ctx
	}
	lost := c.Submit(0, e0, []Op{put(rec("ns", "lost"))})
	if err := lost.Wait(bound()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("commit with the store down: %v, want ErrUnavailable", err)
	}
	srv.Restart(t)
	// The shard's later write under the same epoch would land without
	// the earlier one: it is failed unsent.
	if err := c.Submit(0, e0, []Op{put(rec("ns", "later"))}).Wait(bound()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("later write under the failed epoch: %v, want ErrUnavailable", err)
	}
	if err := c.Submit(1, e1, []Op{put(rec("ns", "other"))}).Wait(bound()); err != nil {
		t.Fatalf("another shard after the store came back: %v", err)
	}
	e0b := mustAcquire(t, s, 0, "a", longTTL)
	if err := c.Submit(0, e0b, []Op{put(rec("ns", "again"))}).Wait(bound()); err != nil {
		t.Fatalf("the shard under a new epoch: %v", err)
	}
	got := loadAll(t, s, 0, e0b)
	if _, ok := got[Key("ns", "later")]; ok || len(got) > 2 {
		t.Fatalf("shard 0 holds %v; the write after the given-up one must not land", got)
	}
	if gaveUp.Load() == 0 {
		t.Fatal("OnCommit never reported a cycle given up")
	}
}

// TestCommitterOverloaded: Reserve refuses at once with ErrOverloaded
// while the lane holds MaxQueueOps writes, counts the refusal, and admits
// again once the writes are durable.
func TestCommitterOverloaded(t *testing.T) {
	s := openTestEmbedded(t, DefaultEmbeddedConfig(t.TempDir()))
	g := newGatedStore(s)
	defer g.open()
	cfg := DefaultCommitterConfig()
	cfg.Lanes = 1
	cfg.MaxBatchOps, cfg.MaxCycleOps, cfg.MaxQueueOps = 10, 10, 30
	c := newTestCommitter(t, g, cfg)
	e := mustAcquire(t, s, 0, "a", longTTL)
	var ops []Op
	for i := range 25 {
		ops = append(ops, put(rec("ns", fmt.Sprint(i))))
	}
	if err := c.Reserve(0, len(ops)); err != nil {
		t.Fatal(err)
	}
	cm := c.Submit(0, e, ops)
	c.Unreserve(0, len(ops))
	<-g.entered
	if q := c.Queue(); q.Ops != 25 {
		t.Fatalf("Queue().Ops = %d, want 25", q.Ops)
	}
	if err := c.Reserve(0, 5); err != nil {
		t.Fatalf("Reserve within the limit: %v", err)
	}
	if err := c.Reserve(0, 1); !errors.Is(err, ErrOverloaded) {
		t.Fatalf("Reserve past the limit: %v, want ErrOverloaded", err)
	}
	c.Unreserve(0, 5)
	if q := c.Queue(); q.Refused != 1 {
		t.Fatalf("Queue().Refused = %d, want 1", q.Refused)
	}
	g.open()
	if err := cm.Wait(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The lane counts the cycle's writes out before it tells their
	// outcome, so a submitter that waited finds the room free at once: a
	// shard replaying page after page reserves its next page right away.
	if q := c.Queue(); q.Ops != 0 {
		t.Fatalf("Queue().Ops = %d once the commit is done, want 0", q.Ops)
	}
	if err := c.Reserve(0, cfg.MaxQueueOps); err != nil {
		t.Fatalf("Reserve once the queue drained: %v", err)
	}
}

// movingStore is a store split into partitions by a table the test
// changes, as a resharding moves slots between a Redis Cluster's masters.
type movingStore struct {
	*gatedStore
	mu   sync.Mutex
	part map[uint32]int // guarded by mu
}

func (m *movingStore) Partitioned() bool { return true }

func (m *movingStore) Partition(shard uint32) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.part[shard]
}

func (m *movingStore) move(shard uint32, p int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.part[shard] = p
}

// TestCommitterPartitionMove: a shard whose partition changes while it
// has writes in its lane keeps that lane until they are done, so its
// writes stay in order; its next writes use the new partition's lanes.
func TestCommitterPartitionMove(t *testing.T) {
	emb := openTestEmbedded(t, DefaultEmbeddedConfig(t.TempDir()))
	gs := newGatedStore(emb)
	defer gs.open()
	ms := &movingStore{gatedStore: gs, part: map[uint32]int{}}
	cfg := DefaultCommitterConfig()
	cfg.Lanes = 1
	c := newTestCommitter(t, ms, cfg)
	g := mustAcquire(t, emb, 1, "node-a", longTTL)
	r := rec("n", "moved")

	first := c.Submit(1, g, []Op{put(r)})
	<-gs.entered // the put is in a cycle, held
	ms.move(1, 1)
	second := c.Submit(1, g, []Op{del(r)})
	c.mu.Lock()
	lanes := len(c.lanes)
	c.mu.Unlock()
	if lanes != 1 {
		t.Fatalf("the moved shard's write opened partition 1's lanes (%d lanes) while its put was in flight", lanes)
	}
	gs.open()
	for i, cm := range []*Commit{first, second} {
		if err := cm.Wait(t.Context()); err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
	}
	if got := loadAll(t, emb, 1, g); len(got) != 0 {
		t.Fatalf("after a put and a delete in order the shard holds %v", got)
	}

	if err := c.Submit(1, g, []Op{put(r)}).Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	lanes, routes := len(c.lanes), len(c.routes)
	c.mu.Unlock()
	if lanes != 2 || routes != 0 {
		t.Fatalf("after the move: %d lanes and %d routes, want 2 lanes (partition 1's opened) and no route left", lanes, routes)
	}
}

// TestCommitterPartitionedUnreserveNothing: giving back no room for a
// shard that holds nothing, as a call that reserved nothing does, is
// harmless over a partitioned store too.
func TestCommitterPartitionedUnreserveNothing(t *testing.T) {
	emb := openTestEmbedded(t, DefaultEmbeddedConfig(t.TempDir()))
	ms := &movingStore{gatedStore: newGatedStore(emb), part: map[uint32]int{}}
	ms.open()
	c := newTestCommitter(t, ms, DefaultCommitterConfig())
	c.Unreserve(3, 0)
	if err := c.Reserve(3, 5); err != nil {
		t.Fatal(err)
	}
	c.Unreserve(3, 5)
	if q := c.Queue(); q.Ops != 0 {
		t.Fatalf("queue holds %d writes, want 0", q.Ops)
	}
}
