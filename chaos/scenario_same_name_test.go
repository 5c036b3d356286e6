package chaos

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func init() {
	register(scenario{
		name: "same-name",
		about: "a second timerd process started under a member's --node-name (another address) in a 3-node cluster under load, " +
			"then the first stopped (SIGSTOP) long enough to be declared dead and resumed: " +
			"no shard epoch fires from two processes, so no timer is fired by both under one epoch",
		run: sameName,
	})
}

// sameName starts node-0..2, then, once the load runs, a fourth process
// named like node-1 at its own addresses: the members ignore it while
// node-1 lives. Then node-1 is stopped past its leases and its death,
// so that the twin is taken for node-1 and takes its shards, and resumed,
// so that both run again under one name. Subscribers are local (each
// node's own shards, no relays), so the stream a delivery came on names
// the process that fired it.
func sameName(t *testing.T, r *run) {
	const twinOf = 1
	c := startCluster(r, clusterOptions{Name: func(i int) string {
		if i == 3 {
			return fmt.Sprintf("node-%d", twinOf)
		}
		return fmt.Sprintf("node-%d", i)
	}})
	subscribe(r, c, subscribeConfig{Local: true})
	w := newWorkload(r, c, workloadConfig{Timers: 40_000, FirstDue: time.Second, Spread: 25 * time.Second})
	start := w.begin()
	if !sleepUntil(r.ctx, start.Add(5*time.Second)) {
		t.Fatalf("run ended before the twin started")
	}
	twin := c.addServing()
	r.logf("started a second %s (pid %d) at gossip %s, gRPC %s", c.node(twin).name, c.node(twin).cmd.Process.Pid,
		c.node(twin).gossipAddr, c.node(twin).grpcAddr)
	if !sleepUntil(r.ctx, start.Add(10*time.Second)) {
		t.Fatalf("run ended before the stop")
	}
	c.stop(twinOf)
	stopped := time.Now()
	// Past the lease TTL, the failure detector's verdict and
	// Memberlist.DeadNodeReclaimTime (5s), after which the members take
	// the twin for node-1.
	if !sleepUntil(r.ctx, stopped.Add(c.opts.LeaseTTL+10*time.Second)) {
		t.Fatalf("run ended before the resume")
	}
	c.cont(twinOf)
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 40*time.Second)

	v := r.judge()
	served := make([]int, c.size())
	// (shard, epoch) -> the processes that fired under it; a lease's
	// epoch is one process's, so two is a shard held twice at once.
	holders := make(map[[2]uint64]map[int]bool)
	firedBy := make(map[string]map[int]bool) // timer -> the processes that fired it
	for _, d := range r.ledger.deliveries() {
		served[d.node]++
		k := [2]uint64{uint64(d.shard), d.epoch}
		if holders[k] == nil {
			holders[k] = make(map[int]bool)
		}
		holders[k][d.node] = true
		if firedBy[d.id] == nil {
			firedBy[d.id] = make(map[int]bool)
		}
		firedBy[d.id][d.node] = true
	}
	var parts []string
	for i, n := range served {
		parts = append(parts, fmt.Sprintf("%s#%d %s", c.node(i).name, i, itoa(n)))
	}
	v.figure("delivered_by", strings.Join(parts, ", "))
	v.figure("twin_running", c.node(twin).running())
	both := 0
	for _, by := range firedBy {
		if by[twinOf] && by[twin] {
			both++ // under two epochs, at least once allows it
		}
	}
	v.figure("fired_by_both_processes", both)
	var twinFirst time.Time
	for _, d := range r.ledger.deliveries() {
		if d.node == twin && (twinFirst.IsZero() || d.received.Before(twinFirst)) {
			twinFirst = d.received
		}
	}
	if !twinFirst.IsZero() {
		v.figure("twin_first_fired_after_stop", twinFirst.Sub(stopped))
	}
	shared := 0
	for k, by := range holders {
		if len(by) > 1 {
			shared++
			if shared <= 3 {
				v.problem("shard %d epoch %d fired from %d processes: %v", k[0], k[1], len(by), by)
			}
		}
	}
	v.figure("epochs_shared", shared)
	if !c.node(twin).running() {
		// Refusing the twin is a fine answer too; say so.
		r.logf("the second %s exited: %v\n%s", c.node(twin).name, c.node(twin).exitState(), c.node(twin).logTail())
		c.setDown(twin, "refused")
	} else {
		r.logf("the second %s, log tail:\n%s", c.node(twin).name, c.node(twin).logTail())
	}
	c.check(v)
	w.check(v)
}
