package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/timerd/timerd/ring"
)

func TestThreeNodesAgree(t *testing.T) {
	log, _ := newLog(t)
	nodes := startActive(t, 3, log)
	want := ring.Owners(testShards, names(nodes))
	for _, c := range nodes {
		v := c.View()
		if !slices.Equal(v.Owners, want) {
			t.Errorf("%s: owners differ from ring.Owners over %v", c.Self().Name, names(nodes))
		}
		for _, o := range nodes {
			m, ok := v.Member(o.Self().Name)
			if !ok || m != o.Self() {
				t.Errorf("%s sees %s as %+v (found %v), want %+v", c.Self().Name, o.Self().Name, m, ok, o.Self())
			}
		}
		if got := c.Members(); !slices.Equal(got, v.Members) {
			t.Errorf("%s: Members() = %v, View().Members = %v", c.Self().Name, got, v.Members)
		}
	}
	// The Assigned sets partition the shards.
	seen := make([]int, testShards)
	v := nodes[0].View()
	for _, c := range nodes {
		a := v.Assigned(c.Self().Name)
		if len(a) == 0 {
			t.Errorf("%s is assigned no shard", c.Self().Name)
		}
		for _, s := range a {
			seen[s]++
		}
	}
	for s, n := range seen {
		if n != 1 {
			t.Errorf("shard %d assigned %d times", s, n)
		}
	}
}

func TestStateLeavingDropsOwnership(t *testing.T) {
	log, _ := newLog(t)
	nodes := startActive(t, 3, log)
	leaving := nodes[2]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := leaving.SetState(ctx, StateLeaving); err != nil {
		t.Fatal(err)
	}
	// The node's own View shows the change once SetState returns.
	if m, _ := leaving.View().Member("n2"); m.State != StateLeaving {
		t.Errorf("own view: n2 is %s", m.State)
	}
	want := ring.Owners(testShards, []string{"n0", "n1"})
	waitFor(t, 5*time.Second, func() error {
		for _, c := range nodes {
			v := c.View()
			if m, ok := v.Member("n2"); !ok || m.State != StateLeaving {
				return fmt.Errorf("%s sees n2 as %+v (found %v)", c.Self().Name, m, ok)
			}
			if !slices.Equal(v.Owners, want) {
				return fmt.Errorf("%s: owners not those of n0 and n1; n2 assigned %d", c.Self().Name, len(v.Assigned("n2")))
			}
		}
		return nil
	})
}

func TestLeave(t *testing.T) {
	log, _ := newLog(t)
	nodes := startActive(t, 3, log)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := nodes[2].Leave(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		for _, c := range nodes[:2] {
			if err := wantActive(c.View(), "n0", "n1"); err != nil {
				return fmt.Errorf("%s: %w", c.Self().Name, err)
			}
		}
		return nil
	})
}

func TestDeathIsDetected(t *testing.T) {
	log, _ := newLog(t)
	nodes := startActive(t, 3, log)
	before := nodes[0].View().Version
	killed := time.Now()
	if err := nodes[2].Close(); err != nil {
		t.Fatal(err)
	}
	// LocalConfig declares a node dead in about a second; allow for a
	// slow machine under the race detector.
	waitFor(t, 15*time.Second, func() error {
		for _, c := range nodes[:2] {
			if err := wantActive(c.View(), "n0", "n1"); err != nil {
				return fmt.Errorf("%s: %w", c.Self().Name, err)
			}
		}
		return nil
	})
	t.Logf("killed node gone from both views after %v", time.Since(killed))
	v := nodes[0].View()
	if v.Version <= before {
		t.Errorf("version %d after the change, %d before", v.Version, before)
	}
	if !slices.Equal(v.Owners, ring.Owners(testShards, []string{"n0", "n1"})) {
		t.Error("owners are not those of n0 and n1")
	}
}

