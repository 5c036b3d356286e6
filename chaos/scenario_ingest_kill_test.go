package chaos

import (
	"testing"
	"time"
)

func init() {
	register(scenario{
		name: "ingest-kill",
		about: "kill -9 a node while a client schedules 150,000 timers at full rate through every node: " +
			"every acknowledged timer fires, none early; calls cut by the kill are counted indeterminate",
		run: ingestKill,
	})
}

func ingestKill(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{})
	subscribe(r, c, subscribeConfig{})
	w := newWorkload(r, c, workloadConfig{Timers: 150_000, FirstDue: 3 * time.Second, Spread: 25 * time.Second,
		MinBatch: 100, MaxBatch: 400, FullRate: true, Concurrency: 16})
	victim := r.rng.IntN(c.size())
	killAfter := time.Second + time.Duration(r.rng.Int64N(int64(2*time.Second)))
	start := w.begin()
	before, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}
	if !sleepUntil(r.ctx, start.Add(killAfter)) {
		t.Fatalf("run ended before the kill")
	}
	name := c.node(victim).name
	acked := len(r.ledger.expected())
	kill := time.Now()
	c.kill9(victim)
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	ingest := time.Since(start)
	r.drain(w.lastDue(), 40*time.Second)
	v := r.judge()
	v.figure("killed_at", kill.Sub(start))
	v.figure("acknowledged_before_kill", acked)
	v.figure("ingest_took", ingest)
	measureFailover(before, name, kill, r.ledger.expected(), r.ledger.deliveries()).addTo(v, name)
	c.check(v)
	w.check(v)
}
