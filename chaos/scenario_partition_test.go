package chaos

import (
	"context"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/internal/redistest"
)

// Scenarios partition and partition-long cut a cluster of five nodes in
// two, two nodes on one side and three on the other, while timers are
// scheduled and delivered, and then heal the cut. The cut is between the
// nodes only (network namespaces, see netLab): every node still reaches
// Redis, and the test process still reaches every node, as clients on
// both sides would.
//
// Both sides declare the other dead and place every shard on their own
// members, so each side wants the other's shards; but the leases are in
// the one Redis both still reach, and the nodes holding them keep
// renewing them, so a shard moves only between two nodes of one side
// (the ring of three or two members places some shards differently than
// the ring of five). Fencing by epoch is what keeps every shard with one
// owner: the checks are that nothing acknowledged is lost, that no two
// epochs of one shard ever fired at overlapping times (an old owner
// firing after a new one began), and that every node sees the full
// membership again within partitionHealBound of the heal. partition-long
// holds the cut for longer than memberlist's gossip to the dead
// (GossipToTheDeadTime, 30s in timerd's DefaultConfig), after which the
// two sides have forgotten each other and only the node's re-join of its
// seeds (--rejoin-interval, 10s) brings them back together.
const (
	partitionNodes = 5
	// partitionHealBound is how soon after the heal every node must see
	// every member again.
	partitionHealBound = 15 * time.Second
	// partitionWatchEvery is how often the watcher asks each node for its
	// members and its own shards; it is the precision of the figures
	// taken from what the nodes report.
	partitionWatchEvery = 100 * time.Millisecond
	// partitionLongEnv runs partition-long in a run of every scenario:
	// it takes over a minute, beyond the default set's budget.
	partitionLongEnv = "TIMERD_CHAOS_LONG"
)

func init() {
	register(scenario{
		name: "partition",
		about: "cut five nodes 2|3 for 8-12s under load (iptables in network namespaces; Redis reachable from both sides), then heal: " +
			"nothing lost, no two epochs of a shard firing at once, full membership within 15s of the heal",
		// Held for 8s at least: each side takes 4-8s to declare the other
		// dead, and only then does it move shards.
		run: func(t *testing.T, r *run) {
			partitionRun(t, r, 8*time.Second+time.Duration(r.rng.Int64N(int64(4*time.Second))))
		},
	})
	register(scenario{
		name: "partition-long",
		about: "as partition, with the cut held longer than memberlist's gossip to the dead (30s), so that only the re-join of the seeds heals it; " +
			"runs when named in TIMERD_CHAOS_SCENARIOS, with TIMERD_CHAOS_SEEDS > 1 or with TIMERD_CHAOS_LONG=1",
		run: func(t *testing.T, r *run) {
			if !longRunsWanted() {
				t.Skipf("takes over a minute: set %s=1, name it in TIMERD_CHAOS_SCENARIOS or run more seeds to run it", partitionLongEnv)
			}
			window := cluster.DefaultConfig().Memberlist.GossipToTheDeadTime
			partitionRun(t, r, window+5*time.Second+time.Duration(r.rng.Int64N(int64(3*time.Second))))
		},
	})
}

// longRunsWanted reports whether a scenario too long for the default set
// should run: asked for by TIMERD_CHAOS_LONG=1, by name in
// TIMERD_CHAOS_SCENARIOS, or with several seeds.
func longRunsWanted() bool {
	if os.Getenv(partitionLongEnv) == "1" || os.Getenv("TIMERD_CHAOS_SCENARIOS") != "" {
		return true
	}
	n, err := strconv.Atoi(os.Getenv("TIMERD_CHAOS_SEEDS"))
	return err == nil && n > 1
}