func TestRejoinWhenSeedComesUp(t *testing.T) {
	log, logs := newLog(t)
	seed := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := testConfig("late", seed)
	cfg.Logger = log
	late := start(t, cfg)
	if n := len(late.View().Members); n != 1 {
		t.Fatalf("%d members before the seed is up", n)
	}
	if !logs.contains("no seed answered") {
		t.Error("no warning about the unreachable seed")
	}
	cfg = testConfig("seed")
	cfg.BindAddr = seed
	cfg.Logger = log
	first := start(t, cfg)
	waitFor(t, 10*time.Second, func() error {
		for _, c := range []*Cluster{late, first} {
			if got := len(c.View().Members); got != 2 {
				return fmt.Errorf("%s sees %d members", c.Self().Name, got)
			}
		}
		return nil
	})
}

func TestOwnAddressSeedSkipped(t *testing.T) {
	log, logs := newLog(t)
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	cfg := withLogger(testConfig("a", addr), log)
	cfg.BindAddr = addr
	a := start(t, cfg)
	if a.GossipAddr() != addr {
		t.Fatalf("gossip address %s, want %s", a.GossipAddr(), addr)
	}
	if logs.contains("no seed answered") {
		t.Error("a node whose only seed is itself warned that no seed answered")
	}
}

func TestChangedSignals(t *testing.T) {
	log, _ := newLog(t)
	a := start(t, withLogger(testConfig("a"), log))
	changed := a.Changed()
	<-changed // the first View
	v1 := a.View()
	if v1.Version == 0 || len(v1.Members) != 1 {
		t.Fatalf("first view %+v", v1)
	}
	if len(v1.Assigned("a")) != 0 {
		t.Error("a joining node is assigned shards")
	}
	b := start(t, withLogger(testConfig("b", a.GossipAddr()), log))
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled after a join")
	}
	waitFor(t, 5*time.Second, func() error {
		if _, ok := a.View().Member("b"); !ok {
			return errors.New("b not in a's view")
		}
		return nil
	})
	if v := a.View(); v.Version <= v1.Version {
		t.Errorf("version %d after a join, %d before", v.Version, v1.Version)
	}
	if a.Changed() != changed {
		t.Error("Changed returned another channel")
	}
	if _, ok := b.View().Member("a"); !ok {
		t.Error("a not in b's view")
	}
}

func TestNameConflict(t *testing.T) {
	log, logs := newLog(t)
	hub := start(t, withLogger(testConfig("hub"), log))
	old := start(t, withLogger(testConfig("x", hub.GossipAddr()), log))
	waitFor(t, 5*time.Second, func() error {
		if _, ok := hub.View().Member("x"); !ok {
			return errors.New("x not in hub's view")
		}
		return nil
	})
	// A second process named x, at another address, joins through hub.
	newer := start(t, withLogger(testConfig("x", hub.GossipAddr()), log))
	time.Sleep(time.Second)
	if m, _ := hub.View().Member("x"); m.Incarnation != old.Self().Incarnation {
		t.Errorf("hub sees x as incarnation %s, want the first process's %s", m.Incarnation, old.Self().Incarnation)
	}
	if !logs.contains("two processes claim one node name") {
		t.Error("hub did not log the conflict")
	}
	if !logs.contains("another process has this node's name") {
		t.Error("the newer process did not log the conflict")
	}
	// Once the first process is dead, the newer one takes the name over.
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, func() error {
		m, ok := hub.View().Member("x")
		if !ok || m.Incarnation != newer.Self().Incarnation {
			return fmt.Errorf("hub sees x as %+v (found %v), want incarnation %s", m, ok, newer.Self().Incarnation)
		}
		return nil
	})
}

