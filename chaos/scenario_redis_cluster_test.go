package chaos

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func init() {
	register(scenario{
		name: "redis-cluster-failover",
		about: "the nodes on a Redis Cluster of 3 masters with a replica each, every commit waiting for the replica " +
			"(--redis-wait-replicas 1); kill -9 a master under load: its replica takes over, no acknowledged timer is lost, " +
			"no deposed owner delivers, epochs only go up",
		run: redisClusterFailover,
	})
}

// redisClusterFailover is scenario redis-cluster-failover: 30,000 timers
// due over 25s; 8-10s in, the master of a seeded shard is killed, its
// replica promoted, and the old master restarted to rejoin as the new
// master's replica (until then the promoted master has no replica to
// WAIT for, and its shards' commits wait).
func redisClusterFailover(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{Redis: redisCluster, RedisReplicas: 1,
		// A commit of the failed master's shards waits out the failover
		// and the old master's return rather than fail.
		NodeArgs: func(int) []string { return []string{"--redis-wait-replicas", "1", "--commit-give-up", "1m"} }})
	subscribe(r, c, subscribeConfig{})
	w := newWorkload(r, c, workloadConfig{Timers: 30_000, Spread: 25 * time.Second})
	killAt := 8*time.Second + time.Duration(r.rng.Int64N(int64(2*time.Second)))
	victimShard := r.rng.IntN(c.opts.Shards)
	start := w.begin()

	if !sleepUntil(r.ctx, start.Add(killAt-300*time.Millisecond)) {
		t.Fatal("the run's bound passed before the kill")
	}
	before, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}
	// The shards of the master to kill: those whose keys' slot it serves.
	old := c.rcluster.MasterOf(t, shardKey(victimShard))
	var onOld []uint32
	for s := range c.opts.Shards {
		if c.rcluster.MasterOf(t, shardKey(s)) == old {
			onOld = append(onOld, uint32(s))
		}
	}
	sleepUntil(r.ctx, start.Add(killAt))
	kill := time.Now()
	c.rcluster.KillMaster(t, old)
	promoted := c.rcluster.WaitFailover(t, old)
	failedOver := time.Now()
	r.logf("killed master %s (%d of %d shards); replica %s promoted %v later", old.Addr(), len(onOld), c.opts.Shards,
		promoted.Addr(), failedOver.Sub(kill).Round(time.Millisecond))
	old.Restart(t)
	c.rcluster.WaitHealthy(t)
	rejoined := time.Now()
	r.logf("old master back as a replica %v after the kill", rejoined.Sub(kill).Round(time.Millisecond))
	after := c.waitStable()
	stable := time.Now()

	if !w.wait() {
		t.Fatal("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 40*time.Second)
	got := r.ledger.deliveries()
	v := r.judge()
	v.figure("master_killed_at", kill.Sub(start))
	v.figure("shards_on_killed_master", len(onOld))
	v.figure("failover", failedOver.Sub(kill))
	v.figure("old_master_rejoined", rejoined.Sub(kill))
	v.figure("kill_to_stable", stable.Sub(kill))
	gap, shard := longestStall(got, onOld, kill)
	v.figure("longest_stall_of_its_shards", fmt.Sprintf("%s (shard %d)", ms(gap.Milliseconds()), shard))
	addProblems(v, epochsRegressed(before, after))
	addProblems(v, staleDeliveries(got))
	c.check(v)
	w.check(v)
}

// shardKey is a Redis key of shard s: all of a shard's keys share its
// hash tag, so they live in one slot (docs/ARCHITECTURE.md, "Stores").
func shardKey(s int) string { return fmt.Sprintf("td:{s%d}:epoch", s) }

// longestStall returns the longest time one of shards went without
// firing, from the last delivery fired before from (or from itself) to
// the next fired after it, and which shard: how long the killed master's
// timers had no owner able to fire them. A shard whose timers were all
// due before from counts nothing.
func longestStall(got []delivery, shards []uint32, from time.Time) (time.Duration, uint32) {
	fired := make(map[uint32][]time.Time)
	for _, d := range got {
		if slices.Contains(shards, d.shard) {
			fired[d.shard] = append(fired[d.shard], d.fired)
		}
	}
	var longest time.Duration
	var which uint32
	for s, ts := range fired {
		slices.SortFunc(ts, time.Time.Compare)
		last := from
		for _, t := range ts {
			if t.Before(from) {
				last = t
				continue
			}
			if gap := t.Sub(last); gap > longest {
				longest, which = gap, s
			}
			last = t
		}
	}
	return longest, which
}

// TestLongestStall checks the stall figure on made-up deliveries.
func TestLongestStall(t *testing.T) {
	from := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	at := func(shard uint32, ms int) delivery {
		return delivery{shard: shard, fired: from.Add(time.Duration(ms) * time.Millisecond)}
	}
	got := []delivery{
		at(1, -500), at(1, 3000), at(1, 3100), // stalled 3.5s across from
		at(2, 100), at(2, 4200), // stalled 4.1s after from
		at(3, -100), at(3, 9000), // not one of the shards asked about
	}
	if gap, s := longestStall(got, []uint32{1, 2}, from); gap != 4100*time.Millisecond || s != 2 {
		t.Errorf("longestStall = %v on shard %d, want 4.1s on shard 2", gap, s)
	}
	if gap, _ := longestStall(got, []uint32{1}, from); gap != 3500*time.Millisecond {
		t.Errorf("longestStall of shard 1 = %v, want 3.5s", gap)
	}
}
