package bench

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/server"
)

// This file tests failover and recovery: how they read what they
// measured (on made-up runs), the shell actions, and both scenarios end
// to end against in-process clusters, whose nodes the tests kill and
// restart. It asserts counts and correctness, never speed.

// param returns the value of rep's parameter name, "" when absent.
func param(rep *Report, name string) string {
	for _, p := range rep.Params {
		if p.Name == name {
			return p.Value
		}
	}
	return ""
}

// hasMetric reports whether rep has the metric name.
func hasMetric(rep *Report, name string) bool {
	return slices.ContainsFunc(rep.Metrics, func(m Metric) bool { return m.Name == name })
}

// TestFailoverOf reads a made-up failover run: four shards, the first two
// held by the node that dies; the figures must follow from the receive
// times and epochs alone.
func TestFailoverOf(t *testing.T) {
	t.Parallel()
	base := time.Now()
	ms := func(n int) time.Time { return base.Add(time.Duration(n) * time.Millisecond) }
	before := Layout{
		Members: []MemberInfo{{Name: "a", Incarnation: "1", Alive: true, Active: true}, {Name: "b", Incarnation: "1", Alive: true, Active: true}},
		Shards:  []ShardInfo{{Owner: "a", Epoch: 5}, {Owner: "a", Epoch: 7}, {Owner: "b", Epoch: 2}, {Owner: "b", Epoch: 3}},
	}
	after := Layout{
		Members: []MemberInfo{{Name: "b", Incarnation: "1", Alive: true, Active: true}},
		Shards:  []ShardInfo{{Owner: "b", Epoch: 6}, {Owner: "b", Epoch: 8}, {Owner: "b", Epoch: 2}, {Owner: "b", Epoch: 3}},
	}
	// Timer seq is due at 100*seq ms; the kill is at 1000 ms.
	type timer struct {
		shard uint32
		recv  int // ms, 0: never
		epoch uint64
		ok    bool
	}
	timers := map[int64]timer{
		0:  {0, 1, 5, true},    // a's, fired by a before the kill
		1:  {2, 101, 2, true},  // b's
		2:  {1, 1500, 7, true}, // a's, in flight at the kill, received late from a
		3:  {0, 3000, 6, true}, // a's, due 300: fired elsewhere, first of them
		4:  {0, 3050, 6, true}, // due 400, overdue when shard 0 fired again
		5:  {1, 3400, 8, true}, // due 500: shard 1 fires again
		6:  {3, 601, 3, true},  // b's
		7:  {2, 0, 0, false},   // never acknowledged, never delivered: not lost
		8:  {3, 0, 0, true},    // b's, lost
		9:  {0, 3100, 6, true}, // a's, due 900: overdue too
		10: {1, 3500, 8, true}, // due 1000: the last overdue one to arrive
		11: {0, 3101, 6, true}, // due 1100, before shard 0 fired again
		12: {2, 1201, 2, true}, // b's, due after the kill
		40: {0, 4001, 6, true}, // a's, due 4000, after shard 0 fired again: not overdue
		41: {1, 0, 0, true},    // a's, due 4100, never delivered: lost
	}
	n := int64(42)
	f := failoverRun{
		n:         n,
		due:       func(seq int64) time.Time { return ms(100 * int(seq)) },
		shardOf:   make([]uint32, n),
		recv:      make([]int64, n),
		epoch:     make([]uint64, n),
		base:      base,
		ok:        newBitset(n),
		seen:      newBitset(n),
		before:    before,
		after:     after,
		killStart: ms(1000),
		killEnd:   ms(1005),
		ended:     ms(20000),
		drain:     10 * time.Second,
	}
	for seq := range n {
		tm, ok := timers[seq]
		if !ok { // the rest, 13 to 39: b's, on time
			tm = timer{shard: 2, recv: 100*int(seq) + 1, epoch: 2, ok: true}
		}
		f.shardOf[seq] = tm.shard
		if tm.ok {
			f.ok.set(seq)
		}
		if tm.recv != 0 {
			f.recv[seq] = int64(time.Duration(tm.recv)*time.Millisecond) + 1
			f.epoch[seq] = tm.epoch
			f.seen.set(seq)
		}
	}
	r := &run{report: &Report{}, prog: &progress{}, stop: func() {}}
	out := failoverOf(r, f)
	if err := r.failure(); err != nil {
		t.Fatal(err)
	}
	if out.lost != 2 {
		t.Errorf("lost = %d, want 2 (timers 8 and 41)", out.lost)
	}
	if got := param(r.report, "killed"); got != "a" {
		t.Errorf("killed = %q, want a", got)
	}
	for name, want := range map[string]float64{
		"killed node's shards":                              2,
		"killed node's shards fired again elsewhere":        2,
		"kill command":                                      5,
		"kill → first of its timers fired elsewhere":        2000, // timer 3 at 3000
		"kill → last of its overdue timers fired elsewhere": 2500, // timer 10 at 3500, due 1000 <= 3400
		// 3, 4, 9, 11 in shard 0 (fired again at 3000), 5 and 10 in shard
		// 1 (at 3400); 2 came from a itself, 40 was due after 3000.
		"killed node's timers overdue when their shard fired again": 6,
		// 2, 3, 4, 5, 9, 10, 11, 40 and 41.
		"killed node's timers not delivered before the kill": 9,
	} {
		if got := metric(t, r.report, name); !withinMs(got, want) {
			t.Errorf("%s = %g, want %g", name, got, want)
		}
	}
	if d := dist(t, r.report, "lateness, killed node's timers (not delivered before the kill)"); d.Count != 8 {
		t.Errorf("killed node's lateness over %d timers, want the 8 delivered", d.Count)
	}
	// b's timers due at or after the kill (1000 ms): 12, and 13 to 39.
	if d := dist(t, r.report, "lateness, other nodes' timers (due after the kill)"); d.Count != 28 {
		t.Errorf("other nodes' lateness over %d timers, want 28", d.Count)
	}

	// Ended early: a lost timer due within a drain of the end (41) is not
	// judged.
	f.ended = ms(14000)
	r = &run{report: &Report{}, prog: &progress{}, stop: func() {}}
	if out := failoverOf(r, f); out.lost != 1 || metric(t, r.report, "not delivered, due within a drain of the end (not judged)") != 1 {
		t.Errorf("ended early: lost %d, metrics %+v", out.lost, r.report.Metrics)
	}

	// Nobody died: the run fails.
	f.after = before
	r = &run{report: &Report{}, prog: &progress{}, stop: func() {}}
	failoverOf(r, f)
	if err := r.failure(); err == nil || !strings.Contains(err.Error(), "killed no node") {
		t.Errorf("no member died: failure %v", err)
	}
	// A member restarted under its name (a new incarnation) died too.
	f.after = before
	f.after.Members = []MemberInfo{{Name: "a", Incarnation: "2", Alive: true}, {Name: "b", Incarnation: "1", Alive: true}}
	if got := killedMembers(f.before, f.after); !slices.Equal(got, []string{"a"}) {
		t.Errorf("killedMembers after a restart = %v, want [a]", got)
	}
}

