package client_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/ring"
)

// clusterShards is the shard count of clustertest's clusters.
const clusterShards = 32

const forwardedMetric = "timerd_forwarded_items_total"

// scheduleAll schedules timers through c in batches of 1,000 and fails
// the test on any item that does not succeed. It returns the largest
// number of attempts an item took.
func scheduleAll(t *testing.T, ctx context.Context, c *client.Client, timers []client.Timer) int {
	t.Helper()
	most := 0
	for start := 0; start < len(timers); start += 1000 {
		res, err := c.ScheduleBatch(ctx, timers[start:min(len(timers), start+1000)])
		if err != nil {
			t.Fatalf("ScheduleBatch: %v", err)
		}
		for _, r := range res {
			if r.Err != nil {
				t.Fatalf("schedule %s: %v after %d attempts", r.ID, r.Err, r.Attempts)
			}
			most = max(most, r.Attempts)
		}
	}
	return most
}

// spread returns n timers of topic named prefix-0 .. prefix-(n-1), due
// spread evenly over [from, from+over).
func spread(prefix, topic string, n int, from time.Time, over time.Duration) []client.Timer {
	timers := make([]client.Timer, n)
	for i := range timers {
		timers[i] = client.Timer{ID: fmt.Sprintf("%s-%d", prefix, i), Topic: topic, Due: from.Add(over * time.Duration(i) / time.Duration(n))}
	}
	return timers
}

// TestClusterRoutesToOwners: a client made with one seed sends every
// item straight to the node that owns its shard, so no node forwards
// anything; the same timers sent over plain gRPC to one node are
// forwarded, so the check can fail.
func TestClusterRoutesToOwners(t *testing.T) {
	cl := clustertest.Start(t, 3)
	ctx := testCtx(t)
	c := newClient(t, cl.Node(0).GRPCAddr())

	const n = 5000
	timers := spread("r", "r", n, farDue, time.Hour)
	shards := map[uint32]bool{}
	for _, tm := range timers {
		shards[ring.Shard(client.DefaultNamespace, tm.ID, clusterShards)] = true
	}
	if len(shards) != clusterShards {
		t.Fatalf("the timers cover %d shards of %d", len(shards), clusterShards)
	}
	began := time.Now()
	scheduleAll(t, ctx, c, timers)
	took := time.Since(began)

	// Get, Reschedule and Cancel go to the owners too.
	ids := make([]string, 0, n/10)
	moves := make([]client.Move, 0, n/10)
	for i := 0; i < n; i += 10 {
		ids = append(ids, timers[i].ID)
		moves = append(moves, client.Move{ID: timers[i].ID, Due: farDue.Add(2 * time.Hour)})
	}
	for _, id := range ids[:100] {
		if _, err := c.Get(ctx, "", id); err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
	}
	res, err := c.RescheduleBatch(ctx, "", moves)
	if err != nil {
		t.Fatal(err)
	}
	res2, err := c.Cancel(ctx, "", ids...)
	if err != nil {
		t.Fatal(err)
	}
	for i := range res {
		if res[i].Err != nil || res2[i].Err != nil || res[i].ID != ids[i] || res2[i].ID != ids[i] {
			t.Fatalf("item %d: reschedule %+v, cancel %+v", i, res[i], res2[i])
		}
	}
	// A replay of named timers goes to their owners: these are pending,
	// not dead letters, or unknown.
	replay := []string{timers[1].ID, "never-scheduled", timers[2].ID, timers[3].ID}
	rr, err := c.ReplayDeadLetters(ctx, client.Replay{IDs: replay})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rr.Results {
		want := client.ErrNotDead
		if i == 1 {
			want = client.ErrNotFound
		}
		if r.ID != replay[i] || !errors.Is(r.Err, want) {
			t.Fatalf("replay item %d = %+v; want %s: %v", i, r, replay[i], want)
		}
	}
	if fw := cl.MetricSum(forwardedMetric); fw != 0 {
		t.Fatalf("the nodes forwarded %v items of the client's calls; want 0", fw)
	}
	t.Logf("%d timers on %d shards of 3 nodes scheduled in %v through a client given one seed; 100 Gets, %d moves, %d cancels, a replay; 0 forwarded",
		n, len(shards), took, len(moves), len(ids))

	// The same through one node over plain gRPC: about two thirds are
	// forwarded.
	conn, err := grpc.NewClient(cl.Node(0).GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tc := timerdv1.NewTimerServiceClient(conn)
	for start := 0; start < n; start += 1000 {
		req := &timerdv1.ScheduleRequest{}
		for i := start; i < start+1000; i++ {
			req.Timers = append(req.Timers, &timerdv1.TimerSpec{Id: fmt.Sprint("raw-", i), Topic: "r",
				When: &timerdv1.TimerSpec_DueTime{DueTime: timestamppb.New(farDue)}})
		}
		resp, err := tc.Schedule(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			if codes.Code(r.GetCode()) != codes.OK {
				t.Fatalf("raw schedule %s: %v", r.GetId(), r.GetMessage())
			}
		}
	}
	fw := cl.MetricSum(forwardedMetric)
	if fw == 0 {
		t.Fatal("plain gRPC to one node: nothing forwarded; the check above proves nothing")
	}
	t.Logf("the same %d timers over plain gRPC to one node: %v forwarded", n, fw)
}

// recorder records the deliveries a Subscribe handler gets.
type recorder struct {
	mu  sync.Mutex
	got map[string][]recorded
}

type recorded struct {
	at time.Time
	d  client.Delivery
}

func newRecorder() *recorder { return &recorder{got: make(map[string][]recorded)} }

func (r *recorder) handle(_ context.Context, d *client.Delivery) error {
	now := time.Now()
	r.mu.Lock()
	r.got[d.ID] = append(r.got[d.ID], recorded{now, *d})
	r.mu.Unlock()
	return nil
}

// wait waits until every timer has been delivered, at most d.
func (r *recorder) wait(t *testing.T, timers []client.Timer, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		r.mu.Lock()
		missing := 0
		for _, tm := range timers {
			if len(r.got[tm.ID]) == 0 {
				missing++
			}
		}
		r.mu.Unlock()
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d timers not delivered within %v", missing, len(timers), d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// check fails the test on a timer of timers delivered before its due
// time, and returns those delivered more than once, by shard.
func (r *recorder) check(t *testing.T, timers []client.Timer) (dups map[uint32]int, maxLate time.Duration) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	dups = map[uint32]int{}
	for _, tm := range timers {
		ds := r.got[tm.ID]
		for _, d := range ds {
			// The server keeps whole milliseconds, rounding up.
			if d.at.Before(tm.Due.Truncate(time.Millisecond)) {
				t.Errorf("%s delivered %v early", tm.ID, tm.Due.Sub(d.at))
			}
		}
		if len(ds) > 1 {
			dups[ds[0].d.Shard] += len(ds) - 1
		}
		if len(ds) > 0 {
			maxLate = max(maxLate, ds[0].at.Sub(tm.Due))
		}
	}
	return dups, maxLate
}

// owners returns the node serving each shard, as the cluster's map says.
func owners(t *testing.T, ctx context.Context, c *client.Client) map[uint32]string {
	t.Helper()
	m, err := c.ShardMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[uint32]string, len(m.Shards))
	for _, s := range m.Shards {
		out[s.Shard] = s.Owner
	}
	return out
}

