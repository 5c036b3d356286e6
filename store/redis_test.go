package store

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/internal/redistest"
)

// suitePageSize is the Load page of the suite's Redis stores: small, so
// that every Load of more than a few records spans several HSCAN calls.
const suitePageSize = 7

// newTestRedis returns a store on client under a prefix no other store of
// the test uses, closed when the test ends.
func newTestRedis(t testing.TB, client redis.UniversalClient, prefix string, pageSize int) *Redis {
	t.Helper()
	cfg := DefaultRedisConfig()
	cfg.Prefix = prefix
	cfg.PageSize = pageSize
	s, err := NewRedis(client, cfg)
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestRedis runs the conformance suite on one standalone server; each
// subtest has a key prefix of its own.
func TestRedis(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	var n atomic.Int64
	testStore(t, func(t *testing.T) Store {
		return newTestRedis(t, client, "t"+strconv.FormatInt(n.Add(1), 10), suitePageSize)
	})
}

// TestRedisCluster runs the suite through a cluster client on a Redis
// Cluster of three masters, where a script may only touch keys of one
// slot, and checks that all keys of a shard map to the slot of its hash
// tag, that shards spread over every master, and that Partition names
// each shard's master.
func TestRedisCluster(t *testing.T) {
	rc := redistest.StartRedisCluster(t, 3, 0)
	client := rc.ClusterClient(t)
	var n atomic.Int64
	t.Run("Suite", func(t *testing.T) {
		testStore(t, func(t *testing.T) Store {
			return newTestRedis(t, client, "t"+strconv.FormatInt(n.Add(1), 10), suitePageSize)
		})
	})
	t.Run("HashTag", func(t *testing.T) {
		ctx := t.Context()
		s := newTestRedis(t, client, "tag", suitePageSize)
		for shard := range uint32(5) {
			e := mustAcquire(t, s, shard, "node-a", longTTL)
			mustCommit(t, s, Batch{Shard: shard, Grant: e, Ops: []Op{put(rec("n", "1"))}})
		}
		var keys []string
		for _, m := range rc.Masters(t) {
			k, err := m.Client(t).Keys(ctx, "tag:*").Result()
			if err != nil {
				t.Fatalf("KEYS on %s: %v", m.Addr(), err)
			}
			keys = append(keys, k...)
		}
		if len(keys) != 5*3 {
			t.Fatalf("keys %q, want 3 per shard for 5 shards", keys)
		}
		slots := map[int64]uint32{}
		for _, k := range keys {
			// tag:{s<shard>}:<what>
			tag := k[strings.IndexByte(k, '{')+1 : strings.IndexByte(k, '}')]
			shard, err := strconv.ParseUint(strings.TrimPrefix(tag, "s"), 10, 32)
			if err != nil {
				t.Fatalf("key %q: no shard hash tag", k)
			}
			slot := mustKeySlot(t, client, k)
			if want := mustKeySlot(t, client, tag); slot != want {
				t.Errorf("key %q in slot %d, want %d, the slot of its tag %q", k, slot, want, tag)
			}
			if got := shardSlot(uint32(shard)); int64(got) != slot {
				t.Errorf("shardSlot(%d) = %d, want %d as Redis hashes %q", shard, got, slot, k)
			}
			if other, ok := slots[slot]; ok && other != uint32(shard) {
				t.Errorf("shards %d and %d share slot %d", other, shard, slot)
			}
			slots[slot] = uint32(shard)
		}
	})
	t.Run("SpreadAndPartition", func(t *testing.T) {
		const shards = 64
		ctx := t.Context()
		s := newTestRedis(t, client, "spread", suitePageSize)
		if !s.Partitioned() {
			t.Fatal("a store on a cluster client is not Partitioned")
		}
		masters := rc.Masters(t)
		for shard := range uint32(shards) {
			e := mustAcquire(t, s, shard, "node-a", longTTL)
			mustCommit(t, s, Batch{Shard: shard, Grant: e, Ops: []Op{put(rec("n", "1"))}})
		}
		perMaster := make(map[string]int)
		for shard := range uint32(shards) {
			m := rc.MasterOf(t, s.key(shard, "r"))
			if p := s.Partition(shard); p >= len(masters) || masters[p] != m {
				t.Errorf("Partition(%d) = %d, but master %s serves it", shard, p, m.Addr())
			}
			perMaster[m.Addr()]++
		}
		for _, m := range masters {
			// Three keys per shard: records, epoch and lease.
			keys, err := m.Client(t).Keys(ctx, "spread:*").Result()
			if err != nil {
				t.Fatalf("KEYS on %s: %v", m.Addr(), err)
			}
			t.Logf("master %s: %d shards, %d keys", m.Addr(), perMaster[m.Addr()], len(keys))
			if perMaster[m.Addr()] == 0 || len(keys) != 3*perMaster[m.Addr()] {
				t.Errorf("master %s holds %d keys for %d shards, want 3 a shard and some shards", m.Addr(), len(keys), perMaster[m.Addr()])
			}
		}
	})
	t.Run("SlowMaster", func(t *testing.T) { testSlowMaster(t, rc, client) })
}

func mustKeySlot(t *testing.T, c *redis.ClusterClient, key string) int64 {
	t.Helper()
	slot, err := c.ClusterKeySlot(t.Context(), key).Result()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT %q: %v", key, err)
	}
	return slot
}

