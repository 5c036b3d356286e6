package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/clustertest"
)

// scheduler schedules timers through one node, as a plain gRPC client
// would: items that come back UNAVAILABLE (their shard is moving) are
// sent again until they succeed. due records every acknowledged timer.
type scheduler struct {
	t     testing.TB
	tc    pb.TimerServiceClient
	topic string

	mu  sync.Mutex
	due map[string]time.Time // guarded by mu
}

func newScheduler(t testing.TB, addr, topic string) *scheduler {
	return &scheduler{t: t, tc: pb.NewTimerServiceClient(dialNode(t, addr)), topic: topic, due: make(map[string]time.Time)}
}

// dialNode connects to the node at addr for the rest of the test.
func dialNode(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// schedule schedules the timers prefix-0 .. prefix-(n-1), due spread
// evenly over [from, from+over), in batches of 1,000, and returns once
// every one is acknowledged (or fails the test after a minute).
func (s *scheduler) schedule(prefix string, n int, from time.Time, over time.Duration) {
	s.t.Helper()
	const batch = 1000
	for start := 0; start < n; start += batch {
		var items []*pb.TimerSpec
		for i := start; i < min(n, start+batch); i++ {
			due := from.Add(over * time.Duration(i) / time.Duration(n))
			items = append(items, &pb.TimerSpec{
				Id: fmt.Sprintf("%s-%d", prefix, i), Topic: s.topic,
				When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(due)},
			})
		}
		s.send(items)
	}
}

// send schedules items, retrying the ones whose shard was unavailable.
func (s *scheduler) send(items []*pb.TimerSpec) {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for len(items) > 0 {
		if time.Now().After(deadline) {
			s.t.Fatalf("%d timers not acknowledged within a minute", len(items))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := s.tc.Schedule(ctx, &pb.ScheduleRequest{Timers: items})
		cancel()
		if err != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		var again []*pb.TimerSpec
		s.mu.Lock()
		for i, r := range resp.GetResults() {
			switch codes.Code(r.GetCode()) {
			case codes.OK:
				s.due[items[i].GetId()] = items[i].GetDueTime().AsTime()
			case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
				again = append(again, items[i])
			default:
				s.mu.Unlock()
				s.t.Fatalf("schedule %s: %v %s", items[i].GetId(), codes.Code(r.GetCode()), r.GetMessage())
			}
		}
		s.mu.Unlock()
		if len(again) > 0 {
			time.Sleep(50 * time.Millisecond)
		}
		items = again
	}
}

func (s *scheduler) acknowledged() map[string]time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]time.Time, len(s.due))
	for k, v := range s.due {
		out[k] = v
	}
	return out
}

// check waits for every acknowledged timer and fails on any loss, early
// or unexpected delivery.
func check(t *testing.T, col *clustertest.Collector, due map[string]time.Time, wait time.Duration) clustertest.Verdict {
	t.Helper()
	col.Wait(due, wait)
	v := col.Check(due)
	t.Logf("%d timers: %v", len(due), v)
	if !v.OK() {
		t.Fatalf("verdict: %v", v)
	}
	return v
}

// TestClusterDeliversEverything: 100,000 timers scheduled through one
// node of three (most of them forwarded to their owners) are each
// delivered, none early, to subscribers on every node, with the nodes on
// one redis-server and on a Redis Cluster of three masters. (Duplicates
// are counted, not refused: on a starved machine an ack can come after
// its ack timeout, and the timer is then rightly delivered again.)
func TestClusterDeliversEverything(t *testing.T) {
	n := 100_000
	if testing.Short() || raceEnabled {
		n = 10_000
	}
	for _, r := range clustertest.Redises {
		t.Run(r.String(), func(t *testing.T) {
			c := clustertest.StartOn(t, r, 3)
			col := c.Collect("default", "all")
			s := newScheduler(t, c.Node(0).GRPCAddr(), "all")
			s.schedule("t", n, time.Now().Add(2*time.Second), 5*time.Second)
			check(t, col, s.acknowledged(), 2*time.Minute)
		})
	}
}

