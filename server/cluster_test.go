package server

import (
	"testing"
	"time"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

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

// TestClusterServiceLoading checks that a shard this node holds the
// lease of but has not (re)opened yet is LOADING, owned by the node, with
// its epoch and no counts.
func TestClusterServiceLoading(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", time.Hour))
	sh := e.srv.slots[0].Load()
	// As supervise does while it opens the shard again after it stopped.
	e.srv.slots[0].Store(nil)
	sm, err := e.cluster.ShardMap(e.ctx(), &pb.ShardMapRequest{})
	e.srv.slots[0].Store(sh)
	if err != nil {
		t.Fatal(err)
	}
	if o := sm.Shards[0]; o.State != pb.ShardState_SHARD_STATE_LOADING || o.Owner != "local" || o.Epoch != sh.Epoch() ||
		o.Timers != 0 || o.Assigned != "local" {
		t.Errorf("shard 0 while not in its slot = %v", o)
	}
	if o := sm.Shards[1]; o.State != pb.ShardState_SHARD_STATE_SERVING {
		t.Errorf("shard 1 = %v", o)
	}
}