func TestRedisConfig(t *testing.T) {
	if err := DefaultRedisConfig().Validate(); err != nil {
		t.Fatalf("default config: %v", err)
	}
	for _, tt := range []struct {
		field string
		edit  func(*RedisConfig)
	}{
		{"Prefix", func(c *RedisConfig) { c.Prefix = "" }},
		{"Prefix", func(c *RedisConfig) { c.Prefix = "a{b}" }},
		{"PageSize", func(c *RedisConfig) { c.PageSize = 0 }},
		{"PageSize", func(c *RedisConfig) { c.PageSize = maxPageSize + 1 }},
	} {
		cfg := DefaultRedisConfig()
		tt.edit(&cfg)
		err := cfg.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%+v: Validate() = %v, want ErrInvalidConfig naming %s", cfg, err, tt.field)
		}
		if _, err := NewRedis(redis.NewClient(&redis.Options{}), cfg); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%+v: NewRedis: %v, want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := NewRedis(nil, DefaultRedisConfig()); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("NewRedis(nil): %v, want ErrInvalidConfig", err)
	}
}

// TestRedisErrors checks what Redis's errors say and the arguments it
// refuses before any I/O.
func TestRedisErrors(t *testing.T) {
	srv := redistest.Start(t)
	s := newTestRedis(t, srv.Client(t), "td", suitePageSize)
	ctx := t.Context()

	if _, err := s.Acquire(ctx, 1, "", longTTL); err == nil {
		t.Error("Acquire with an empty owner succeeded")
	}
	for _, ttl := range []time.Duration{0, -time.Second} {
		if _, err := s.Acquire(ctx, 1, "node-a", ttl); err == nil {
			t.Errorf("Acquire with ttl %v succeeded", ttl)
		}
	}

	e1 := mustAcquire(t, s, 3, "node-a", longTTL)
	e2 := mustAcquire(t, s, 3, "node-a", longTTL)
	b := []Batch{{Shard: 3, Grant: e1, Ops: []Op{put(rec("n", "1"))}}}
	if err := s.Commit(ctx, b); err != nil {
		t.Fatalf("Commit: %v", err)
	}
	want := fmt.Sprintf("shard 3: commit under epoch %d; current epoch %d", e1.Epoch, e2.Epoch)
	if !errors.Is(b[0].Err, ErrFenced) || !strings.Contains(b[0].Err.Error(), want) {
		t.Errorf("stale commit: %v, want ErrFenced saying %q", b[0].Err, want)
	}
	err := s.Renew(ctx, 3, e1, longTTL)
	want = fmt.Sprintf("shard 3: renew under epoch %d; current epoch %d, held by \"node-a\" under epoch %d", e1.Epoch, e2.Epoch, e2.Epoch)
	if !errors.Is(err, ErrFenced) || !strings.Contains(err.Error(), want) {
		t.Errorf("stale renew: %v, want ErrFenced saying %q", err, want)
	}
	_, err = s.Acquire(ctx, 3, "node-b", longTTL)
	want = fmt.Sprintf("shard 3: held by \"node-a\" under epoch %d for another", e2.Epoch)
	if !errors.Is(err, ErrLeaseHeld) || !strings.Contains(err.Error(), want) {
		t.Errorf("acquire of a held lease: %v, want ErrLeaseHeld saying %q", err, want)
	}

	canceled, cancel := context.WithCancel(ctx)
	cancel()
	b = []Batch{{Shard: 3, Grant: e2, Ops: []Op{put(rec("n", "1"))}}}
	if err := s.Commit(canceled, b); !errors.Is(err, context.Canceled) {
		t.Errorf("Commit with a canceled context: %v, want context.Canceled", err)
	}
}