// TestClusterSubscribeFollowsMembers: the client's Subscribe receives the
// timers of every shard of a 3-node cluster, none early, and goes on when
// a fourth node joins (it subscribes to it) and when a node is killed.
// Acks go back to the node that delivered: no node ignores an ack, and
// duplicates come only from the shards that moved. It runs on one
// redis-server and on a Redis Cluster of three masters.
func TestClusterSubscribeFollowsMembers(t *testing.T) {
	for _, r := range clustertest.Redises {
		t.Run(r.String(), func(t *testing.T) { testClusterSubscribeFollowsMembers(t, r) })
	}
}

func testClusterSubscribeFollowsMembers(t *testing.T, r clustertest.Redis) {
	cl := clustertest.StartOn(t, r, 3)
	ctx := testCtx(t)
	c := newClient(t, cl.Node(0).GRPCAddr(), client.WithRefreshInterval(200*time.Millisecond),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 30, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}))
	rec := newRecorder()
	// An ack timeout well above any ack latency on a loaded machine: a
	// duplicate then means a lost ack, not a slow one.
	subscribe(t, c, "", "follow", rec.handle, client.WithWorkers(8), client.WithMaxInFlight(500), client.WithAckTimeout(5*time.Second))
	acksIgnored := func() float64 { return cl.MetricSum("timerd_acks_ignored_total") }

	// Three nodes: every timer of every shard.
	began := time.Now()
	first := spread("a", "follow", 3000, time.Now().Add(500*time.Millisecond), 2*time.Second)
	scheduleAll(t, ctx, c, first)
	rec.wait(t, first, 20*time.Second)
	dups, late := rec.check(t, first)
	if len(dups) > 0 {
		t.Errorf("duplicates without any failure, by shard: %v", dups)
	}
	if n := acksIgnored(); n != 0 {
		t.Errorf("the nodes ignored %v acks", n)
	}
	t.Logf("3 nodes: %d timers delivered in %v, latest first delivery %v late", len(first), time.Since(began), late)

	// A fourth node joins while timers fire: the client subscribes to it.
	// Shards move to it by handover; a delivery in flight on a shard
	// that moved may come again from its new owner, none other.
	beforeJoin := owners(t, ctx, c)
	began = time.Now()
	joining := spread("b", "follow", 3000, time.Now().Add(300*time.Millisecond), 3*time.Second)
	scheduleAll(t, ctx, c, joining[:1500])
	cl.Add()
	scheduleAll(t, ctx, c, joining[1500:])
	cl.WaitStable()
	after := spread("c", "follow", 2000, time.Now().Add(300*time.Millisecond), time.Second)
	scheduleAll(t, ctx, c, after)
	rec.wait(t, joining, 20*time.Second)
	rec.wait(t, after, 20*time.Second)
	joinDups, late := rec.check(t, joining)
	if d, _ := rec.check(t, after); len(d) > 0 {
		t.Errorf("duplicates after the join had settled, by shard: %v", d)
	}
	own := owners(t, ctx, c)
	fourth := 0
	rec.mu.Lock()
	for _, tm := range after {
		if own[rec.got[tm.ID][0].d.Shard] == "node-3" {
			fourth++
		}
	}
	rec.mu.Unlock()
	if fourth == 0 {
		t.Errorf("no timer of the fourth node's shards delivered")
	}
	moved := 0
	for s, n := range joinDups {
		moved += n
		if beforeJoin[s] == own[s] {
			t.Errorf("%d duplicates on shard %d, which stayed on %s", n, s, own[s])
		}
	}
	// An ack a node ignores leaves its delivery to be made again.
	if n := acksIgnored(); n > float64(moved) {
		t.Errorf("the nodes ignored %v acks, with %d duplicates", n, moved)
	}
	t.Logf("a 4th node joined: %d timers delivered in %v (%d of the last %d from the new node's shards), latest %v late; duplicates by shard %v",
		len(joining)+len(after), time.Since(began), fourth, len(after), late, joinDups)

	// A node is killed while timers fire: its shards' timers come from
	// their new owners once its leases lapse; only they may come twice.
	before := owners(t, ctx, c)
	began = time.Now()
	dying := spread("d", "follow", 3000, time.Now().Add(300*time.Millisecond), 3*time.Second)
	scheduleAll(t, ctx, c, dying)
	time.Sleep(time.Second)
	cl.Kill(1)
	rec.wait(t, dying, 30*time.Second)
	cl.WaitStable()
	after = spread("e", "follow", 2000, time.Now().Add(300*time.Millisecond), time.Second)
	scheduleAll(t, ctx, c, after)
	rec.wait(t, after, 20*time.Second)
	killDups, late := rec.check(t, dying)
	// The killed node's shards move, and so may a few of the survivors'
	// (the ring rebalances the members that remain): a shard handed over
	// with deliveries in flight delivers them again. A shard that stayed
	// where it was delivers nothing twice.
	settled := owners(t, ctx, c)
	for s, n := range killDups {
		if before[s] != "node-1" && before[s] == settled[s] {
			t.Errorf("%d duplicates on shard %d, which stayed on %s", n, s, before[s])
		}
	}
	if d, _ := rec.check(t, after); len(d) > 0 {
		t.Errorf("duplicates after the kill had settled, by shard: %v", d)
	}
	total := 0
	for _, n := range killDups {
		total += n
	}
	t.Logf("a node killed: %d timers delivered in %v, latest %v late; %d duplicates, all on the killed node's shards",
		len(dying)+len(after), time.Since(began), late, total)
}