// TestClusterJoinUnderLoad: a fourth node joins while timers are
// scheduled and firing; shards move to it, and nothing is lost or early.
func TestClusterJoinUnderLoad(t *testing.T) {
	c := clustertest.Start(t, 3)
	col := c.Collect("default", "join")
	s := newScheduler(t, c.Node(0).GRPCAddr(), "join")
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 20 {
			s.schedule(fmt.Sprintf("b%d", i), 1000, time.Now().Add(500*time.Millisecond), 3*time.Second)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	time.Sleep(700 * time.Millisecond)
	n := c.Add()
	col.Follow(n.GRPCAddr())
	<-done
	c.WaitStable()
	check(t, col, s.acknowledged(), 60*time.Second)
}

// TestClusterGracefulLeave: a node that leaves hands its shards over;
// its timers fire on the others, none lost or early, and the timers of
// the shards that moved are no later than those of the shards that
// stayed, but for the handover. (Lateness is compared within the run, so
// that a slow machine slows both alike.) It runs on one redis-server and
// on a Redis Cluster of three masters.
func TestClusterGracefulLeave(t *testing.T) {
	for _, r := range clustertest.Redises {
		t.Run(r.String(), func(t *testing.T) { testClusterGracefulLeave(t, r) })
	}
}

func testClusterGracefulLeave(t *testing.T, r clustertest.Redis) {
	c := clustertest.StartOn(t, r, 3)
	col := c.Collect("default", "leave")
	s := newScheduler(t, c.Node(0).GRPCAddr(), "leave")
	s.schedule("t", 10_000, time.Now().Add(time.Second), 4*time.Second)
	time.Sleep(1500 * time.Millisecond)
	before := shardOwners(t, c.Node(0).GRPCAddr())
	began := time.Now()
	c.Leave(2)
	took := time.Since(began)
	c.WaitStable()
	due := s.acknowledged()
	check(t, col, due, 30*time.Second)
	var moved, stayed time.Duration // the latest first delivery of each
	for id, at := range due {
		d := col.Got(id)[0]
		late := d.Received.Sub(at)
		if before[d.Shard] == "node-2" {
			moved = max(moved, late)
		} else {
			stayed = max(stayed, late)
		}
	}
	t.Logf("the leave took %v; the latest first delivery was %v late on the shards that moved, %v on those that stayed", took, moved, stayed)
	if moved > stayed+took+2*time.Second {
		t.Errorf("a timer of a moved shard was %v late, beyond the %v of the shards that stayed plus the %v handover and 2s", moved, stayed, took)
	}
}

// shardOwners returns the owner of every shard, from the ShardMap of the
// node at addr.
func shardOwners(t *testing.T, addr string) map[uint32]string {
	t.Helper()
	conn := dialNode(t, addr)
	sm, err := pb.NewClusterServiceClient(conn).ShardMap(context.Background(), &pb.ShardMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[uint32]string)
	for _, o := range sm.GetShards() {
		out[o.GetShard()] = o.GetOwner()
	}
	return out
}

// TestClusterKilledNode: a node stopped hard (no leave, no release, no
// flush) loses none of its acknowledged timers: once its leases lapse
// its shards' new owners fire them, none early. It runs on one
// redis-server and on a Redis Cluster of three masters.
func TestClusterKilledNode(t *testing.T) {
	for _, r := range clustertest.Redises {
		t.Run(r.String(), func(t *testing.T) {
			c := clustertest.StartOn(t, r, 3)
			col := c.Collect("default", "kill")
			s := newScheduler(t, c.Node(0).GRPCAddr(), "kill")
			s.schedule("t", 10_000, time.Now().Add(time.Second), 4*time.Second)
			time.Sleep(1500 * time.Millisecond)
			c.Kill(1)
			c.WaitStable()
			check(t, col, s.acknowledged(), 30*time.Second)
		})
	}
}

// TestClusterForwards: every request sent to a node that does not own
// the timer's shard is served by the owner.
func TestClusterForwards(t *testing.T) {
	c := clustertest.Start(t, 3)
	conn := dialNode(t, c.Node(1).GRPCAddr())
	tc := pb.NewTimerServiceClient(conn)
	ctx := context.Background()
	var specs []*pb.TimerSpec
	var ids []string
	for i := range 200 {
		id := fmt.Sprint("f", i)
		ids = append(ids, id)
		specs = append(specs, &pb.TimerSpec{Id: id, Topic: "f", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(time.Now().Add(time.Hour))}})
	}
	specs = append(specs, &pb.TimerSpec{Id: "bad", Topic: "a/b"}) // a bad item stays in place
	resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Timers: specs})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		want := codes.OK
		if i == len(specs)-1 {
			want = codes.InvalidArgument
		}
		if r.GetId() != specs[i].GetId() || codes.Code(r.GetCode()) != want {
			t.Fatalf("result %d = %v, want %s %v", i, r, specs[i].GetId(), want)
		}
	}
	// Specs that give no namespace are in the request's, also on the
	// nodes the items are forwarded to.
	var inTenant []*pb.TimerSpec
	for i := range 50 {
		inTenant = append(inTenant, &pb.TimerSpec{Id: fmt.Sprint("n", i), Topic: "f", When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Hour)}})
	}
	if resp, err := tc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "tenant", Timers: inTenant}); err != nil {
		t.Fatal(err)
	} else {
		for i, r := range resp.GetResults() {
			if r.GetCode() != 0 {
				t.Fatalf("tenant item %d = %v", i, r)
			}
		}
	}
	for _, sp := range inTenant {
		if _, err := tc.Get(ctx, &pb.GetRequest{Namespace: "tenant", Id: sp.GetId()}); err != nil {
			t.Fatalf("Get tenant/%s: %v", sp.GetId(), err)
		}
	}
	shards := map[uint32]bool{}
	for _, id := range ids {
		g, err := tc.Get(ctx, &pb.GetRequest{Id: id})
		if err != nil {
			t.Fatalf("Get %s through a node: %v", id, err)
		}
		shards[g.GetTimer().GetShard()] = true
	}
	rr, err := tc.Reschedule(ctx, &pb.RescheduleRequest{Items: []*pb.RescheduleItem{{Id: ids[0], When: &pb.RescheduleItem_DueTime{DueTime: timestamppb.New(time.Now().Add(2 * time.Hour))}}}})
	if err != nil || codes.Code(rr.GetResults()[0].GetCode()) != codes.OK {
		t.Fatalf("Reschedule through a node: %v, %v", rr, err)
	}
	cr, err := tc.Cancel(ctx, &pb.CancelRequest{Ids: append(ids, "never")})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range cr.GetResults() {
		want := codes.OK
		if i == len(ids) {
			want = codes.NotFound
		}
		if codes.Code(r.GetCode()) != want {
			t.Fatalf("cancel %d = %v, want %v", i, r, want)
		}
	}
	if _, err := tc.Get(ctx, &pb.GetRequest{Id: ids[0]}); codes.Code(statusCode(err)) != codes.NotFound {
		t.Fatalf("Get after Cancel = %v, want NOT_FOUND", err)
	}
	t.Logf("200 timers on %d shards, through one node of three", len(shards))
	// The map from any node is the whole cluster's.
	sm, err := pb.NewClusterServiceClient(conn).ShardMap(ctx, &pb.ShardMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	owners := map[string]int{}
	for _, o := range sm.GetShards() {
		if o.GetState() != pb.ShardState_SHARD_STATE_SERVING || o.GetOwner() != o.GetAssigned() || o.GetEpoch() == 0 {
			t.Errorf("shard %d: %v", o.GetShard(), o)
		}
		owners[o.GetOwner()]++
	}
	if len(owners) != 3 {
		t.Errorf("shard owners %v, want the 3 nodes", owners)
	}
}