// TestRedisLoadCanceled cancels the context in the middle of a Load: Load
// fails with the context's error rather than report a partial load as
// complete.
func TestRedisLoadCanceled(t *testing.T) {
	srv := redistest.Start(t)
	s := newTestRedis(t, srv.Client(t), "td", suitePageSize)
	e := mustAcquire(t, s, 1, "node-a", longTTL)
	var ops []Op
	for i := range 1000 {
		ops = append(ops, put(rec("n", strconv.Itoa(i))))
	}
	mustCommit(t, s, Batch{Shard: 1, Grant: e, Ops: ops})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := s.Load(ctx, 1, e, func([]Record) error { cancel(); return nil })
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Load canceled after its first page: %v, want context.Canceled", err)
	}
}

// TestRedisCorruptRecord plants a value that is not a record: Load fails
// with ErrCorrupt and names its key.
func TestRedisCorruptRecord(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	s := newTestRedis(t, client, "td", suitePageSize)
	e := mustAcquire(t, s, 1, "node-a", longTTL)
	mustCommit(t, s, Batch{Shard: 1, Grant: e, Ops: []Op{put(rec("n", "good"))}})
	if err := client.HSet(t.Context(), s.key(1, "r"), Key("n", "bad"), "\x01garbage").Err(); err != nil {
		t.Fatalf("HSET: %v", err)
	}
	err := s.Load(t.Context(), 1, e, func([]Record) error { return nil })
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), strconv.Quote(Key("n", "bad"))) {
		t.Fatalf("Load: %v, want ErrCorrupt naming the key %q", err, Key("n", "bad"))
	}
}

// TestRedisScriptFlush empties the server's script cache between calls:
// the store loads its scripts again (the NOSCRIPT path).
func TestRedisScriptFlush(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	s := newTestRedis(t, client, "td", suitePageSize)
	ctx := t.Context()
	flush := func() {
		t.Helper()
		if err := client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatalf("SCRIPT FLUSH: %v", err)
		}
	}
	flush()
	e := mustAcquire(t, s, 1, "node-a", longTTL)
	flush()
	mustCommit(t, s, Batch{Shard: 1, Grant: e, Ops: []Op{put(rec("n", "1"))}})
	flush()
	// Several batches in one pipeline, all meeting NOSCRIPT.
	e2 := mustAcquire(t, s, 2, "node-a", longTTL)
	flush()
	b := []Batch{
		{Shard: 1, Grant: e, Ops: []Op{put(rec("n", "2"))}},
		{Shard: 2, Grant: e2, Ops: []Op{put(rec("n", "1"))}},
		{Shard: 2, Grant: Grant{Epoch: e2.Epoch - 1, Token: e2.Token}, Ops: []Op{put(rec("n", "stale"))}},
	}
	if err := s.Commit(ctx, b); err != nil || b[0].Err != nil || b[1].Err != nil || !errors.Is(b[2].Err, ErrFenced) {
		t.Fatalf("Commit after SCRIPT FLUSH: %v; batch errors %v, %v, %v", err, b[0].Err, b[1].Err, b[2].Err)
	}
	flush()
	if err := s.Renew(ctx, 1, e, longTTL); err != nil {
		t.Fatalf("Renew after SCRIPT FLUSH: %v", err)
	}
	flush()
	if l := mustLease(t, s, 1); l.Owner != "node-a" || l.Epoch != e.Epoch {
		t.Fatalf("Lease after SCRIPT FLUSH = %+v", l)
	}
	flush()
	mustRelease(t, s, 1, e)
	if got := loadAll(t, s, 1, e); len(got) != 2 {
		t.Fatalf("shard 1 holds %d records, want 2", len(got))
	}
	if got := loadAll(t, s, 2, e2); len(got) != 1 {
		t.Fatalf("shard 2 holds %d records, want 1", len(got))
	}
}