// TestClusterRoutingRecovers: after a node leaves, and after the client's
// only seed is killed, every schedule succeeds: the items sent to the old
// owners come back UNAVAILABLE and are retried through a fresh map,
// fetched from the members the client knows; once the cluster is stable
// the client sends to the owners again and nothing is forwarded.
func TestClusterRoutingRecovers(t *testing.T) {
	cl := clustertest.Start(t, 3)
	ctx := testCtx(t)
	// Patient enough to outlast a killed node's leases (2s here).
	c := newClient(t, cl.Node(0).GRPCAddr(),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 30, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond}))
	scheduleAll(t, ctx, c, spread("warm", "x", 500, farDue, time.Hour))

	cl.Leave(1)
	began := time.Now()
	most := scheduleAll(t, ctx, c, spread("left", "x", 2000, farDue, time.Hour))
	t.Logf("after a leave: 2000 timers scheduled in %v, at most %d attempts", time.Since(began), most)

	cl.Add()
	cl.WaitStable()
	cl.Kill(0) // the client's only seed
	began = time.Now()
	most = scheduleAll(t, ctx, c, spread("killed", "x", 2000, farDue, time.Hour))
	t.Logf("after the seed was killed: 2000 timers scheduled in %v, at most %d attempts", time.Since(began), most)

	cl.WaitStable()
	time.Sleep(2 * client.DefaultRefreshInterval) // a poll sees the settled map
	fw := cl.MetricSum(forwardedMetric)
	scheduleAll(t, ctx, c, spread("settled", "x", 2000, farDue, time.Hour))
	if d := cl.MetricSum(forwardedMetric) - fw; d != 0 {
		t.Errorf("%v items forwarded once the cluster was stable again; want 0", d)
	}
}
