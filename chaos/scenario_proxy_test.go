package chaos

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"

	"github.com/timerd/timerd/ring"
)

// The bounds scenario redis-proxy holds the nodes to.
const (
	// proxyRecoveryBound is how soon after a fault ends every node must
	// commit again and every shard with a timer due must deliver again.
	proxyRecoveryBound = 10 * time.Second
	// goroutineSlack is how many goroutines more than before the faults
	// a node may run once they are over and the load has drained: a
	// connection or a stream opened since, not one per failed call.
	goroutineSlack = 25
)

func init() {
	register(scenario{
		name: "redis-proxy",
		about: "a TCP fault proxy between every node and Redis: 200ms ± 50ms latency, then a blackhole longer than " +
			"a lease, then connection resets: no write answered OK while Redis is unreachable, no delivery from an owner " +
			"past its lease, every node commits and every shard delivers again within 10s of each fault's end, " +
			"no goroutines left behind",
		run: redisProxy,
	})
}

// proxyFault is one fault of scenario redis-proxy: a poison of the proxy
// from at (after the workload's start) for lasting, then a heal.
type proxyFault struct {
	name   string
	at     time.Duration
	lasts  time.Duration
	poison func() error
	// cut says nothing reaches Redis while it lasts.
	cut bool
}

func redisProxy(t *testing.T, r *run) {
	var p *toxicProxy
	c := startCluster(r, clusterOptions{RedisURL: func(addr string) string {
		p = startToxicProxy(t, "redis", addr)
		return redisURL(p.Addr())
	}})
	subs := subscribe(r, c, subscribeConfig{})
	before := c.goroutines(r.ctx)
	w := newWorkload(r, c, workloadConfig{Timers: 30_000, Spread: 30 * time.Second})
	jitter := func() time.Duration { return time.Duration(r.rng.Int64N(int64(time.Second))) }
	ttl := c.opts.LeaseTTL
	faults := []proxyFault{
		{name: "latency", at: 4*time.Second + jitter(), lasts: 4 * time.Second,
			poison: func() error { return p.latency(200*time.Millisecond, 50*time.Millisecond) }},
		{name: "blackhole", at: 10*time.Second + jitter(), lasts: ttl + 2*time.Second + jitter(), poison: p.blackhole, cut: true},
		{name: "reset", at: 18*time.Second + jitter(), lasts: 2 * time.Second,
			poison: func() error { return p.resetPeer(0) }, cut: true},
	}
	start := w.begin()
	type window struct {
		fault           proxyFault
		began, healed   time.Time
		commitsRecovery time.Duration
	}
	var windows []window
	for _, f := range faults {
		if !sleepUntil(r.ctx, start.Add(f.at)) {
			t.Fatalf("the run's bound passed before fault %s", f.name)
		}
		began := time.Now()
		if err := f.poison(); err != nil {
			t.Fatalf("fault %s: %v", f.name, err)
		}
		r.logf("fault %s on for %v", f.name, f.lasts)
		sleepUntil(r.ctx, began.Add(f.lasts))
		if err := p.heal(); err != nil {
			t.Fatalf("heal after %s: %v", f.name, err)
		}
		healed := time.Now()
		rec := probeCommits(r, c, f.name, 3*proxyRecoveryBound)
		r.logf("fault %s healed; every node committed again %v later", f.name, rec.Round(time.Millisecond))
		windows = append(windows, window{fault: f, began: began, healed: healed, commitsRecovery: rec})
	}

	if !w.wait() {
		t.Fatal("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 40*time.Second)
	after := c.goroutines(r.ctx)
	ops, got := r.ledger.snapshot()
	exp := r.ledger.expected()
	v := r.judge()
	for _, win := range windows {
		f := win.fault
		v.figure(f.name+"_lasted", win.healed.Sub(win.began))
		v.figure(f.name+"_heal_to_every_node_committing", win.commitsRecovery)
		if win.commitsRecovery > proxyRecoveryBound {
			v.problem("after %s, a node committed again only %v after the heal (bound %v)", f.name, win.commitsRecovery, proxyRecoveryBound)
		}
		resumed, stalled := deliveriesResumed(exp, got, uint32(c.opts.Shards), win.healed, proxyRecoveryBound)
		v.figure(f.name+"_heal_to_every_shard_delivering", resumed)
		addProblems(v, stalled)
		if f.cut {
			v.figure(f.name+"_writes_answered", answeredWithin(ops, win.began, win.healed))
			v.figure(f.name+"_fired_within_lease", len(firedWithin(got, win.began, win.began.Add(ttl))))
			addProblems(v, acksWhileDown(ops, win.began, win.healed))
			// An owner that cannot renew stops dispatching before its
			// lease can have lapsed: nothing fires between a lease TTL
			// after the cut and the heal.
			for _, d := range firedWithin(got, win.began.Add(ttl), win.healed) {
				v.problem("%s: shard %d fired %s under epoch %d at %s, more than the lease TTL %v after Redis was cut off at %s",
					f.name, d.shard, d.id, d.epoch, d.fired.Format(time.StampMilli), ttl, win.began.Format(time.StampMilli))
			}
		}
	}
	for i, n := range c.all() {
		v.figure(n.name+"_goroutines", fmt.Sprintf("%d before, %d after", before[i], after[i]))
		if after[i] > before[i]+goroutineSlack {
			v.problem("%s runs %d goroutines after the faults, %d before them: more than %d left behind", n.name, after[i], before[i], goroutineSlack)
		}
	}
	// A Redis fault need not break a subscriber's stream: more than one
	// per node says the node ended streams over it.
	v.figure("subscriber_streams_opened", fmt.Sprint(subs.opened()))
	addProblems(v, staleDeliveries(got))
	c.check(v)
	w.check(v)
}

// goroutines returns each node's goroutine count, the least of three
// reads 300ms apart, so that a call being served at one read does not
// count. A node that does not answer fails the test.
func (c *testCluster) goroutines(ctx context.Context) []int {
	nodes := c.all()
	counts := make([]int, len(nodes))
	for i, n := range nodes {
		counts[i] = -1
		for range 3 {
			g, err := goroutines(ctx, n)
			if err != nil {
				c.r.t.Fatalf("%s: %v", n.name, err)
			}
			if counts[i] < 0 || g < counts[i] {
				counts[i] = g
			}
			sleepUntil(ctx, time.Now().Add(300*time.Millisecond))
		}
	}
	return counts
}

// probeCommits measures how long every node takes to commit again: it
// sends every node, every 100ms, a Schedule of one timer on each shard
// (forwarded to the shard's owner, so every lane of every node writes
// one), and returns when each node has answered one such call OK for
// every item, or after bound. The probe's timers are due in an hour in a
// namespace of their own that no one subscribes to; each call names new
// ones, since an OK for a timer that exists already might need no write.
func probeCommits(r *run, c *testCluster, fault string, bound time.Duration) time.Duration {
	began := time.Now()
	shards := uint32(c.opts.Shards)
	var mu sync.Mutex
	var slowest time.Duration
	var wg sync.WaitGroup
	for _, i := range c.up() {
		wg.Go(func() {
			tc := pb.NewTimerServiceClient(c.conn(i))
			for attempt := 0; time.Since(began) < bound && r.ctx.Err() == nil; attempt++ {
				due := timestamppb.New(time.Now().Add(time.Hour))
				var specs []*pb.TimerSpec
				for _, id := range idPerShard(probeNamespace, fmt.Sprintf("probe-%s-%d-%d-", fault, i, attempt), shards) {
					specs = append(specs, &pb.TimerSpec{Namespace: probeNamespace, Id: id, Topic: probeNamespace,
						When: &pb.TimerSpec_DueTime{DueTime: due}})
				}
				ctx, cancel := context.WithTimeout(r.ctx, 2*time.Second)
				resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Timers: specs})
				cancel()
				if err == nil && allOK(resp.GetResults()) {
					mu.Lock()
					slowest = max(slowest, time.Since(began))
					mu.Unlock()
					return
				}
				sleepUntil(r.ctx, time.Now().Add(100*time.Millisecond))
			}
			mu.Lock()
			slowest = bound
			mu.Unlock()
		})
	}
	wg.Wait()
	return slowest
}

