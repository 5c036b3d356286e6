package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/timerd/timerd/internal/redistest"
)

// clusterWait bounds the waits of the Redis Cluster tests against hangs;
// it is no claim about speed.
const clusterWait = time.Minute

// shardsByMaster returns, for each of masters, the first per shards that
// it serves.
func shardsByMaster(t *testing.T, rc *redistest.Cluster, s *Redis, masters []*redistest.Server, per int) [][]uint32 {
	t.Helper()
	out := make([][]uint32, len(masters))
	for shard, full := uint32(0), 0; full < len(masters); shard++ {
		i := slices.Index(masters, rc.MasterOf(t, s.key(shard, "r")))
		if i < 0 {
			t.Fatalf("shard %d on a node that is not a master", shard)
		}
		if len(out[i]) < per {
			out[i] = append(out[i], shard)
			if len(out[i]) == per {
				full++
			}
		}
	}
	return out
}

// testSlowMaster: while one master is paused, the group commit still
// makes the writes of shards on the other masters durable; the paused
// master's shards complete once it answers again. The paused master's
// writes are submitted first, so that a cycle shared between masters
// would hold the others' writes behind them.
func testSlowMaster(t *testing.T, rc *redistest.Cluster, client *redis.ClusterClient) {
	ctx := t.Context()
	s := newTestRedis(t, client, "slow", suitePageSize)
	com := newTestCommitter(t, s, DefaultCommitterConfig())
	masters := rc.Masters(t)
	byMaster := shardsByMaster(t, rc, s, masters, 4)
	grants := make(map[uint32]Grant)
	for _, shards := range byMaster {
		for _, sh := range shards {
			grants[sh] = mustAcquire(t, s, sh, "node-a", longTTL)
		}
	}
	slow := masters[0].Client(t)
	// WRITE pauses EVALSHA (and every other write) but not CLIENT UNPAUSE.
	if err := slow.Do(ctx, "CLIENT", "PAUSE", clusterWait.Milliseconds(), "WRITE").Err(); err != nil {
		t.Fatalf("CLIENT PAUSE: %v", err)
	}
	unpaused := false
	unpause := func() {
		if !unpaused {
			unpaused = true
			if err := slow.Do(context.Background(), "CLIENT", "UNPAUSE").Err(); err != nil {
				t.Errorf("CLIENT UNPAUSE: %v", err)
			}
		}
	}
	defer unpause()

	submit := func(shard uint32) *Commit {
		return com.Submit(shard, grants[shard], []Op{put(rec("n", fmt.Sprint("x", shard)))})
	}
	var paused, others []*Commit
	for _, sh := range byMaster[0] {
		paused = append(paused, submit(sh))
	}
	began := time.Now()
	for _, shards := range byMaster[1:] {
		for _, sh := range shards {
			others = append(others, submit(sh))
		}
	}
	wctx, cancel := context.WithTimeout(ctx, clusterWait)
	defer cancel()
	for i, c := range others {
		if err := c.Wait(wctx); err != nil {
			t.Fatalf("commit %d on an unpaused master: %v", i, err)
		}
	}
	t.Logf("the other masters' commits were durable %v after submission, while %s was paused", time.Since(began), masters[0].Addr())
	for i, c := range paused {
		select {
		case <-c.Done():
			t.Errorf("commit %d on the paused master finished while it was paused: %v", i, c.Err())
		default:
		}
	}
	unpause()
	for i, c := range paused {
		if err := c.Wait(wctx); err != nil {
			t.Fatalf("commit %d on the paused master after it resumed: %v", i, err)
		}
	}
}

// failoverRun writes to shards of every master through a Committer while
// it kills a master and waits for its replica to take over, and returns
// what was acknowledged and what the cluster has afterwards.
type failoverRun struct {
	s      *Redis
	grants map[uint32]Grant
	// acked is the keys whose commit was acknowledged, per shard.
	acked map[uint32][]string
	// victim is the master killed, promoted its replica, and victimShards
	// the shards it served.
	victim, promoted *redistest.Server
	victimShards     []uint32
}

