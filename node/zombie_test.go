package node

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/netfault"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// recorder is a Dispatcher whose one subscriber takes everything and
// never acks: it records when each delivery was handed out.
type recorder struct {
	mu  sync.Mutex
	got []dispatched // guarded by mu
}

type dispatched struct {
	at    time.Time
	id    string
	shard uint32
	epoch uint64
}

func (r *recorder) Dispatch(d shard.Delivery) (time.Duration, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, dispatched{time.Now(), d.TimerID, d.Shard, d.Epoch})
	return time.Hour, true
}

func (r *recorder) all() []dispatched {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]dispatched(nil), r.got...)
}

// openVia opens a node of 4 shards named owner whose Redis is reached at
// addr, with ttl leases, dispatching to d. Its writes wait out a cut
// rather than give up. It is closed, whatever that returns, when the
// test ends: the zombie's Close finds its leases fenced.
func openVia(t *testing.T, addr, owner string, ttl time.Duration, d shard.Dispatcher) *Node {
	t.Helper()
	n := openWith(t, addr, owner, ttl, d, func(c *Config) {
		c.Shards = 4
		c.Shard.OpTimeout = ttl / 4
		c.Commit.GiveUpAfter = time.Minute // the zombie's write waits for the cut to heal
	})
	t.Cleanup(func() { _ = n.Close(context.Background()) })
	return n
}

// TestZombie: a node cut off from Redis (every byte held, as for a paused
// process) keeps running while its leases lapse and another node takes
// its shards. It dispatches nothing once its leases could have lapsed,
// the new owner fires its timers, and when the cut heals, the write it
// made meanwhile is refused by the fence and changes nothing.
func TestZombie(t *testing.T) {
	const ttl = time.Second
	rs := redistest.Start(t)
	proxy, err := netfault.Listen(rs.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	var recA, recB recorder
	a := openVia(t, proxy.Addr(), "a/1", ttl, &recA)
	b := openVia(t, rs.Addr(), "b/1", ttl, &recB)
	a.HoldAll()
	settle(t, a)
	epochs := map[uint32]uint64{}
	for id := range uint32(4) {
		epochs[id] = a.Shard(id).Epoch()
	}

	// Timers due while the node is cut off, after its leases lapse.
	cut := time.Now()
	due := cut.Add(3 * ttl)
	ids := map[string]uint32{}
	for id := range uint32(4) {
		for k := range 10 {
			name := fmt.Sprintf("z%d-%d", id, k)
			if err := a.Shard(id).Schedule(context.Background(), []shard.Spec{{Namespace: "ns", ID: name, Topic: "t", Due: due}})[0].Err; err != nil {
				t.Fatalf("schedule %s: %v", name, err)
			}
			ids[name] = id
		}
	}

	proxy.Pause()
	cut = time.Now()
	zombie := a.Shard(0)
	written := make(chan error, 1)
	go func() {
		res := zombie.Schedule(context.Background(), []shard.Spec{{Namespace: "ns", ID: "zombie-write", Topic: "t", Delay: time.Hour}})
		written <- res[0].Err
	}()
	b.HoldAll()
	settle(t, b)
	took := time.Since(cut)
	t.Logf("b took the 4 shards %v after a was cut off (lease TTL %v)", took, ttl)
	for id := range uint32(4) {
		if e := b.Shard(id).Epoch(); e <= epochs[id] {
			t.Errorf("shard %d: b's epoch %d is not above a's %d", id, e, epochs[id])
		}
	}
	time.Sleep(time.Until(due.Add(500 * time.Millisecond)))
	proxy.Resume()

	select {
	case err := <-written:
		if err == nil {
			t.Fatal("the zombie's write was acknowledged after its lease lapsed")
		}
		if !errors.Is(err, store.ErrFenced) && !errors.Is(err, shard.ErrNotOwner) {
			t.Errorf("the zombie's write failed with %v, want the fence (or the shard's stop because of it)", err)
		}
		t.Logf("the zombie's write: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the zombie's write never returned")
	}
	if _, err := b.Shard(0).Get("ns", "zombie-write"); !errors.Is(err, shard.ErrNotFound) {
		t.Errorf("the new owner has the zombie's write: %v", err)
	}
	for _, d := range recA.all() {
		if d.at.After(cut.Add(ttl)) {
			t.Errorf("a dispatched %s of shard %d at epoch %d %v after it was cut off, past its lease (%v)", d.id, d.shard, d.epoch, d.at.Sub(cut), ttl)
		}
	}
	waitFor := time.Now().Add(10 * time.Second)
	for len(recB.all()) < len(ids) && time.Now().Before(waitFor) {
		time.Sleep(20 * time.Millisecond)
	}
	fired := map[string]bool{}
	for _, d := range recB.all() {
		fired[d.id] = true
		if d.at.Before(due) {
			t.Errorf("b fired %s %v early", d.id, due.Sub(d.at))
		}
	}
	for name := range ids {
		if !fired[name] {
			t.Errorf("%s, due while a was cut off, was not fired by b", name)
		}
	}
	// Healed, the zombie finds its shards fenced and serves none of them.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		_, serving := a.Counts()
		if serving == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, serving := a.Counts()
	t.Fatalf("a still serves %d shards whose leases b holds", serving)
}
