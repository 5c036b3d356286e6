package chaos

import (
	"testing"
	"time"
)

// ownerKillBound is what scenario owner-kill allows a timer beyond its
// due time and the lease TTL: every acknowledged timer fires by due +
// lease TTL + ownerKillBound.
const ownerKillBound = 10 * time.Second

func init() {
	register(scenario{
		name: "owner-kill",
		about: "kill -9 the owner of the most shards while 100,000 acknowledged timers are pending over ~20s: " +
			"every one fires, none early, each by its due time + lease TTL + 10s",
		run: ownerKill,
	})
}

func ownerKill(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{})
	subscribe(r, c, subscribeConfig{})
	// Every timer is scheduled first, at full rate, due 10s to 30s after
	// the start; the kill comes once they all have an outcome, so every
	// one is pending at it.
	w := newWorkload(r, c, workloadConfig{Timers: 100_000, FirstDue: 10 * time.Second, Spread: 20 * time.Second,
		MinBatch: 200, MaxBatch: 500, FullRate: true, Concurrency: 8})
	start := w.begin()
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	scheduled := time.Since(start)
	before, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}
	victim := c.mostShards(before)
	name := c.node(victim).name
	survivor := c.up()[0]
	if survivor == victim {
		survivor = c.up()[1]
	}
	pendingDue := r.ledger.missing()
	kill := time.Now()
	c.kill9(victim)
	unowned := ownerless(r.ctx, c.conn(survivor), name, shardsOf(before, name), kill, time.Minute)

	r.drain(w.lastDue(), c.opts.LeaseTTL+ownerKillBound+5*time.Second)
	v := r.judge()
	v.figure("scheduled_in", scheduled)
	v.figure("pending_at_kill", pendingDue)
	v.figure("killed_at", kill.Sub(start))
	v.figure("without_owner_max", unowned)
	f := measureFailover(before, name, kill, r.ledger.expected(), r.ledger.deliveries())
	f.addTo(v, name)
	bound := c.opts.LeaseTTL + ownerKillBound
	if late := time.Duration(v.LatenessMaxMS) * time.Millisecond; late > bound {
		v.problem("a timer fired %v after its due time, beyond lease TTL + %v = %v", late, ownerKillBound, bound)
	}
	if pendingDue < 90_000 {
		r.logf("only %d timers pending at the kill: scheduling took %v of the %v before the first due time", pendingDue, scheduled, w.cfg.FirstDue)
	}
	c.check(v)
	w.check(v)
}