// runFailover: shardsPerMaster shards on each master are written by one
// writer each, a write at a time, until enough writes are acknowledged
// before the kill and after the failover.
func runFailover(t *testing.T, rc *redistest.Cluster, prefix string, cfg RedisConfig, victim int) *failoverRun {
	t.Helper()
	const (
		shardsPerMaster = 4
		ackedBefore     = 300 // writes acknowledged before the kill
		ackedAfter      = 100 // and after the failover, on the victim's shards
	)
	ctx := t.Context()
	cfg.Prefix = prefix
	cfg.PageSize = 1000
	s, err := NewRedis(rc.ClusterClient(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ccfg := DefaultCommitterConfig()
	ccfg.GiveUpAfter = clusterWait // ride out the failover
	com := newTestCommitter(t, s, ccfg)

	masters := rc.Masters(t)
	byMaster := shardsByMaster(t, rc, s, masters, shardsPerMaster)
	run := &failoverRun{s: s, grants: map[uint32]Grant{}, acked: map[uint32][]string{},
		victim: masters[victim], victimShards: byMaster[victim]}
	for _, shards := range byMaster {
		for _, sh := range shards {
			run.grants[sh] = mustAcquire(t, s, sh, "node-a", longTTL)
		}
	}
	// The grants are on every replica before the writes begin.
	for _, m := range masters {
		if err := m.Client(t).Do(ctx, "WAIT", 1, clusterWait.Milliseconds()).Err(); err != nil {
			t.Fatalf("WAIT on %s: %v", m.Addr(), err)
		}
	}

	var (
		mu         sync.Mutex
		total      int
		victimDone int // acknowledged on the victim's shards since failedOver
		failedOver bool
		errs       = map[string]int{}
	)
	before, after := make(chan struct{}), make(chan struct{})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for sh := range run.grants {
		onVictim := slices.Contains(run.victimShards, sh)
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d", i)
				err := com.Submit(sh, run.grants[sh], []Op{put(rec("n", key))}).Wait(ctx)
				mu.Lock()
				if err != nil {
					errs[err.Error()]++
					mu.Unlock()
					return // the shard's later writes would fail alike
				}
				run.acked[sh] = append(run.acked[sh], Key("n", key))
				total++
				if total == ackedBefore {
					close(before)
				}
				if failedOver && onVictim {
					victimDone++
					if victimDone == ackedAfter {
						close(after)
					}
				}
				mu.Unlock()
			}
		})
	}
	wait := func(ch chan struct{}, what string) {
		select {
		case <-ch:
		case <-time.After(clusterWait):
			close(stop)
			wg.Wait()
			t.Fatalf("no %s within %v; failed writes: %v", what, clusterWait, errs)
		}
	}
	wait(before, "writes before the kill")
	began := time.Now()
	rc.KillMaster(t, run.victim)
	run.promoted = rc.WaitFailover(t, run.victim)
	mu.Lock()
	failedOver = true
	mu.Unlock()
	t.Logf("failover of %s to %s took %v", run.victim.Addr(), run.promoted.Addr(), time.Since(began))
	// The old master rejoins as the promoted one's replica: with
	// WaitReplicas 1, the promoted master's writes wait for it.
	run.victim.Restart(t)
	wait(after, "writes on the promoted replica")
	close(stop)
	wg.Wait()
	if len(errs) > 0 {
		t.Errorf("writes failed: %v", errs)
	}
	return run
}

// lost reads every shard back and returns the acknowledged keys missing.
func (run *failoverRun) lost(t *testing.T) (lost, acked int) {
	t.Helper()
	for sh, keys := range run.acked {
		have := loadAll(t, run.s, sh, run.grants[sh])
		for _, k := range keys {
			acked++
			if _, ok := have[k]; !ok {
				lost++
			}
		}
	}
	return lost, acked
}