// breakFirstSHA is a hook that makes the first EVALSHA of the first
// pipeline name a script the server does not have, as if the script cache
// had been flushed just before it and its script loaded again by someone
// else just after.
type breakFirstSHA struct{ done atomic.Bool }

func (h *breakFirstSHA) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (h *breakFirstSHA) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (h *breakFirstSHA) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && cmds[0].Name() == "evalsha" && h.done.CompareAndSwap(false, true) {
			cmds[0].Args()[1] = strings.Repeat("0", 40)
		}
		return next(ctx, cmds)
	}
}

// TestRedisNoScriptKeepsOrder: when an earlier batch of a shard meets
// NOSCRIPT and a later one of the same shard does not, the store must not
// apply the earlier one after the later one.
func TestRedisNoScriptKeepsOrder(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	s := newTestRedis(t, client, "td", suitePageSize)
	e := mustAcquire(t, s, 1, "node-a", longTTL)
	e2 := mustAcquire(t, s, 2, "node-a", longTTL)
	mustCommit(t, s, Batch{Shard: 1, Grant: e}) // loads the script
	client.AddHook(&breakFirstSHA{})
	k, other := rec("n", "k"), rec("n", "other")
	b := []Batch{
		{Shard: 1, Grant: e, Ops: []Op{put(k)}},
		{Shard: 2, Grant: e2, Ops: []Op{put(other)}},
		{Shard: 1, Grant: e, Ops: []Op{del(k)}},
	}
	if err := s.Commit(t.Context(), b); err != nil || b[0].Err != nil || b[1].Err != nil || b[2].Err != nil {
		t.Fatalf("Commit: %v; batch errors %v, %v, %v", err, b[0].Err, b[1].Err, b[2].Err)
	}
	if got := loadAll(t, s, 1, e); len(got) != 0 {
		t.Fatalf("shard 1 holds %v; its put was applied after its delete", got)
	}
	if got := loadAll(t, s, 2, e2); len(got) != 1 {
		t.Fatalf("shard 2 holds %d records, want 1", len(got))
	}
}

