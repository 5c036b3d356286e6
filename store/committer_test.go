package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

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
	srv := redistest.Start(t)
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
		{"CommitTimeout", func(c *CommitterConfig) { c.CommitTimeout = 0 }},
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