// partitionRun runs the partition scenario with the cut held for hold.
func partitionRun(t *testing.T, r *run, hold time.Duration) {
	lab := newNetLab(t, partitionNodes)
	bridge := lab.bridgeIP()
	c := startCluster(r, clusterOptions{
		Nodes: partitionNodes,
		// A fresh namespace has every port free.
		Addrs: func(i int) (string, string) {
			return net.JoinHostPort(lab.ip(i), "7946"), net.JoinHostPort(lab.ip(i), "7000")
		},
		Command: func(i int, argv []string) []string { return append(lab.wrap(i), argv...) },
		// Redis listens on the bridge too, where every namespace reaches
		// it; its readiness probes keep using 127.0.0.1.
		RedisOptions: []redistest.Option{redistest.Args("--bind", "127.0.0.1", bridge)},
		RedisURL: func(addr string) string {
			_, port, _ := net.SplitHostPort(addr)
			return redisURL(net.JoinHostPort(bridge, port))
		},
	})
	subscribe(r, c, subscribeConfig{})

	perm := r.rng.Perm(partitionNodes)
	minority, majority := perm[:2], perm[2:]
	slices.Sort(minority)
	slices.Sort(majority)
	cutAt := 3*time.Second + time.Duration(r.rng.Int64N(int64(2*time.Second)))
	// Timers come due from before the cut until 8s after the heal, so
	// some are pending on every node throughout.
	w := newWorkload(r, c, workloadConfig{Timers: 30_000, Spread: cutAt + hold + 8*time.Second})
	watch := watchCluster(r, c)
	start := w.begin()
	r.logf("the cut at +%v: %v | %v, held %v", cutAt.Round(time.Millisecond), minority, majority, hold.Round(time.Millisecond))

	if !sleepUntil(r.ctx, start.Add(cutAt)) {
		t.Fatal("the run's bound ended before the cut")
	}
	if err := lab.partition(minority, majority); err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	r.logf("cut %v | %v", minority, majority)
	if !sleepUntil(r.ctx, cut.Add(hold)) {
		t.Fatal("the run's bound ended before the heal")
	}
	if err := lab.heal(); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	r.logf("healed after %v", healed.Sub(cut).Round(time.Millisecond))
	// The bound of the check is partitionHealBound; the wait goes on a
	// little longer, so that a slow heal is measured, not only flagged.
	watch.waitFull(healed, 4*partitionHealBound)
	c.waitStable()
	stable := time.Since(healed)
	if !w.wait() {
		t.Fatal("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 40*time.Second)
	watch.stop()

	v := r.judge()
	v.figure("cut", fmt.Sprintf("%v|%v", minority, majority))
	v.figure("held", hold)
	sides := map[int]int{}
	for _, i := range minority {
		sides[i] = len(minority)
	}
	for _, i := range majority {
		sides[i] = len(majority)
	}
	if split, ok := watch.splitSeen(cut, healed, sides); ok {
		v.figure("split_seen", split.Sub(cut))
	} else {
		v.figure("split_seen", "not before the heal")
	}
	full, ok := watch.fullAt(healed)
	switch {
	case !ok:
		v.problem("some node did not see all %d members within %v of the heal", partitionNodes, 4*partitionHealBound)
	case full.Sub(healed) > partitionHealBound:
		v.figure("membership_healed", full.Sub(healed))
		v.problem("full membership %v after the heal, beyond %v", full.Sub(healed).Round(time.Millisecond), partitionHealBound)
	default:
		v.figure("membership_healed", full.Sub(healed))
	}
	v.figure("stable_after_heal", stable)
	o := watch.ownership(cut, time.Now())
	v.figure("shards_moved", o.moved)
	v.figure("without_owner_max", o.gapMax)
	v.figure("without_owner_total", o.gapTotal)
	// The verdict's lateness counts from the due time, so it includes
	// how long a Schedule took to be acknowledged while its owner was
	// across the cut; this counts from the later of the two.
	p99, worst := lateAfterAck(r.ledger.expected(), r.ledger.deliveries())
	v.figure("after_ack_p99", p99)
	v.figure("after_ack_max", worst)
	for _, p := range overlappingEpochs(r.ledger.deliveries()) {
		v.problem("%s", p)
	}
	c.check(v)
	w.check(v)
}

// clusterWatch asks every node of a cluster, every partitionWatchEvery,
// for the members it sees and the shards it serves (its own part of the
// shard map, which needs no peer), and keeps every answer.
type clusterWatch struct {
	r      *run
	c      *testCluster
	cancel context.CancelFunc
	wg     sync.WaitGroup

	// mu guards samples.
	mu      sync.Mutex
	samples [][]watchSample // by node, in the order asked
}

// watchSample is one node's answer: Members and a local ShardMap, asked
// at sent and answered by answered.
type watchSample struct {
	sent, answered time.Time
	// members is how many members the node sees alive and active.
	members int
	// serving maps each shard the node serves to its epoch.
	serving map[uint32]uint64
}

// watchCluster starts watching every node of c; stop ends it.
func watchCluster(r *run, c *testCluster) *clusterWatch {
	ctx, cancel := context.WithCancel(r.ctx)
	w := &clusterWatch{r: r, c: c, cancel: cancel, samples: make([][]watchSample, c.size())}
	for i := range c.size() {
		w.wg.Go(func() {
			tick := time.NewTicker(partitionWatchEvery)
			defer tick.Stop()
			for {
				if s, ok := w.ask(ctx, i); ok {
					w.mu.Lock()
					w.samples[i] = append(w.samples[i], s)
					w.mu.Unlock()
				}
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		})
	}
	r.t.Cleanup(w.stop)
	return w
}

// stop ends the watch and waits for it; it is safe to call twice.
func (w *clusterWatch) stop() {
	w.cancel()
	w.wg.Wait()
}

// ask asks node i once; a node that does not answer within a second
// gives no sample.
func (w *clusterWatch) ask(ctx context.Context, i int) (watchSample, bool) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	s := watchSample{sent: time.Now(), serving: make(map[uint32]uint64)}
	cs := pb.NewClusterServiceClient(w.c.conn(i))
	mr, err := cs.Members(ctx, &pb.MembersRequest{})
	if err != nil {
		return s, false
	}
	for _, m := range mr.GetMembers() {
		if m.GetState() == pb.MemberState_MEMBER_STATE_ALIVE && m.GetNodeState() == pb.NodeState_NODE_STATE_ACTIVE {
			s.members++
		}
	}
	sm, err := cs.ShardMap(ctx, &pb.ShardMapRequest{Local: true})
	if err != nil {
		return s, false
	}
	for _, o := range sm.GetShards() {
		if o.GetState() == pb.ShardState_SHARD_STATE_SERVING && o.GetOwner() != "" {
			s.serving[o.GetShard()] = o.GetEpoch()
		}
	}
	s.answered = time.Now()
	return s, true
}

// snapshot returns a copy of the samples.
func (w *clusterWatch) snapshot() [][]watchSample {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([][]watchSample, len(w.samples))
	for i, s := range w.samples {
		out[i] = slices.Clone(s)
	}
	return out
}

// firstAfter returns, for every node, the answer time of its first
// sample asked at or after since that ok accepts, and whether every node
// has one.
func (w *clusterWatch) firstAfter(since time.Time, ok func(i int, s watchSample) bool) (time.Time, bool) {
	var last time.Time
	for i, samples := range w.snapshot() {
		found := false
		for _, s := range samples {
			if !s.sent.Before(since) && ok(i, s) {
				found = true
				if s.answered.After(last) {
					last = s.answered
				}
				break
			}
		}
		if !found {
			return time.Time{}, false
		}
	}
	return last, true
}

// fullAt returns when every node had seen every member, after since.
func (w *clusterWatch) fullAt(since time.Time) (time.Time, bool) {
	return w.firstAfter(since, func(_ int, s watchSample) bool { return s.members == w.c.size() })
}

// waitFull waits until fullAt(since) holds, for at most bound.
func (w *clusterWatch) waitFull(since time.Time, bound time.Duration) {
	deadline := since.Add(bound)
	for time.Now().Before(deadline) {
		if _, ok := w.fullAt(since); ok {
			return
		}
		if !sleepUntil(w.r.ctx, time.Now().Add(partitionWatchEvery)) {
			return
		}
	}
}

// splitSeen returns when every node had seen only the members of its own
// side (sides maps each node to its side's size), between cut and
// healed.
func (w *clusterWatch) splitSeen(cut, healed time.Time, sides map[int]int) (time.Time, bool) {
	t, ok := w.firstAfter(cut, func(i int, s watchSample) bool { return s.members == sides[i] && s.sent.Before(healed) })
	return t, ok && t.Before(healed)
}

// ownershipFigures are what the watch saw of the shards' owners.
type ownershipFigures struct {
	// moved counts the shards whose serving node changed at least once.
	moved int
	// gapMax is the longest time a shard was served by no node, and
	// gapTotal the sum over every shard: a shard between its release
	// by one node and its acquire by the next.
	gapMax, gapTotal time.Duration
}

// ownership reads from the samples, between from and to, which node
// served each shard.
func (w *clusterWatch) ownership(from, to time.Time) ownershipFigures {
	return ownershipOf(w.snapshot(), uint32(w.c.opts.Shards), from, to)
}

// ownershipOf reads from samples (by node, in the order answered), between
// from and to, which node served each of shards, in steps of half the
// watch's interval: at each step a node is taken to serve what its latest
// answer said.
func ownershipOf(samples [][]watchSample, shards uint32, from, to time.Time) ownershipFigures {
	var f ownershipFigures
	next := make([]int, len(samples))                 // per node, the next sample to apply
	latest := make([]map[uint32]uint64, len(samples)) // per node, its latest answer
	owner := make(map[uint32]int)                     // shard -> the node last seen serving it
	movedSet := make(map[uint32]bool)                 // shards whose owner changed
	gapStart := make(map[uint32]time.Time)
	for t := from; !t.After(to); t = t.Add(partitionWatchEvery / 2) {
		for i, ss := range samples {
			for next[i] < len(ss) && !ss[next[i]].answered.After(t) {
				latest[i] = ss[next[i]].serving
				next[i]++
			}
		}
		for s := range shards {
			server := -1
			for i, m := range latest {
				if _, ok := m[s]; ok {
					server = i
					break
				}
			}
			if server < 0 {
				if _, open := gapStart[s]; !open {
					gapStart[s] = t
				}
				continue
			}
			if g, open := gapStart[s]; open {
				d := t.Sub(g)
				f.gapTotal += d
				f.gapMax = max(f.gapMax, d)
				delete(gapStart, s)
			}
			if prev, seen := owner[s]; seen && prev != server {
				movedSet[s] = true
			}
			owner[s] = server
		}
	}
	for _, g := range gapStart { // still without an owner at the end
		d := to.Sub(g)
		f.gapTotal += d
		f.gapMax = max(f.gapMax, d)
	}
	f.moved = len(movedSet)
	return f
}

// lateAfterAck returns the 99th percentile and the largest lateness of the
// first delivery of each expected timer, counted from its due time or,
// when it was acknowledged later, from its acknowledgement.
func lateAfterAck(exp map[string]expectation, got []delivery) (p99, worst time.Duration) {
	first := make(map[string]time.Time, len(exp))
	for _, d := range got {
		if f, ok := first[d.id]; !ok || d.received.Before(f) {
			first[d.id] = d.received
		}
	}
	var late []time.Duration
	for id, e := range exp {
		if f, ok := first[id]; ok {
			from := e.due
			if e.ackedAt.After(from) {
				from = e.ackedAt
			}
			late = append(late, max(0, f.Sub(from)))
		}
	}
	if len(late) == 0 {
		return 0, 0
	}
	slices.Sort(late)
	return percentile(late, 99), late[len(late)-1]
}

// overlappingEpochs checks, shard by shard, that every delivery fired
// under an epoch was fired before every delivery of a higher epoch: an
// owner stops firing before its lease can lapse, and the next owner
// acquires only after that, so two epochs of one shard never fire at
// overlapping times. It returns what broke that, at most maxExamples.
// The fired times are the nodes' wall clocks, one host's clock here.
func overlappingEpochs(got []delivery) []string {
	type span struct{ first, last delivery }
	spans := make(map[uint32]map[uint64]*span)
	for _, d := range got {
		byEpoch := spans[d.shard]
		if byEpoch == nil {
			byEpoch = make(map[uint64]*span)
			spans[d.shard] = byEpoch
		}
		sp := byEpoch[d.epoch]
		if sp == nil {
			byEpoch[d.epoch] = &span{d, d}
			continue
		}
		if d.fired.Before(sp.first.fired) {
			sp.first = d
		}
		if d.fired.After(sp.last.fired) {
			sp.last = d
		}
	}
	var problems []string
	shards := make([]uint32, 0, len(spans))
	for s := range spans {
		shards = append(shards, s)
	}
	slices.Sort(shards)
	for _, s := range shards {
		epochs := make([]uint64, 0, len(spans[s]))
		for e := range spans[s] {
			epochs = append(epochs, e)
		}
		slices.Sort(epochs)
		var latest *span // of the lower epochs, the one that fired last
		var latestEpoch uint64
		for _, e := range epochs {
			sp := spans[s][e]
			if latest != nil && !latest.last.fired.Before(sp.first.fired) && len(problems) < maxExamples {
				problems = append(problems, fmt.Sprintf("shard %d: epoch %d fired %s at %s, after epoch %d fired %s at %s",
					s, latestEpoch, latest.last.id, latest.last.fired.Format(time.StampMicro),
					e, sp.first.id, sp.first.fired.Format(time.StampMicro)))
			}
			if latest == nil || sp.last.fired.After(latest.last.fired) {
				latest, latestEpoch = sp, e
			}
		}
	}
	return problems
}

func TestOverlappingEpochs(t *testing.T) {
	at := func(ms int) time.Time { return time.UnixMilli(int64(1_000_000 + ms)) }
	d := func(shard uint32, epoch uint64, ms int) delivery {
		return delivery{id: fmt.Sprintf("t%d", ms), shard: shard, epoch: epoch, fired: at(ms)}
	}
	for _, tc := range []struct {
		name string
		got  []delivery
		want int
	}{
		{"none", nil, 0},
		{"one epoch", []delivery{d(1, 5, 0), d(1, 5, 100), d(1, 5, 50)}, 0},
		{"epochs in turn", []delivery{d(1, 5, 0), d(1, 5, 100), d(1, 6, 101), d(1, 7, 300), d(1, 6, 200)}, 0},
		{"shards apart", []delivery{d(1, 6, 0), d(2, 5, 100)}, 0},
		{"old epoch after new", []delivery{d(1, 5, 0), d(1, 6, 100), d(1, 5, 150)}, 1},
		{"same instant", []delivery{d(1, 5, 100), d(1, 6, 100)}, 1},
		{"an epoch two back", []delivery{d(1, 5, 500), d(1, 6, 100), d(1, 7, 200)}, 2},
		{"in any order", []delivery{d(1, 6, 100), d(1, 5, 150), d(1, 5, 0)}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := overlappingEpochs(tc.got); len(got) != tc.want {
				t.Errorf("overlappingEpochs = %d problems %q, want %d", len(got), got, tc.want)
			}
		})
	}
}

func TestOwnershipOf(t *testing.T) {
	base := time.Unix(1_000_000, 0)
	at := func(ms int) time.Time { return base.Add(time.Duration(ms) * time.Millisecond) }
	s := func(ms int, shards ...uint32) watchSample {
		m := make(map[uint32]uint64)
		for _, sh := range shards {
			m[sh] = 1
		}
		return watchSample{sent: at(ms - 10), answered: at(ms), serving: m}
	}
	for _, tc := range []struct {
		name    string
		samples [][]watchSample
		want    ownershipFigures
	}{
		{"steady", [][]watchSample{{s(0, 0), s(500, 0), s(1000, 0)}, {s(0, 1), s(1000, 1)}},
			ownershipFigures{}},
		{"handed over", [][]watchSample{{s(0, 0, 1), s(200, 1)}, {s(0), s(600, 0)}},
			ownershipFigures{moved: 1, gapMax: 400 * time.Millisecond, gapTotal: 400 * time.Millisecond}},
		{"never served again", [][]watchSample{{s(0, 0, 1), s(500, 1)}},
			ownershipFigures{gapMax: 500 * time.Millisecond, gapTotal: 500 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ownershipOf(tc.samples, 2, at(0), at(1000)); got != tc.want {
				t.Errorf("ownershipOf = %+v, want %+v", got, tc.want)
			}
		})
	}
}