func statusCode(err error) codes.Code { return status.Code(err) }

// TestClusterDeadLetters: dead letters of every shard are listed, page
// by page, and replayed, through any one node.
func TestClusterDeadLetters(t *testing.T) {
	c := clustertest.Start(t, 3)
	s := newScheduler(t, c.Node(0).GRPCAddr(), "dl")
	const n = 60
	s.schedule("d", n, time.Now(), time.Millisecond)
	// A subscriber on every node that takes every delivery and never
	// acks: each timer becomes a dead letter after its attempts.
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); wg.Wait() }()
	for _, addr := range c.Addrs() {
		conn := dialNode(t, addr)
		st, err := pb.NewTimerServiceClient(conn).Subscribe(ctx)
		if err != nil {
			t.Fatal(err)
		}
		sub := &pb.Subscription{Topic: "dl", MaxInFlight: 1000, AckTimeout: durationpb.New(time.Second)}
		if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			for {
				if _, err := st.Recv(); err != nil {
					return
				}
			}
		})
	}
	conn := dialNode(t, c.Node(1).GRPCAddr())
	tc := pb.NewTimerServiceClient(conn)
	list := func() map[string]bool {
		seen := map[string]bool{}
		tok := ""
		for pages := 0; ; pages++ {
			resp, err := tc.ListDeadLetters(context.Background(), &pb.ListDeadLettersRequest{Topic: "dl", PageSize: 7, PageToken: tok})
			if err != nil {
				t.Fatalf("ListDeadLetters page %d: %v", pages, err)
			}
			for _, d := range resp.GetDeadLetters() {
				if seen[d.GetTimer().GetSpec().GetId()] {
					t.Fatalf("%s listed twice", d.GetTimer().GetSpec().GetId())
				}
				seen[d.GetTimer().GetSpec().GetId()] = true
			}
			if tok = resp.GetNextPageToken(); tok == "" {
				return seen
			}
		}
	}
	deadline := time.Now().Add(45 * time.Second)
	for len(list()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d timers are dead letters after 45s", len(list()), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	cancel() // no subscribers: what is replayed waits
	wg.Wait()
	rr, err := pb.NewTimerServiceClient(conn).ReplayDeadLetters(context.Background(), &pb.ReplayDeadLettersRequest{Topic: "dl"})
	if err != nil || rr.GetReplayed() != n {
		t.Fatalf("ReplayDeadLetters of the namespace through one node = %v, %v; want %d replayed", rr, err, n)
	}
	if left := list(); len(left) != 0 {
		t.Fatalf("%d dead letters left after the replay", len(left))
	}
}