// TestRedisClusterFailover kills a master of a three-master cluster with
// a replica each while shards on every master are written, and reads
// every acknowledged write back once the replica has taken over. With
// WaitReplicas 1 none may be lost; without it, losses are logged (Redis
// replication is asynchronous, so some are possible, though on loopback
// the replica is rarely behind). Then the fence is checked on the promoted
// replica: a new owner's Acquire gets a higher epoch, and the old Grant's
// writes and loads are refused.
func TestRedisClusterFailover(t *testing.T) {
	rc := redistest.StartRedisCluster(t, 3, 1)

	cfg := DefaultRedisConfig()
	cfg.WaitReplicas = 1
	run := runFailover(t, rc, "wait", cfg, 0)
	lost, acked := run.lost(t)
	t.Logf("WaitReplicas=1: %d of %d acknowledged writes lost across the failover", lost, acked)
	if lost != 0 {
		t.Errorf("WaitReplicas=1: %d of %d acknowledged writes lost across the failover", lost, acked)
	}

	t.Run("FenceOnPromotedReplica", func(t *testing.T) {
		s := run.s
		sh := run.victimShards[0]
		old := run.grants[sh]
		mustRelease(t, s, sh, old)
		g := mustAcquire(t, s, sh, "node-b", longTTL)
		if g.Epoch <= old.Epoch {
			t.Fatalf("Acquire after failover: epoch %d, not above the old owner's %d", g.Epoch, old.Epoch)
		}
		bs := []Batch{{Shard: sh, Grant: old, Ops: []Op{put(rec("n", "stale"))}}}
		if err := s.Commit(t.Context(), bs); err != nil || !errors.Is(bs[0].Err, ErrFenced) {
			t.Fatalf("stale owner's commit after failover: %v, %v; want ErrFenced", err, bs[0].Err)
		}
		if err := s.Load(t.Context(), sh, old, func([]Record) error { return nil }); !errors.Is(err, ErrFenced) {
			t.Fatalf("stale owner's Load after failover: %v, want ErrFenced", err)
		}
		if _, ok := loadAll(t, s, sh, g)[Key("n", "stale")]; ok {
			t.Fatal("the stale owner's write is in the store")
		}
	})

	// The next run kills another master without waiting for replicas.
	rc.WaitHealthy(t)
	run = runFailover(t, rc, "nowait", DefaultRedisConfig(), 1)
	lost, acked = run.lost(t)
	t.Logf("WaitReplicas=0: %d of %d acknowledged writes lost across the failover (asynchronous replication; not asserted)", lost, acked)
}

// TestRedisWaitReplicas: a standalone master without replicas cannot meet
// WaitReplicas, so commits fail with ErrReplicas, naming the counts; with
// a replica attached they succeed.
func TestRedisWaitReplicas(t *testing.T) {
	ctx := t.Context()
	master := redistest.Start(t)
	cfg := DefaultRedisConfig()
	cfg.WaitReplicas = 1
	cfg.WaitTimeout = 50 * time.Millisecond
	s, err := NewRedis(master.Client(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := mustAcquire(t, s, 0, "node-a", longTTL)
	bs := []Batch{{Shard: 0, Grant: g, Ops: []Op{put(rec("n", "1"))}}}
	if err := s.Commit(ctx, bs); !errors.Is(err, ErrReplicas) {
		t.Fatalf("Commit without replicas: %v, want ErrReplicas", err)
	}
	host, port, _ := net.SplitHostPort(master.Addr())
	replica := redistest.Start(t, redistest.Args("--replicaof", host, port))
	rcl := replica.Client(t)
	deadline := time.Now().Add(clusterWait) // bounds this wait and the commit's retries
	for {
		info, err := rcl.Info(ctx, "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica not linked within %v: %v", clusterWait, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A loaded machine may keep the replica's ack past WaitTimeout; the
	// group commit would retry, and so does the test, until a bound.
	bs[0].Ops = []Op{put(rec("n", "2"))}
	for {
		err := s.Commit(ctx, bs)
		if err == nil && bs[0].Err == nil {
			break
		}
		if !errors.Is(err, ErrReplicas) || time.Now().After(deadline) {
			t.Fatalf("Commit with a replica: %v, %v", err, bs[0].Err)
		}
		t.Logf("Commit with a replica: %v; retrying", err)
	}
	if err := rcl.HGet(ctx, s.key(0, "r"), Key("n", "2")).Err(); err != nil {
		t.Fatalf("the replica lacks the acknowledged record: %v", err)
	}
}