func TestRecovered(t *testing.T) {
	t.Parallel()
	before := Layout{
		Members: []MemberInfo{{Name: "a", Incarnation: "1", Alive: true, Active: true}, {Name: "b", Incarnation: "1", Alive: true, Active: true}},
		Shards:  []ShardInfo{{Owner: "a", Epoch: 5, Serving: true}, {Owner: "b", Epoch: 2, Serving: true}},
	}
	members := func(ia, ib string) []MemberInfo {
		return []MemberInfo{{Name: "a", Incarnation: ia, Alive: true, Active: true}, {Name: "b", Incarnation: ib, Alive: true, Active: true}}
	}
	for _, tc := range []struct {
		name string
		l    Layout
		want []string
	}{
		{"before the restart", before, nil},
		{"a back, shard 0 not acquired again", Layout{Members: members("2", "1"), Shards: []ShardInfo{{Owner: "a", Epoch: 5, Serving: true}, {Owner: "b", Epoch: 2, Serving: true}}}, nil},
		{"a back, shard 0 loading", Layout{Members: members("2", "1"), Shards: []ShardInfo{{Owner: "a", Epoch: 6}, {Owner: "b", Epoch: 2, Serving: true}}}, nil},
		{"a back and serving", Layout{Members: members("2", "1"), Shards: []ShardInfo{{Owner: "a", Epoch: 6, Serving: true}, {Owner: "b", Epoch: 2, Serving: true}}}, []string{"a"}},
		{"b not back yet", Layout{Members: members("2", "1")[:1], Shards: []ShardInfo{{Owner: "a", Epoch: 6, Serving: true}, {Owner: "a", Epoch: 3, Serving: true}}}, nil},
		{"b joining", Layout{Members: []MemberInfo{{Name: "a", Incarnation: "2", Alive: true, Active: true}, {Name: "b", Incarnation: "2", Alive: true}},
			Shards: []ShardInfo{{Owner: "a", Epoch: 6, Serving: true}, {Owner: "a", Epoch: 3, Serving: true}}}, nil},
		{"both back", Layout{Members: members("2", "2"), Shards: []ShardInfo{{Owner: "a", Epoch: 6, Serving: true}, {Owner: "b", Epoch: 4, Serving: true}}}, []string{"a", "b"}},
	} {
		got := recovered(before, tc.l)
		var names []string
		for n := range got {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Equal(names, tc.want) {
			t.Errorf("%s: recovered = %v, want %v", tc.name, names, tc.want)
		}
	}
}

func TestShellAction(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := ShellAction("echo killed $((1+2))", &out).Do(context.Background()); err != nil || out.String() != "killed 3\n" {
		t.Errorf("echo: err %v, output %q", err, out.String())
	}
	err := ShellAction("exit 3", nil).Do(context.Background())
	if err == nil || !strings.Contains(err.Error(), `"exit 3": exit status 3`) {
		t.Errorf("exit 3: err %v", err)
	}
	// A restart leaves processes running that hold the output open: the
	// action returns all the same, once the command itself has.
	start := time.Now()
	out.Reset()
	if err := ShellAction("sleep 30 & echo $!", &out).Do(context.Background()); err != nil {
		t.Errorf("background: err %v, output %q", err, out.String())
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the action waited %v for a process it left in the background", d)
	}
	if pid, err := strconv.Atoi(strings.TrimSpace(out.String())); err == nil {
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	} else {
		t.Errorf("background: output %q is no pid", out.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ShellAction("true", nil).Do(ctx); err == nil {
		t.Error("an action run with an ended context succeeded")
	}
}

// deliveryDefaults keeps a test cluster's ack timeout and attempts at
// production values (its lease stays short, so failover is quick): a
// loaded machine (-race, parallel tests) can outlast the test presets,
// and a timer that became a dead letter would read as lost.
func deliveryDefaults(c *server.Config) {
	c.Shard.AckTimeout, c.Shard.MaxAttempts, c.Shard.BackoffMin = 30*time.Second, 10, time.Second
}

// dialCluster returns the timerd target of the cluster, reached through
// the first node alone, and checks that it found the others.
func dialCluster(t *testing.T, c *clustertest.Cluster) *Timerd {
	t.Helper()
	addrs := c.Addrs()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	td, err := DialTimerd(ctx, addrs[:1], TimerdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = td.Close() })
	got := strings.Split(td.Addr(), ",")
	slices.Sort(got)
	slices.Sort(addrs)
	if !slices.Equal(got, addrs) {
		t.Fatalf("target reaches %v, want every node %v", got, addrs)
	}
	return td
}

// TestClusterFire runs fire on a cluster reached through one node: the
// timers of every node's shards arrive, through a stream on each.
func TestClusterFire(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, 3, deliveryDefaults)
	td := dialCluster(t, c)
	rep, err := Run(context.Background(), "fire", td,
		Config{Duration: time.Second, Rate: 1000, Lead: 500 * time.Millisecond, Drain: 20 * time.Second, Tick: 50 * time.Millisecond}, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	checkDelivered(t, rep, 1000)
}

// TestFailover kills one of three nodes in the middle of a failover run:
// every acknowledged timer arrives, none early, and the killed node is
// found and its timers timed. Before that, a kill that kills nothing
// fails the run.
func TestFailover(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, 3, deliveryDefaults)
	td := dialCluster(t, c)
	tick := 50 * time.Millisecond

	rep, err := Run(context.Background(), "failover", td,
		Config{Count: 200, Spread: time.Second, KillAfter: 200 * time.Millisecond, Lead: 300 * time.Millisecond, Drain: 10 * time.Second, Tick: tick,
			Kill: Action{Name: "nothing", Do: func(context.Context) error { return nil }}}, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(rep.Error, "killed no node") || rep.Err() == nil {
		t.Errorf("a kill that killed nothing: error %q", rep.Error)
	}

	var killed bool
	rep, err = Run(context.Background(), "failover", td,
		Config{Count: 3000, Spread: 6 * time.Second, KillAfter: 2 * time.Second, Lead: time.Second, Drain: 20 * time.Second, Tick: tick, Batches: []int{500},
			Kill: Action{Name: "kill node 2", Do: func(context.Context) error { c.Kill(2); killed = true; return nil }}}, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if !killed {
		t.Fatal("the kill action did not run")
	}
	checkFilled(t, rep, "failover")
	if err := rep.Err(); err != nil || rep.Interrupted {
		t.Fatalf("run failed: %v (interrupted %v)", err, rep.Interrupted)
	}
	for _, name := range []string{"early deliveries", "lost", "stray deliveries"} {
		if c := check(t, rep, name); c.Got != 0 {
			t.Errorf("%s = %d", name, c.Got)
		}
	}
	if got := param(rep, "killed"); got != "node-2" {
		t.Errorf("killed = %q, want node-2", got)
	}
	if got := param(rep, "kill"); got != "kill node 2" {
		t.Errorf("kill = %q", got)
	}
	if got := metric(t, rep, "delivered"); got != 3000 {
		t.Errorf("delivered %g of 3000", got)
	}
	dead := metric(t, rep, "killed node's shards")
	if dead <= 0 || dead >= 32 || metric(t, rep, "killed node's shards fired again elsewhere") != dead {
		t.Errorf("shards: %+v", rep.Metrics)
	}
	first, last := metric(t, rep, "kill → first of its timers fired elsewhere"), metric(t, rep, "kill → last of its overdue timers fired elsewhere")
	if first <= 0 || last < first {
		t.Errorf("kill → first %g ms, last %g ms", first, last)
	}
	d, o := dist(t, rep, "lateness, killed node's timers (not delivered before the kill)"), dist(t, rep, "lateness, other nodes' timers (due after the kill)")
	if d.Count == 0 || o.Count == 0 || d.Count+o.Count > 3000 {
		t.Errorf("lateness counted over %d of the killed node's timers and %d others'", d.Count, o.Count)
	}
}

// TestRecovery loads timers into a cluster of two and restarts both nodes,
// as crashes and restarts would: the run sees every shard served again
// by the new processes and the probe fire, and the timers are all there.
func TestRecovery(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, 2, deliveryDefaults)
	td := dialCluster(t, c)
	restart := Action{Name: "restart both", Do: func(context.Context) error {
		c.Kill(0)
		c.Kill(1)
		c.Restart(0)
		c.Restart(1)
		return nil
	}}
	rep, err := Run(context.Background(), "recovery", td,
		Config{Count: 5000, Lead: 500 * time.Millisecond, Duration: time.Minute, Tick: 50 * time.Millisecond, Restart: restart}, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	checkFilled(t, rep, "recovery")
	if err := rep.Err(); err != nil || rep.Interrupted {
		t.Fatalf("run failed: %v (interrupted %v)", err, rep.Interrupted)
	}
	for _, name := range []string{"early deliveries", "stray deliveries", "loaded timers missing after the restart"} {
		if c := check(t, rep, name); c.Got != 0 {
			t.Errorf("%s = %d", name, c.Got)
		}
	}
	if got := metric(t, rep, "timers loaded"); got != 5000 {
		t.Errorf("timers loaded = %g", got)
	}
	serving, probe := metric(t, rep, "restart → every shard serving"), metric(t, rep, "restart → probe fired")
	if serving <= 0 || probe <= 0 {
		t.Errorf("restart → serving %g ms, → probe %g ms", serving, probe)
	}
	if got := metric(t, rep, "timers held by the shards after the restart"); got < 5000 {
		t.Errorf("the shards hold %g timers after the restart, want the 5000 loaded at least", got)
	}
	if !hasMetric(rep, "probe lateness") {
		t.Errorf("no probe lateness: %+v", rep.Metrics)
	}
	// The run removed what it loaded.
	deadline := time.Now().Add(30 * time.Second)
	for {
		l, err := td.Layout(context.Background())
		held, all := l.timers()
		if err == nil && all && held == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the run the shards hold %d timers (all serving %v, err %v)", held, all, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestScenarioNeedsCluster: failover and recovery refuse a target with no
// shard map, and a config without its action.
func TestScenarioNeedsCluster(t *testing.T) {
	t.Parallel()
	kill := Action{Name: "k", Do: func(context.Context) error { return nil }}
	if _, err := Run(context.Background(), "failover", newMemTarget(), Config{Kill: kill}, Progress{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("failover on a target without shards: %v, want ErrUnsupported", err)
	}
	srv, cl := startTimerd(t)
	td := NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{})
	if _, err := Run(context.Background(), "failover", td, Config{}, Progress{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--kill-cmd") {
		t.Errorf("failover without a kill: %v", err)
	}
	if _, err := Run(context.Background(), "recovery", td, Config{}, Progress{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "--restart-cmd") {
		t.Errorf("recovery without a restart: %v", err)
	}
	if _, err := Run(context.Background(), "failover", td, Config{Kill: kill, Spread: time.Second, KillAfter: time.Second}, Progress{}); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "KillAfter") {
		t.Errorf("a kill after the spread: %v", err)
	}
}
