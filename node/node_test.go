package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

// nobody is a Dispatcher with no subscribers: due timers wait.
type nobody struct{}

func (nobody) Dispatch(shard.Delivery) (time.Duration, bool) { return 0, false }

// open starts a node of 8 shards named owner on the Redis at addr, with
// ttl leases and no subscribers; it is closed when the test ends.
func open(t *testing.T, addr, owner string, ttl time.Duration) *Node {
	t.Helper()
	n := openWith(t, addr, owner, ttl, nobody{}, func(c *Config) { c.Shards = 8 })
	t.Cleanup(func() {
		if err := n.Close(context.Background()); err != nil {
			t.Errorf("Close %s: %v", owner, err)
		}
	})
	return n
}

// openWith opens a node named owner on the Redis at addr, with ttl
// leases, dispatching to d, after edit has changed its configuration.
// The caller closes it.
func openWith(t *testing.T, addr, owner string, ttl time.Duration, d shard.Dispatcher, edit func(*Config)) *Node {
	t.Helper()
	c := LocalConfig(owner, "")
	c.RedisURL = "redis://" + addr
	c.Shard.LeaseTTL = ttl
	c.Shard.ClockDrift = shard.ClockDriftFor(ttl)
	c.Shard.Dispatcher = d
	edit(&c)
	n, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Open(context.Background()); err != nil {
		t.Fatal(err)
	}
	return n
}

func settle(t *testing.T, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := n.WaitSettled(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestHandOver: shards move between two nodes as each is told what to
// hold. The new owner serves each moved shard at a higher epoch with the
// timers the old one had, and does not wait for the lease to lapse: the
// leases here live for a minute, far longer than the test may take.
func TestHandOver(t *testing.T) {
	rs := redistest.Start(t)
	a := open(t, rs.Addr(), "a/1", time.Minute)
	b := open(t, rs.Addr(), "b/1", time.Minute)
	a.HoldAll()
	settle(t, a)
	if w, s := a.Counts(); w != 8 || s != 8 {
		t.Fatalf("a holds %d and serves %d shards, want 8 and 8", w, s)
	}
	epochs := make(map[uint32]uint64)
	for id := range uint32(8) {
		sh := a.Shard(id)
		epochs[id] = sh.Epoch()
		res := sh.Schedule(context.Background(), []shard.Spec{{Namespace: "ns", ID: fmt.Sprint("t", id), Topic: "x", Delay: time.Hour}})
		if res[0].Err != nil {
			t.Fatal(res[0].Err)
		}
	}

	began := time.Now()
	a.Hold([]uint32{0, 1, 2, 3})
	b.Hold([]uint32{4, 5, 6, 7})
	settle(t, a)
	settle(t, b)
	t.Logf("4 shards moved in %v", time.Since(began))
	for id := range uint32(8) {
		owner, other := a, b
		if id >= 4 {
			owner, other = b, a
		}
		if other.Shard(id) != nil || other.Status(id).State != Absent {
			t.Errorf("shard %d: the node that should not hold it has it (%v)", id, other.Status(id).State)
		}
		sh := owner.Shard(id)
		if sh == nil {
			t.Fatalf("shard %d not served by its owner", id)
		}
		if id >= 4 && sh.Epoch() <= epochs[id] {
			t.Errorf("shard %d moved at epoch %d, not above %d", id, sh.Epoch(), epochs[id])
		}
		if _, err := sh.Get("ns", fmt.Sprint("t", id)); err != nil {
			t.Errorf("shard %d lost its timer in the move: %v", id, err)
		}
		st := owner.Status(id)
		if st.State != Serving || st.Epoch != sh.Epoch() || st.Stats.Timers != 1 {
			t.Errorf("shard %d status %+v", id, st)
		}
	}
}

// TestReleaseOnClose: Close releases every lease, so that the next owner
// takes the shards at once.
func TestReleaseOnClose(t *testing.T) {
	rs := redistest.Start(t)
	a := open(t, rs.Addr(), "a/1", time.Minute)
	a.HoldAll()
	settle(t, a)
	if err := a.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := a.WaitSettled(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitSettled after Close = %v, want ErrClosed", err)
	}
	b := open(t, rs.Addr(), "b/1", time.Minute)
	for id := range uint32(8) {
		l, err := b.Store().Lease(context.Background(), id)
		if err != nil || l.Owner != "" {
			t.Fatalf("shard %d lease after Close: %+v, %v; want released", id, l, err)
		}
	}
	b.HoldAll()
	settle(t, b)
}

// TestWaitsForHeldLease: a shard whose lease another live owner holds
// stays Loading, and is taken once that owner releases it.
func TestWaitsForHeldLease(t *testing.T) {
	rs := redistest.Start(t)
	a := open(t, rs.Addr(), "a/1", time.Minute)
	b := open(t, rs.Addr(), "b/1", time.Minute)
	a.Hold([]uint32{3})
	settle(t, a)
	b.Hold([]uint32{3})
	time.Sleep(300 * time.Millisecond)
	if st := b.Status(3).State; st != Loading || b.Settled() {
		t.Fatalf("b's shard 3 is %v (settled %v) while a holds its lease; want loading", st, b.Settled())
	}
	a.Hold(nil)
	settle(t, b)
	settle(t, a)
	if b.Shard(3) == nil {
		t.Fatal("b does not serve shard 3 after a released it")
	}
}

// TestShardCountChecked: a node started with another shard count than
// the store's refuses to open.
func TestShardCountChecked(t *testing.T) {
	rs := redistest.Start(t)
	open(t, rs.Addr(), "a/1", time.Minute)
	c := LocalConfig("b/1", "")
	c.RedisURL = "redis://" + rs.Addr()
	c.Shards = 16
	n, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	if err := n.Open(context.Background()); !errors.Is(err, store.ErrShardCount) {
		t.Fatalf("Open with 16 shards on a store of 8 = %v, want ErrShardCount", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		field string
		edit  func(*Config)
	}{
		{"Owner", func(c *Config) { c.Owner = "" }},
		{"Shards", func(c *Config) { c.Shards = 0 }},
		{"LoadParallelism", func(c *Config) { c.LoadParallelism = 0 }},
		{"DrainTurns", func(c *Config) { c.DrainTurns = 0 }},
		{"ReleaseTimeout", func(c *Config) { c.ReleaseTimeout = 0 }},
		{"DataDir", func(c *Config) { c.DataDir = "" }},
		{"RedisPrefix", func(c *Config) { c.RedisURL, c.RedisPrefix = "redis://x", "" }},
		{"RedisURL", func(c *Config) { c.RedisURL = "redis-sentinel://s:1" }},
	}
	if err := DefaultConfig("a/1", "d").Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	for _, tt := range tests {
		c := DefaultConfig("a/1", "d")
		tt.edit(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig naming it", tt.field, err)
		}
	}
}
