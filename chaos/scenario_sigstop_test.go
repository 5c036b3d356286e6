package chaos

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/timerd/timerd/internal/scrape"
)

// sigstopPause is how long scenario sigstop keeps the owner stopped, in
// lease TTLs: past its lease, past memberlist's verdict that it died (2
// to 4s) and past the survivors' takeover.
const sigstopPause = 3

func init() {
	register(scenario{
		name: "sigstop",
		about: "SIGSTOP the owner of the most shards for 3x its lease under steady load, then SIGCONT: the survivors take " +
			"its shards and fire its timers; the resumed node's writes are fenced, and it dispatches nothing fired after " +
			"its old lease's validity; no two epochs of a shard may dispatch at once (the nodes' own logs)",
		run: sigstop,
	})
}

func sigstop(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{NodeArgs: debugLog})
	subscribe(r, c, subscribeConfig{})
	// Timers due throughout the run, sent ahead of their due times as
	// clients do, so that the stopped owner has timers coming due, in
	// flight and on their way to it.
	w := newWorkload(r, c, workloadConfig{Timers: 30_000, FirstDue: time.Second, Spread: 24 * time.Second})
	start := w.begin()
	stopOffset := 6*time.Second + time.Duration(r.rng.Int64N(int64(3*time.Second)))
	if !sleepUntil(r.ctx, start.Add(stopOffset)) {
		t.Fatal("run timed out before the stop")
	}
	before := shardMapRetried(t, r, c)
	victim := c.mostShards(before)
	name := c.node(victim).name
	shards := shardsOf(before, name)
	var survivors []*grpc.ClientConn
	for _, i := range c.up() {
		if i != victim {
			survivors = append(survivors, c.conn(i))
		}
	}
	pause := sigstopPause * c.opts.LeaseTTL
	stopAt := time.Now()
	c.stop(victim)
	servedMin, servedMax, servedAll := servedAgain(r.ctx, survivors, shards, stopAt, pause)
	if !sleepUntil(r.ctx, stopAt.Add(pause)) {
		t.Fatal("run timed out while the owner was stopped")
	}
	contAt := time.Now()
	c.cont(victim)
	c.waitStable() // the victim back, with the shards the ring gives it
	r.logf("%s stable again %v after SIGCONT", name, time.Since(contAt).Round(time.Millisecond))
	if !w.wait() {
		t.Fatal("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 40*time.Second)

	v := r.judge()
	v.figure("stopped_at", stopAt.Sub(start))
	v.figure("stopped_for", contAt.Sub(stopAt))
	measureFailover(before, name, stopAt, r.ledger.expected(), r.ledger.deliveries()).addTo(v, name)
	v.figure("served_again_min", servedMin)
	v.figure("served_again_max", servedMax)
	if !servedAll {
		v.problem("the survivors did not serve every shard of %s within the %v it was stopped", name, pause)
	}

	hs := clusterHoldings(t, c, nil)
	checkHoldings(v, hs, c.opts.Shards)
	// The victim's holdings at the stop, and what ended them.
	old := make(map[uint32]holding, len(shards))
	for _, h := range hs {
		if h.node == name && int(h.shard) < len(before) && before[h.shard] == (shardOwner{name, h.epoch}) {
			old[h.shard] = h
		}
	}
	gaps, fencedStops := takeoverGaps(hs, old, stopAt, contAt)
	v.figure("unowned_gap_min", gaps[0])
	v.figure("unowned_gap_max", gaps[1])
	v.figure("victim_stops_fenced", fencedStops)
	validity := make(map[uint32]time.Time, len(shards))
	for _, s := range shards {
		h, ok := old[s]
		switch {
		case !ok:
			v.problem("shard %d: %s's log has no holding under epoch %d, which the shard map gave it", s, name, before[s].epoch)
			validity[s] = stopAt.Add(c.opts.LeaseTTL)
		case !h.stopped:
			v.problem("shard %d: %s never logged that it stopped firing under epoch %d after SIGCONT", s, name, h.epoch)
			validity[s] = stopAt.Add(c.opts.LeaseTTL)
		default:
			validity[s] = h.until
			if h.until.After(stopAt.Add(c.opts.LeaseTTL)) {
				v.problem("shard %d: %s's lease under epoch %d was valid until %v after its SIGSTOP, beyond the lease TTL %v",
					s, name, h.epoch, h.until.Sub(stopAt), c.opts.LeaseTTL)
			}
		}
	}
	oldEpochs := make(map[uint32]uint64, len(shards))
	for _, s := range shards {
		oldEpochs[s] = before[s].epoch
	}
	late, stale := pastLeaseDeliveries(r.ledger.deliveries(), oldEpochs, validity)
	v.figure("old_epoch_after_takeover", stale)
	for _, d := range late {
		v.problem("timer %s: %s delivered it under epoch %d, fired %v after its lease's validity, after the shard's new owner had delivered under a higher epoch",
			d.id, name, d.epoch, d.fired.Sub(validity[d.shard]))
	}

	held, heldMax := heldByPaused(r.ledger.deliveries(), victim, stopAt, contAt)
	v.figure("held_by_paused_relay", held)
	v.figure("held_by_paused_relay_max", heldMax)

	// The resumed node's own count of the writes the store fenced, and of
	// the shards that stopped on their own.
	addr := c.node(victim).httpAddr
	for _, m := range []struct{ figure, metric string }{
		{"victim_fenced_batches", "timerd_store_commit_fenced_total"},
		{"victim_shards_lost", "timerd_shards_lost_total"},
	} {
		ctx, cancel := context.WithTimeout(r.ctx, 5*time.Second)
		n, err := scrape.Sum(ctx, addr, m.metric)
		cancel()
		if err != nil {
			v.problem("%s: %v", name, err)
			continue
		}
		v.figure(m.figure, int(n))
	}
	c.check(v)
	w.check(v)
}

// shardMapRetried returns c's shard map, asking again for up to
// stableTimeout while no node answers in time: a loaded machine may keep
// a node from answering within a call's 5s.
func shardMapRetried(t *testing.T, r *run, c *testCluster) []shardOwner {
	t.Helper()
	deadline := time.Now().Add(stableTimeout)
	for {
		owners, err := c.shardMap()
		if err == nil {
			return owners
		}
		if time.Now().After(deadline) || !sleepUntil(r.ctx, time.Now().Add(100*time.Millisecond)) {
			t.Fatalf("shard map: %v", err)
		}
		r.logf("shard map: %v; asking again", err)
	}
}

// debugLog makes a node log at debug level, where a shard logs when it
// starts and stops firing (readHoldings).
func debugLog(int) []string { return []string{"--log-level", "debug"} }

// checkHoldings adds to v a problem for every overlap of holdings, and
// for every shard of shards that no log shows held: a node that logs no
// holdings (not at debug level, or a message renamed) must not pass the
// check by having nothing to check.
func checkHoldings(v *verdict, hs []holding, shards int) {
	held := make(map[uint32]bool)
	for _, h := range hs {
		if int(h.shard) < shards {
			held[h.shard] = true
		}
	}
	if n := shards - len(held); n > 0 {
		v.problem("%d of %d shards have no holding in the nodes' logs (are they at debug level?)", n, shards)
	}
	for _, p := range overlappingHoldings(hs) {
		v.problem("%s", p)
	}
}

// clusterHoldings reads the holdings in the log of every process of c;
// died says when a process killed without a chance to log ended, by node
// index.
func clusterHoldings(t *testing.T, c *testCluster, died map[int]time.Time) []holding {
	t.Helper()
	var hs []holding
	for i, n := range c.all() {
		got, err := readHoldings(n.name, n.logPath, died[i])
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, got...)
	}
	return hs
}