// TestRedisLostAcquire: Redis forgets an Acquire after answering it (a
// restart from an everysec AOF, a failover to a replica that lacked it)
// and hands the next owner the epoch it had handed to the first. The
// first owner's writes must still be refused: the token fences them.
func TestRedisLostAcquire(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	s := newTestRedis(t, client, "td", suitePageSize)
	ctx := t.Context()
	epochKey, leaseKey := s.key(0, "epoch"), s.key(0, "lease")
	// An epoch counter far ahead of Redis's clock, so that the acquire
	// after the loss repeats A's epoch rather than take one from the
	// clock, and only the token is left to tell A from B.
	if err := client.Set(ctx, epochKey, 1<<50, 0).Err(); err != nil {
		t.Fatal(err)
	}
	before, err := client.Get(ctx, epochKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	a := mustAcquire(t, s, 0, "node-a", longTTL)
	mine := rec("n", "a")
	mustCommit(t, s, Batch{Shard: 0, Grant: a, Ops: []Op{put(mine)}})
	// Redis loses A's acquire (the lease with it), not A's records.
	if err := client.Set(ctx, epochKey, before, 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := client.Del(ctx, leaseKey).Err(); err != nil {
		t.Fatal(err)
	}
	b := mustAcquire(t, s, 0, "node-b", longTTL)
	if b.Epoch != a.Epoch {
		t.Fatalf("B's epoch %d, want A's %d again (the premise of the test)", b.Epoch, a.Epoch)
	}
	theirs := rec("n", "a")
	theirs.Topic = "b"
	mustCommit(t, s, Batch{Shard: 0, Grant: b, Ops: []Op{put(theirs)}})

	stale := mine
	stale.Topic = "stale"
	bs := []Batch{{Shard: 0, Grant: a, Ops: []Op{put(stale), del(rec("n", "b"))}}}
	if err := s.Commit(ctx, bs); err != nil {
		t.Fatalf("A's commit: %v", err)
	}
	if !errors.Is(bs[0].Err, ErrFenced) {
		t.Errorf("A's commit under B's epoch: Err %v, want ErrFenced", bs[0].Err)
	}
	if err := s.Renew(ctx, 0, a, longTTL); !errors.Is(err, ErrFenced) {
		t.Errorf("A's renew: %v, want ErrFenced", err)
	}
	if err := s.Load(ctx, 0, a, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
		t.Errorf("A's load: %v, want ErrFenced", err)
	}
	mustRelease(t, s, 0, a)
	if got := loadAll(t, s, 0, b); !reflect.DeepEqual(got, recordMap(theirs)) {
		t.Fatalf("B's records after A's writes: %v, want %v", got, theirs)
	}
	if l := mustLease(t, s, 0); l.Owner != "node-b" || l.Epoch != b.Epoch {
		t.Fatalf("Lease = %+v, want node-b's under epoch %d", l, b.Epoch)
	}
}

// TestRedisEpochsSurviveOlderState kills redis-server with SIGKILL and
// restarts it from an AOF older than the epochs it had handed out (what a
// crash with appendfsync everysec, or a failover to a lagging replica,
// does): the next Acquire still gets an epoch above all of them.
func TestRedisEpochsSurviveOlderState(t *testing.T) {
	srv := redistest.Start(t)
	client := srv.Client(t)
	s := newTestRedis(t, client, "td", suitePageSize)
	old := mustAcquire(t, s, 0, "node-a", longTTL)

	// Keep the AOF as it is now; Stop flushes it.
	srv.Stop(t)
	aof := filepath.Join(srv.Dir(), "appendonlydir")
	saved := filepath.Join(t.TempDir(), "appendonlydir")
	if err := os.CopyFS(saved, os.DirFS(aof)); err != nil {
		t.Fatalf("save the AOF: %v", err)
	}
	srv.Restart(t)
	var last Grant
	for range 5 {
		last = mustAcquire(t, s, 0, "node-a", longTTL)
	}
	srv.Kill(t)
	if err := os.RemoveAll(aof); err != nil {
		t.Fatal(err)
	}
	if err := os.CopyFS(aof, os.DirFS(saved)); err != nil {
		t.Fatalf("restore the older AOF: %v", err)
	}
	srv.Restart(t)

	if l := mustLease(t, s, 0); l.Epoch != old.Epoch {
		t.Fatalf("epoch after the restart from the older AOF = %d, want the older %d (the premise of the test)", l.Epoch, old.Epoch)
	}
	next := mustAcquire(t, s, 0, "node-a", longTTL)
	if next.Epoch <= last.Epoch {
		t.Fatalf("epoch after the restart %d, want above %d, the last handed out before it", next.Epoch, last.Epoch)
	}
	bs := []Batch{{Shard: 0, Grant: last, Ops: []Op{put(rec("n", "stale"))}}}
	if err := s.Commit(t.Context(), bs); err != nil || !errors.Is(bs[0].Err, ErrFenced) {
		t.Fatalf("commit under the grant Redis forgot: %v, %v; want ErrFenced", err, bs[0].Err)
	}
}

// TestRedisKillRestart kills redis-server with SIGKILL in the middle of a
// stream of commits and restarts it from its AOF: every commit that
// returned success is there, commits while it is down fail, and commits
// work again once it is back (with an empty script cache).
func TestRedisKillRestart(t *testing.T) {
	const (
		shards    = 4
		perCommit = 50 // records per shard per commit
	)
	// With appendfsync always Redis answers only fsynced writes; with
	// everysec it may acknowledge writes a crash then loses.
	srv := redistest.Start(t, redistest.AppendFsync("always"))
	// No retries, so that commits while the server is down fail fast.
	client := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, DialerRetries: 1})
	t.Cleanup(func() { _ = client.Close() })
	s := newTestRedis(t, client, "td", 1000)
	ctx := t.Context()
	epochs := make([]Grant, shards)
	for i := range epochs {
		epochs[i] = mustAcquire(t, s, uint32(i), "node-a", longTTL)
	}

	var (
		mu       sync.Mutex
		acked    = make([]map[string]Record, shards)
		commits  int
		failures int
	)
	for i := range acked {
		acked[i] = map[string]Record{}
	}
	enough := make(chan struct{}) // closed after 20 acknowledged commits
	var wg sync.WaitGroup
	wg.Go(func() {
		for c := 0; ; c++ {
			batches := make([]Batch, shards)
			for sh := range batches {
				batches[sh] = Batch{Shard: uint32(sh), Grant: epochs[sh]}
				for i := range perCommit {
					r := rec("n", fmt.Sprintf("c%d-%d", c, i))
					batches[sh].Ops = append(batches[sh].Ops, put(r))
				}
			}
			err := s.Commit(ctx, batches)
			for _, b := range batches {
				if err == nil && b.Err != nil {
					err = b.Err
				}
			}
			mu.Lock()
			if err != nil {
				failures++
				stop := failures == 3
				mu.Unlock()
				if errors.Is(err, ErrFenced) {
					t.Errorf("commit %d fenced: %v", c, err)
					return
				}
				if stop {
					return
				}
				continue
			}
			for sh, b := range batches {
				for i, op := range b.Ops {
					acked[sh][op.Key] = rec("n", fmt.Sprintf("c%d-%d", c, i))
				}
			}
			commits++
			if commits == 20 {
				close(enough)
			}
			mu.Unlock()
		}
	})
	select {
	case <-enough:
	case <-time.After(time.Minute):
		t.Fatal("no 20 commits within a minute")
	}
	srv.Kill(t)
	wg.Wait() // the writer stops after its third failure
	t.Logf("%d commits acknowledged before the kill, %d failed after it", commits, failures)

	b := []Batch{{Shard: 0, Grant: epochs[0], Ops: []Op{put(rec("n", "while-down"))}}}
	if err := s.Commit(ctx, b); err == nil {
		t.Fatalf("Commit while redis-server is down succeeded (batch err %v)", b[0].Err)
	}

	srv.Restart(t)
	for sh := range shards {
		got := loadAll(t, s, uint32(sh), epochs[sh])
		for k, want := range acked[sh] {
			if r, ok := got[k]; !ok || !reflect.DeepEqual(r, want) {
				t.Fatalf("shard %d: acknowledged record %q lost or changed after the crash: %v, %v", sh, k, ok, r)
			}
		}
	}
	// The lease and epoch survived too, and the store works again.
	if l := mustLease(t, s, 0); l.Owner != "node-a" || l.Epoch != epochs[0].Epoch {
		t.Fatalf("Lease after restart = %+v, want node-a under epoch %d", l, epochs[0].Epoch)
	}
	after := rec("n", "after-restart")
	mustCommit(t, s, Batch{Shard: 0, Grant: epochs[0], Ops: []Op{put(after)}})
	if got := loadAll(t, s, 0, epochs[0]); !reflect.DeepEqual(got[Key("n", "after-restart")], after) {
		t.Fatal("commit after restart not loaded")
	}
	if e := mustAcquire(t, s, 1, "node-a", longTTL); e.Epoch <= epochs[1].Epoch {
		t.Fatalf("epoch after restart %d, want > %d", e.Epoch, epochs[1].Epoch)
	}
}

