package chaos

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/timerd/timerd/internal/redistest"
)

// The scenario of TestKill9. Three nodes share 64 shards (a cluster's
// default is 1,024; 64 keep the start, the stable wait and the takeover
// short while every node still holds a score of shards) under 2s leases
// (the default is 3s), so a dead node's shards move within a few
// seconds.
const (
	nodeCount  = 3
	shardCount = 64
	leaseTTL   = 2 * time.Second
	namespace  = "chaos"
	topic      = "chaos"
	// killAt is when, after the start of the run, a node is killed,
	// give or take killJitter.
	killAt     = 15 * time.Second
	killJitter = 2 * time.Second
	// A subscription keeps at most maxInFlight deliveries unacked, and a
	// delivery unacked for ackTimeout (one sent on a stream that broke)
	// is sent again.
	maxInFlight = 1000
	ackTimeout  = 5 * time.Second
	// drainFor bounds the wait, after the last due time and the last
	// batch, for the acknowledged timers still undelivered; settleFor is
	// the wait after the last of them, for late duplicates and strays.
	drainFor  = 40 * time.Second
	settleFor = 2 * time.Second
	// runTimeout bounds the whole test.
	runTimeout = 4 * time.Minute
)

// load is the client's part of the scenario: 50,000 timers due over 30s,
// in batches of 100 to 500 sent 0.5s to 8s ahead of their earliest due
// time, so that the kill finds timers pending on the victim and batches
// on their way to it.
var load = loadConfig{
	timers:      50_000,
	firstDue:    time.Second,
	spread:      30 * time.Second,
	minBatch:    100,
	maxBatch:    500,
	leadMin:     500 * time.Millisecond,
	leadMax:     8 * time.Second,
	retryFor:    20 * time.Second,
	callTimeout: 3 * time.Second,
	concurrency: 32,
}