// takeoverGaps returns, over the shards of old (a stopped node's
// holdings at its stop), the shortest and longest time from the end of
// its holding to the start of the next holding of the shard by another
// node between stop and cont; and how many of the old holdings ended
// with a fenced write or renewal, as their stop line says.
func takeoverGaps(hs []holding, old map[uint32]holding, stop, cont time.Time) (gaps [2]time.Duration, fenced int) {
	first := true
	for s, o := range old {
		if strings.Contains(o.cause, "fenced") {
			fenced++
		}
		var next time.Time
		for _, h := range hs {
			if h.shard == s && h.node != o.node && h.from.After(stop) && h.from.Before(cont) && (next.IsZero() || h.from.Before(next)) {
				next = h.from
			}
		}
		if next.IsZero() || o.until.IsZero() {
			continue
		}
		g := next.Sub(o.until)
		if first || g < gaps[0] {
			gaps[0] = g
		}
		if first || g > gaps[1] {
			gaps[1] = g
		}
		first = false
	}
	return gaps, fenced
}

// pastLeaseDeliveries returns the deliveries of the shards of old, under
// the epoch old gives them, that were fired after validity (when the
// holder's lease may have lapsed) and received after the shard's first
// delivery under a higher epoch: a paused owner dispatching past its
// lease while its successor fires. stale counts every delivery under the
// old epoch received after that first one, fired in time or not: the
// paused owner's deliveries that reached their subscriber only after it
// resumed, duplicates that at least once allows.
func pastLeaseDeliveries(got []delivery, old map[uint32]uint64, validity map[uint32]time.Time) (late []delivery, stale int) {
	newFirst := make(map[uint32]time.Time)
	for _, d := range got {
		if e, ok := old[d.shard]; ok && d.epoch > e {
			if t, ok := newFirst[d.shard]; !ok || d.received.Before(t) {
				newFirst[d.shard] = d.received
			}
		}
	}
	for _, d := range got {
		e, ok := old[d.shard]
		if !ok || d.epoch != e {
			continue
		}
		t, ok := newFirst[d.shard]
		if !ok || !d.received.After(t) {
			continue
		}
		stale++
		if d.fired.After(validity[d.shard]) {
			late = append(late, d)
		}
	}
	slices.SortFunc(late, func(a, b delivery) int { return a.received.Compare(b.received) })
	return late, stale
}

// heldByPaused counts the deliveries fired during a node's pause (from
// stop to cont) that reached their subscriber on that node's stream only
// after it resumed, and the longest of their waits from fired to
// received. Its stream takes deliveries of the other nodes' shards
// through its relays, whose sockets stay open while it is stopped: what
// a survivor hands to such a relay waits for the resume or the ack
// timeout.
func heldByPaused(got []delivery, node int, stop, cont time.Time) (n int, longest time.Duration) {
	for _, d := range got {
		if d.node == node && !d.fired.Before(stop) && d.fired.Before(cont) && !d.received.Before(cont) {
			n++
			longest = max(longest, d.received.Sub(d.fired))
		}
	}
	return n, longest
}