var benchLoadN = flag.Int("store.loadn", 1_000_000, "records BenchmarkRedisLoad loads")

// BenchmarkRedisLoad loads one shard of -store.loadn records of ~100 B (a
// million by default) at several page sizes, beside a raw HSCAN of the
// same hash that does not decode (its peer).
func BenchmarkRedisLoad(b *testing.B) {
	srv := redistest.Start(b)
	client := srv.Client(b)
	ctx := b.Context()
	n := *benchLoadN
	s := newTestRedis(b, client, "bench", DefaultRedisConfig().PageSize)
	e, err := s.Acquire(ctx, 0, "bench", time.Hour)
	if err != nil {
		b.Fatal(err)
	}
	for start := 0; start < n; start += 16_000 {
		batches := make([]Batch, 0, 16)
		for j := start; j < min(start+16_000, n); j += 1000 {
			bt := Batch{Shard: 0, Grant: e}
			for i := j; i < min(j+1000, n); i++ {
				bt.Ops = append(bt.Ops, put(rec("bench", strconv.Itoa(i))))
			}
			batches = append(batches, bt)
		}
		if err := s.Commit(ctx, batches); err != nil || batches[0].Err != nil {
			b.Fatalf("fill: %v %v", err, batches[0].Err)
		}
	}
	// The fill grew the AOF enough for Redis to rewrite it in a child
	// process; let that finish rather than compete with the measurement.
	for {
		info, err := client.Info(ctx, "persistence").Result()
		if err != nil {
			b.Fatal(err)
		}
		if strings.Contains(info, "aof_rewrite_in_progress:0") && strings.Contains(info, "aof_rewrite_scheduled:0") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, page := range []int{1000, 5000, 10000} {
		b.Run(fmt.Sprintf("page=%d", page), func(b *testing.B) {
			s := newTestRedis(b, client, "bench", page)
			b.ReportAllocs()
			total := 0
			for b.Loop() {
				got := 0
				if err := s.Load(ctx, 0, e, func(p []Record) error { got += len(p); return nil }); err != nil {
					b.Fatal(err)
				}
				if got < n {
					b.Fatalf("loaded %d records, want %d", got, n)
				}
				total += got
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
		})
		b.Run(fmt.Sprintf("peer=raw-hscan/page=%d", page), func(b *testing.B) {
			total := 0
			for b.Loop() {
				var cursor uint64
				for {
					kv, next, err := client.HScan(ctx, "bench:{s0}:r", cursor, "", int64(page)).Result()
					if err != nil {
						b.Fatal(err)
					}
					total += len(kv) / 2
					if next == 0 {
						break
					}
					cursor = next
				}
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "records/s")
		})
	}
}

// BenchmarkRedisCommit measures the store's raw write ceiling: each
// operation is one Commit of 16 batches (shards) of 1,000 records of
// ~100 B, beside its peer, the same records written by a pipeline of one
// plain HSET per shard, without fencing. keys=new writes keys not seen
// before (the hash grows, as when timers are scheduled); keys=overwrite
// cycles through 8 sets of keys (as when timers are updated).
func BenchmarkRedisCommit(b *testing.B) {
	for _, keys := range []string{"new", "overwrite"} {
		b.Run("fenced/keys="+keys, func(b *testing.B) { benchCommit(b, keys == "new", true) })
		b.Run("peer=raw-hset/keys="+keys, func(b *testing.B) { benchCommit(b, keys == "new", false) })
	}
}

func benchCommit(b *testing.B, newKeys, fenced bool) {
	const (
		shards   = 16
		perBatch = 1000
		sets     = 8 // key sets cycled through when keys are overwritten
	)
	srv := redistest.Start(b)
	client := srv.Client(b)
	ctx := b.Context()
	s := newTestRedis(b, client, "bench", DefaultRedisConfig().PageSize)
	epochs := make([]Grant, shards)
	for sh := range epochs {
		e, err := s.Acquire(ctx, uint32(sh), "bench", time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		epochs[sh] = e
	}
	r := rec("bench", "0000000")
	value := r.AppendBinary(nil) // ~100 B
	// ops[set][shard]; with new keys, set 0 is rewritten before each op.
	ops := make([][][]Op, sets)
	keysOf := func(iter int) [][]Op {
		set := make([][]Op, shards)
		for sh := range set {
			set[sh] = make([]Op, perBatch)
			for i := range set[sh] {
				set[sh][i] = Op{Key: Key("bench", strconv.Itoa(iter)+"-"+strconv.Itoa(i)), Value: value}
			}
		}
		return set
	}
	for set := range ops {
		ops[set] = keysOf(set)
	}
	batches := make([]Batch, shards)
	args := make([]any, 0, 2*perBatch)
	b.ReportAllocs()
	iter := 0
	for b.Loop() {
		set := ops[iter%sets]
		if newKeys {
			b.StopTimer()
			set = keysOf(iter)
			b.StartTimer()
		}
		iter++
		if fenced {
			for sh := range batches {
				batches[sh] = Batch{Shard: uint32(sh), Grant: epochs[sh], Ops: set[sh]}
			}
			if err := s.Commit(ctx, batches); err != nil {
				b.Fatal(err)
			}
			for _, bt := range batches {
				if bt.Err != nil {
					b.Fatal(bt.Err)
				}
			}
			continue
		}
		pipe := client.Pipeline()
		for sh := range shards {
			args = args[:0]
			for _, op := range set[sh] {
				args = append(args, op.Key, op.Value)
			}
			pipe.HSet(ctx, s.key(uint32(sh), "r"), args...)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*shards*perBatch)/b.Elapsed().Seconds(), "records/s")
}