func TestBadMetaLeftOut(t *testing.T) {
	log, logs := newLog(t)
	a := start(t, withLogger(testConfig("a"), log))
	mc := memberlist.DefaultLocalConfig()
	mc.Name = "rogue"
	mc.Label = DefaultLabel // the cluster's label, or its packets are dropped before their meta is read
	mc.BindAddr, mc.BindPort = "127.0.0.1", 0
	mc.Delegate = rogueDelegate{}
	mc.LogOutput = io.Discard
	rogue, err := memberlist.Create(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rogue.Shutdown() })
	if _, err := rogue.Join([]string{a.GossipAddr()}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, func() error {
		if !logs.contains("meta cannot be decoded") {
			return errors.New("the bad meta was not logged")
		}
		return nil
	})
	if n := a.ml.Load().NumMembers(); n != 2 {
		t.Errorf("memberlist has %d members, want 2", n)
	}
	if v := a.View(); len(v.Members) != 1 || v.Members[0].Name != "a" {
		t.Errorf("view members %v, want only a", v.Members)
	}
}

// rogueDelegate announces a meta this package cannot decode.
type rogueDelegate struct{}

func (rogueDelegate) NodeMeta(int) []byte                 { return []byte{99, 1} }
func (rogueDelegate) NotifyMsg([]byte)                    {}
func (rogueDelegate) GetBroadcasts(int, int) [][]byte     { return nil }
func (rogueDelegate) LocalState(bool) []byte              { return nil }
func (rogueDelegate) MergeRemoteState(buf []byte, _ bool) {}

func TestLifecycle(t *testing.T) {
	ctx := context.Background()
	c, err := New(testConfig("a"))
	if err != nil {
		t.Fatal(err)
	}
	if v := c.View(); v.Version != 0 || len(v.Members) != 0 {
		t.Errorf("view before Start: %+v", v)
	}
	if err := c.SetState(ctx, State(0)); !errors.Is(err, ErrInvalidState) {
		t.Errorf("SetState(0) = %v, want ErrInvalidState", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if c.GossipAddr() == "" || c.Self().GossipAddr != c.GossipAddr() {
		t.Errorf("GossipAddr %q, Self %+v", c.GossipAddr(), c.Self())
	}
	if err := c.Start(ctx); !errors.Is(err, ErrStarted) {
		t.Errorf("second Start = %v, want ErrStarted", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	if err := c.Leave(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after Close = %v, want ErrClosed", err)
	}
	if err := c.SetState(ctx, StateActive); !errors.Is(err, ErrClosed) {
		t.Errorf("SetState after Close = %v, want ErrClosed", err)
	}

	// A Cluster closed before it started does not start.
	c, err = New(testConfig("b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close = %v, want ErrClosed", err)
	}

	// A Start whose context has ended fails and closes the Cluster.
	c, err = New(testConfig("c"))
	if err != nil {
		t.Fatal(err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Start(done); !errors.Is(err, context.Canceled) {
		t.Errorf("Start with an ended context = %v", err)
	}
	if err := c.Leave(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Leave after a failed Start = %v, want ErrClosed", err)
	}

	// Two nodes cannot share a gossip address.
	a := start(t, testConfig("d"))
	cfg := testConfig("e")
	cfg.BindAddr = a.GossipAddr()
	c, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err == nil {
		t.Error("Start on an address in use succeeded")
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	func() {
		log, _ := newLog(t)
		nodes := startActive(t, 3, log)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := nodes[1].SetState(ctx, StateLeaving); err != nil {
			t.Error(err)
		}
		if err := nodes[1].Leave(ctx); err != nil {
			t.Error(err)
		}
		for _, c := range nodes {
			_ = c.Close()
		}
		// A node whose seed never answers has a re-join in flight.
		lonely := start(t, testConfig("lonely", "127.0.0.1:"+strconv.Itoa(freePort(t))))
		if err := lonely.Close(); err != nil {
			t.Error(err)
		}
	}()
	// memberlist's connection handlers end within its TCPTimeout (1s in
	// LocalConfig) of Shutdown.
	waitFor(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > before {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}
