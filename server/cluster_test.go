package server

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/node"
)

// dial connects to a node's gRPC address for the test's life.
func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestClusterServiceStatesAndCounts checks what a single node tells about
// itself and its shards: the incarnation it leases with, ACTIVE, and for
// every shard SERVING, assigned to itself, with the shard's counts of
// timers, deliveries in flight and dead letters.
func TestClusterServiceStatesAndCounts(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Shard.MaxAttempts = 1 })
	e.schedule(spec("p1", "later", time.Hour), spec("p2", "later", time.Hour), spec("p3", "later", time.Hour),
		spec("dl", "dies", 0), spec("held", "held", 0))
	// One delivery that ends unacked with one attempt allowed makes a dead
	// letter; one that is not acked stays in flight.
	dies := e.subscribe(&pb.Subscription{Topic: "dies"})
	dies.next()
	dies.close()
	waitFor(t, "a dead letter", func() bool {
		st, _ := e.state("default", "dl")
		return st == pb.TimerState_TIMER_STATE_DEAD
	})
	held := e.subscribe(&pb.Subscription{Topic: "held"})
	held.next()

	m, err := e.cluster.Members(e.ctx(), &pb.MembersRequest{})
	if err != nil || len(m.Members) != 1 {
		t.Fatalf("Members = %v, %v", m, err)
	}
	if me := m.Members[0]; me.Incarnation == "" || e.srv.Owner() != me.Name+"/"+me.Incarnation || me.NodeState != pb.NodeState_NODE_STATE_ACTIVE {
		t.Errorf("member %v, owner %q", me, e.srv.Owner())
	}

	type counts struct{ timers, inFlight, dead uint64 }
	want := make([]counts, e.cfg.Shards)
	for id, c := range map[string]counts{"p1": {1, 0, 0}, "p2": {1, 0, 0}, "p3": {1, 0, 0}, "dl": {1, 0, 1}, "held": {1, 1, 0}} {
		got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: id})
		if err != nil {
			t.Fatalf("Get %s: %v", id, err)
		}
		w := &want[got.Timer.Shard]
		w.timers, w.inFlight, w.dead = w.timers+c.timers, w.inFlight+c.inFlight, w.dead+c.dead
	}
	for _, local := range []bool{false, true} {
		sm, err := e.cluster.ShardMap(e.ctx(), &pb.ShardMapRequest{Local: local})
		if err != nil || len(sm.Shards) != int(e.cfg.Shards) {
			t.Fatalf("ShardMap(local=%v) = %v, %v", local, sm, err)
		}
		for i, o := range sm.Shards {
			if o.State != pb.ShardState_SHARD_STATE_SERVING || o.Assigned != "local" || o.Owner != "local" {
				t.Errorf("local=%v: shard %d = %v", local, i, o)
			}
			if got := (counts{o.Timers, o.InFlight, o.Dead}); got != want[i] {
				t.Errorf("local=%v: shard %d counts %+v, want %+v", local, i, got, want[i])
			}
		}
	}
}

// TestClusterServiceLoading checks that a shard this node is taking, but
// whose lease another process still holds, is LOADING on this node, with
// no counts, and SERVING once the other lets it go.
func TestClusterServiceLoading(t *testing.T) {
	rs := redistest.Start(t)
	onRedis := func(c *Config) { c.RedisURL = "redis://" + rs.Addr() }
	a := start(t, "", onRedis)
	a.schedule(spec("a", "t", time.Hour))

	cfgB := LocalConfig(t.TempDir())
	onRedis(&cfgB)
	cfgB.NodeName = "b"
	b, err := New(cfgB)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- b.Start(context.Background()) }()
	defer func() {
		_ = b.Close(context.Background())
		<-started
	}()
	waitFor(t, "b to be loading every shard", func() bool {
		return b.node != nil && b.node.Status(0).State == node.Loading && b.node.Status(3).State == node.Loading
	})
	cs := pb.NewClusterServiceClient(dial(t, b.GRPCAddr()))
	sm, err := cs.ShardMap(context.Background(), &pb.ShardMapRequest{Local: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range sm.Shards {
		if o.State != pb.ShardState_SHARD_STATE_LOADING || o.Owner != "b" || o.Timers != 0 || o.Assigned != "b" {
			t.Errorf("shard %d while a holds its lease = %v", o.Shard, o)
		}
	}
	if err := a.srv.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	started <- nil
	sm, err = cs.ShardMap(context.Background(), &pb.ShardMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	total := uint64(0)
	for _, o := range sm.Shards {
		if o.State != pb.ShardState_SHARD_STATE_SERVING || o.Owner != "b" || o.Epoch == 0 {
			t.Errorf("shard %d after a closed = %v", o.Shard, o)
		}
		total += o.Timers
	}
	if total != 1 {
		t.Errorf("b counts %d timers, want a's 1", total)
	}
}
