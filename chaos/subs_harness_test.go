package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/timerd/timerd/internal/redistest"
)

// scenarioEnv is what a scenario of the subscriber and cancel tests runs
// on: its seed and the generator drawn from it, a context bounding the
// run, and a stable cluster of nodeCount timerd processes on one
// redis-server, with a client connection to each.
type scenarioEnv struct {
	seed  uint64
	rng   *rand.Rand
	ctx   context.Context
	nodes []*node
	conns []*grpc.ClientConn
}

// runScenario runs body on a fresh cluster when TIMERD_CHAOS=1, and on a
// failure prints the seed and the command that replays the run.
func runScenario(t *testing.T, test string, body func(t *testing.T, e *scenarioEnv)) {
	if os.Getenv("TIMERD_CHAOS") != "1" {
		t.Skip("a fault test over real processes: set TIMERD_CHAOS=1 to run it (make chaos)")
	}
	seed := chaosSeed(t)
	replay := fmt.Sprintf("TIMERD_CHAOS=1 TIMERD_CHAOS_SEED=%d go test -count=1 -v ./chaos/ -run '^%s$'", seed, test)
	t.Logf("seed %d (replay: %s)", seed, replay)
	t.Cleanup(func() {
		if t.Failed() {
			fmt.Printf("chaos: FAILED with seed %d; replay it with:\n  %s\n", seed, replay)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	began := time.Now()
	dir := t.TempDir()
	bin := buildTimerd(t, dir)
	redis := redistest.Start(t)
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
	e := &scenarioEnv{seed: seed, rng: rand.New(rand.NewPCG(seed, 0x7469_6d65_7264)), ctx: ctx, nodes: make([]*node, nodeCount)}
	for i := range e.nodes {
		name := fmt.Sprintf("node-%d", i)
		e.nodes[i] = startNode(t, bin, name, gossip[i], filepath.Join(dir, name+".log"), args)
		if i == 0 {
			e.nodes[0].waitReady(t) // the first node creates the cluster
		}
	}
	for _, n := range e.nodes[1:] {
		n.waitReady(t)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range e.nodes {
				t.Logf("%s log tail, %s:\n%s", n.name, n.logPath, n.logTail())
			}
		}
	})
	for _, n := range e.nodes {
		e.conns = append(e.conns, dial(t, n.grpcAddr))
	}
	stable := waitStable(t, e.nodes, e.conns)
	t.Logf("%d nodes serve %d shards (%s) after %v", nodeCount, shardCount, shardsPerNode(stable), time.Since(began).Round(time.Millisecond))
	body(t, e)
	t.Logf("the whole test took %v", time.Since(began).Round(time.Millisecond))
}

// exitedUnasked names the nodes that exited, as problems.
func (e *scenarioEnv) exitedUnasked() []string {
	var problems []string
	for _, n := range e.nodes {
		if !n.running() {
			problems = append(problems, fmt.Sprintf("%s exited unasked: %v", n.name, n.exitState()))
		}
	}
	return problems
}