// TestKill9 runs a real redis-server and three timerd processes as a
// cluster, schedules 50,000 timers over them while a subscriber on every
// node acks what it receives, kills one node with SIGKILL midway, and
// checks that every acknowledged timer was delivered at least once, none
// early, nothing unexpected. It prints the verdict, the failover figures
// and the verdict as JSON.
func TestKill9(t *testing.T) {
	if os.Getenv("TIMERD_CHAOS") != "1" {
		t.Skip("a fault test over real processes that takes about a minute: set TIMERD_CHAOS=1 to run it (make chaos)")
	}
	seed := chaosSeed(t)
	replay := fmt.Sprintf("TIMERD_CHAOS=1 TIMERD_CHAOS_SEED=%d go test -count=1 -v ./chaos/ -run '^TestKill9$'", seed)
	t.Logf("seed %d (replay: %s)", seed, replay)
	// Registered first, so it runs last, after the nodes are gone.
	t.Cleanup(func() {
		if t.Failed() {
			fmt.Printf("chaos: FAILED with seed %d; replay it with:\n  %s\n", seed, replay)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0x7469_6d65_7264)) // "timerd"
	victimIndex := rng.IntN(nodeCount)
	killOffset := killAt - killJitter + time.Duration(rng.Int64N(int64(2*killJitter)+1))
	batches := planLoad(rng, load, nodeCount)

	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	bin := buildTimerd(t, dir)
	redis := redistest.Start(t)
	t.Logf("built timerd, started redis-server on %s (appendonly yes) in %v", redis.Addr(), time.Since(began).Round(time.Millisecond))

	// The gossip addresses are picked first, so every node can be told
	// all three with --join.
	gossip := make([]string, nodeCount)
	for i := range gossip {
		a, err := freeGossipAddr()
		if err != nil {
			t.Fatal(err)
		}
		gossip[i] = a
	}
	args := []string{"--redis", redisURL(redis.Addr()), "--join", strings.Join(gossip, ","),
		"--lease-ttl", leaseTTL.String(), "--shards", strconv.Itoa(shardCount)}
	nodes := make([]*node, nodeCount)
	start := func(i int) {
		name := fmt.Sprintf("node-%d", i)
		nodes[i] = startNode(t, bin, name, gossip[i], filepath.Join(dir, name+".log"), args)
	}
	// The first node creates the cluster (and fixes its shard count);
	// the others join it.
	start(0)
	nodes[0].waitReady(t)
	for i := 1; i < nodeCount; i++ {
		start(i)
	}
	for _, n := range nodes[1:] {
		n.waitReady(t)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range nodes {
				t.Logf("%s (%s) log tail, %s:\n%s", n.name, strings.Join(n.args, " "), n.logPath, n.logTail())
			}
		}
	})
	conns := make([]*grpc.ClientConn, nodeCount)
	for i, n := range nodes {
		conns[i] = dial(t, n.grpcAddr)
	}
	stable := waitStable(t, nodes, conns)
	t.Logf("%d nodes serve %d shards (%s) after %v", nodeCount, shardCount, shardsPerNode(stable), time.Since(began).Round(time.Millisecond))

	subs := subscribe(namespace, topic, maxInFlight, ackTimeout, conns)
	t.Cleanup(subs.stop)

	victim := nodes[victimIndex]
	// Due times are offsets from runStart, to the millisecond: what the
	// server keeps.
	runStart := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	ld := newLoader(load, seed, namespace, topic, conns, runStart)
	loaded := make(chan struct{})
	go func() {
		defer close(loaded)
		ld.run(ctx, batches)
	}()
	t.Logf("run started: %s timers in %d batches due over %v; %s to be killed at +%v",
		itoa(load.timers), len(batches), load.spread, victim.name, killOffset.Round(time.Millisecond))

	// The kill. The shard map just before it says which shards the
	// victim served, and under which epoch.
	if !sleepUntil(ctx, runStart.Add(killOffset-200*time.Millisecond)) {
		t.Fatalf("run timed out before the kill")
	}
	survivor := conns[(victimIndex+1)%nodeCount]
	before, err := shardMap(ctx, survivor)
	if err != nil || len(before) != shardCount {
		t.Logf("shard map before the kill: %v (%d shards); using the one from the start", err, len(before))
		before = stable
	}
	sleepUntil(ctx, runStart.Add(killOffset))
	killTime := time.Now()
	if err := victim.kill9(); err != nil {
		t.Fatalf("kill -9 %s: %v", victim.name, err)
	}
	t.Logf("killed %s (pid %d) with SIGKILL at +%v: %v", victim.name, victim.cmd.Process.Pid,
		killTime.Sub(runStart).Round(time.Millisecond), victim.exitState())

	// The drain: every batch has an outcome, then every acknowledged
	// timer is received, or drainFor passes after the last due time.
	select {
	case <-loaded:
	case <-ctx.Done():
		t.Fatalf("the batches did not all end within %v", runTimeout)
	}
	ld.res.mu.Lock()
	acked := ld.res.acked
	ld.res.mu.Unlock()
	deadline := runStart.Add(load.firstDue + load.spread)
	if now := time.Now(); now.After(deadline) {
		deadline = now
	}
	deadline = deadline.Add(drainFor)
	for time.Now().Before(deadline) && subs.missing(acked) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(settleFor)
	subs.stop()
	elapsed := time.Since(runStart)

	// The verdict.
	res := ld.res
	got := subs.deliveries()
	v := judge(res.attempted, res.acked, res.indeterminate, got)
	v.Seed = seed
	v.Killed = victim.name
	v.KillAtMS = killTime.Sub(runStart).Milliseconds()
	v.Failover = measureFailover(before, victim.name, killTime, res.acked, res.ackedAt, got)
	for i, n := range nodes {
		if i != victimIndex && !n.running() {
			v.Problems = append(v.Problems, fmt.Sprintf("%s exited unasked: %v", n.name, n.exitState()))
		}
	}
	if f := v.Failover; f.TakenOver != f.Shards {
		v.Problems = append(v.Problems, fmt.Sprintf("%d of the %d shards %s served were taken over", f.TakenOver, f.Shards, victim.name))
	}
	for _, m := range res.dueMismatch {
		v.Problems = append(v.Problems, "due time answered differently: "+m)
	}
	if len(v.Problems) > maxExamples {
		v.Problems = append(v.Problems[:maxExamples], fmt.Sprintf("and %d more", len(v.Problems)-maxExamples))
	}
	v.Pass = v.Pass && len(v.Problems) == 0

	t.Logf("client: %s Schedule calls; calls failed whole: %s; items sent again: %s; streams opened per node: %v",
		itoa(res.calls), codeCounts(res.rpcErrors), codeCounts(res.itemRetries), subs.opened())
	for _, id := range sortedKeys(res.indeterminate)[:min(5, len(res.indeterminate))] {
		t.Logf("indeterminate: %s: %s", id, res.indeterminate[id])
	}
	fmt.Println(v.line())
	fmt.Println(v.Failover.line(victim.name))
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("chaos verdict json: %s\n", js)
	t.Logf("run took %v (the whole test %v)", elapsed.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))

	if !v.Pass {
		t.Errorf("lost %d, early %d, unexpected %d, corrupt %d, other problems %d\n  %s",
			v.Lost, v.Early, v.Unexpected, v.Corrupt, len(v.Problems), strings.Join(append(v.Problems, v.Examples...), "\n  "))
	}
}

// chaosSeed returns TIMERD_CHAOS_SEED, or a random seed when it is unset.
func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("TIMERD_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TIMERD_CHAOS_SEED=%q: want an unsigned integer: %v", s, err)
		}
		return seed
	}
	var b [8]byte
	_, _ = crand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:]) >> 1 // fits an int64 too, for tools that read the JSON
}

// shardsPerNode says how many shards each node serves in owners.
func shardsPerNode(owners []shardOwner) string {
	n := make(map[string]int)
	for _, o := range owners {
		n[o.owner]++
	}
	var parts []string
	for _, name := range sortedKeys(n) {
		parts = append(parts, fmt.Sprintf("%s %d", name, n[name]))
	}
	return strings.Join(parts, ", ")
}

// codeCounts formats counts by gRPC code.
func codeCounts(m map[codes.Code]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%v %s", k, itoa(n)))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
