package chaos

import (
	"testing"
	"time"

	"google.golang.org/grpc"
)

// ownerKillBound is what scenario owner-kill allows a timer beyond its
// due time and the lease TTL: every acknowledged timer fires by due +
// lease TTL + ownerKillBound.
const ownerKillBound = 10 * time.Second

func init() {
	register(scenario{
		name: "owner-kill",
		about: "kill -9 the owner of the most shards while 100,000 acknowledged timers are pending, due over the next ~20s: " +
			"every one fires, none early, each by its due time + lease TTL + 10s",
		run: ownerKill,
	})
}

func ownerKill(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{})
	subscribe(r, c, subscribeConfig{})
	// Every timer is scheduled first, at full rate, due 10s to 30s after
	// the start; the kill comes once they all have an outcome and 1s
	// before the first is due, so every one is pending at it and the
	// victim's first ones come due while their shards have no owner.
	w := newWorkload(r, c, workloadConfig{Timers: 100_000, FirstDue: 10 * time.Second, Spread: 20 * time.Second,
		MinBatch: 200, MaxBatch: 500, FullRate: true, Concurrency: 8})
	start := w.begin()
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	scheduled := time.Since(start)
	sleepUntil(r.ctx, start.Add(w.cfg.FirstDue-time.Second))
	before, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}
	victim := c.mostShards(before)
	name := c.node(victim).name
	pendingDue := r.ledger.missing()
	kill := time.Now()
	c.kill9(victim)
	var survivors []*grpc.ClientConn
	for _, i := range c.up() {
		survivors = append(survivors, c.conn(i))
	}
	servedMin, servedMax, servedAll := servedAgain(r.ctx, survivors, shardsOf(before, name), kill, time.Minute)

	r.drain(w.lastDue(), c.opts.LeaseTTL+ownerKillBound+5*time.Second)
	v := r.judge()
	v.figure("scheduled_in", scheduled)
	v.figure("pending_at_kill", pendingDue)
	v.figure("killed_at", kill.Sub(start))
	v.figure("served_again_min", servedMin)
	v.figure("without_owner_max", servedMax)
	if !servedAll {
		v.problem("a shard of %s had no other owner a minute after the kill", name)
	}
	f := measureFailover(before, name, kill, r.ledger.expected(), r.ledger.deliveries())
	// The bound is the definition's; every timer is checked against it,
	// the victim's and the survivors'.
	f.addTo(v, name)
	bound := c.opts.LeaseTTL + ownerKillBound
	if late := time.Duration(v.LatenessMaxMS) * time.Millisecond; late > bound {
		v.problem("a timer fired %v after its due time, beyond lease TTL + %v = %v (%d of the survivors' shards changed epoch after the kill too)",
			late, ownerKillBound, bound, f.OthersMoved)
	}
	if pendingDue < w.cfg.Timers {
		r.logf("only %d timers pending at the kill: scheduling took %v of the %v before the first due time", pendingDue, scheduled, w.cfg.FirstDue)
	}
	c.check(v)
	w.check(v)
}