// probeNamespace is the namespace and topic of probeCommits' timers.
const probeNamespace = "probe"

// idPerShard returns one id per shard of ns, each prefix followed by a
// number, in shard order.
func idPerShard(ns, prefix string, shards uint32) []string {
	ids := make([]string, shards)
	left := int(shards)
	for k := 0; left > 0; k++ {
		id := fmt.Sprintf("%s%d", prefix, k)
		if s := ring.Shard(ns, id, shards); ids[s] == "" {
			ids[s] = id
			left--
		}
	}
	return ids
}

func allOK(results []*pb.ItemResult) bool {
	for _, res := range results {
		if res.GetCode() != 0 {
			return false
		}
	}
	return len(results) > 0
}

// deliveriesResumed returns how long after healed the last shard with a
// timer due within bound of it delivered again, and, as problems, the
// shards that had one due and delivered nothing within bound. A shard is
// known by hashing its timers' ids, as the nodes do.
func deliveriesResumed(exp map[string]expectation, got []delivery, shards uint32, healed time.Time, bound time.Duration) (time.Duration, []string) {
	due := make(map[uint32]bool) // shards with a timer due in [healed, healed+bound/2)
	for id, e := range exp {
		if !e.due.Before(healed) && e.due.Before(healed.Add(bound/2)) {
			due[ring.Shard(namespace, id, shards)] = true
		}
	}
	first := firstFiredPerShard(got, healed)
	var slowest time.Duration
	var problems []string
	for s := range due {
		t, ok := first[s]
		if !ok || t.Sub(healed) > bound {
			problems = append(problems, fmt.Sprintf("shard %d delivered nothing within %v of the heal at %s, with timers due", s, bound, healed.Format(time.StampMilli)))
			continue
		}
		slowest = max(slowest, t.Sub(healed))
	}
	return slowest, problems
}
