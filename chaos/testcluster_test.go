package chaos

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	pb "github.com/timerd/timerd/api/timerd/v1"

	"github.com/timerd/timerd/internal/redistest"
)

// redisKind is the Redis a test cluster's nodes share.
type redisKind int

const (
	// redisStandalone is one redis-server with appendfsync always: every
	// acknowledged write survives its kill -9 and restart.
	redisStandalone redisKind = iota
	// redisEverysec is one redis-server with appendfsync everysec, as
	// production runs it: a kill -9 may lose the last second.
	redisEverysec
	// redisCluster is a Redis Cluster of three masters
	// (clusterOptions.RedisReplicas replicas each).
	redisCluster
)

// clusterOptions shapes a test cluster. The zero value of each field
// takes its default.
type clusterOptions struct {
	// Nodes is how many timerd processes start (default 3).
	Nodes int
	// Shards is the cluster's shard count (default 64: a cluster's default
	// is 1,024; 64 keep the start, the stable wait and a takeover short
	// while every node still holds a score of shards).
	Shards int
	// LeaseTTL is every node's --lease-ttl (default 2s; timerd's is 3s),
	// so a dead node's shards move within a few seconds.
	LeaseTTL time.Duration
	// Redis is the Redis the nodes share (default redisStandalone).
	Redis redisKind
	// RedisReplicas is the replicas per master of a redisCluster.
	RedisReplicas int
	// Name names node i (default node-i). Two nodes may share a name.
	Name func(i int) string
	// NodeArgs adds flags to node i's command line, after the cluster's
	// own (a later flag wins).
	NodeArgs func(i int) []string
	// RedisURL makes the --redis URL of the Redis at addr (host:port; a
	// comma-separated list for a Redis Cluster), e.g. through a proxy.
	// Default: redis://addr (redis+cluster://addr for a cluster).
	RedisURL func(addr string) string
	// Addrs gives node i's gossip and gRPC addresses (host:port). It is
	// called at every start of node i; a restart keeps the gossip address
	// of the first start and takes the gRPC one. Default: free ports of
	// 127.0.0.1.
	Addrs func(i int) (gossip, grpc string)
	// Command rewrites node i's command line (argv[0] is the timerd
	// binary), e.g. to prefix "ip netns exec <ns>". The process it starts
	// must become timerd (exec), so signals reach it.
	Command func(i int, argv []string) []string
}

func (o clusterOptions) withDefaults() clusterOptions {
	if o.Nodes == 0 {
		o.Nodes = 3
	}
	if o.Shards == 0 {
		o.Shards = 64
	}
	if o.LeaseTTL == 0 {
		o.LeaseTTL = 2 * time.Second
	}
	if o.Name == nil {
		o.Name = func(i int) string { return fmt.Sprintf("node-%d", i) }
	}
	if o.RedisURL == nil {
		if o.Redis == redisCluster {
			o.RedisURL = func(addr string) string { return "redis+cluster://" + addr }
		} else {
			o.RedisURL = redisURL
		}
	}
	return o
}

// testCluster is a Redis and timerd processes forming one cluster, with
// the controls a scenario's faults need. Node i keeps its index, name and
// addresses across restarts, so conn(i) stays valid.
type testCluster struct {
	r    *run
	opts clusterOptions

	// redis is the standalone Redis (nil on a Redis Cluster), rcluster
	// the Redis Cluster (nil otherwise).
	redis    *redistest.Server
	rcluster *redistest.Cluster
	// redisArgs are the flags every node gets: --redis, --join, ...
	redisArgs []string
	gossip    []string

	mu sync.Mutex
	// nodes and conns are indexed by node; down marks the nodes a fault
	// stopped on purpose (killed, stopped, terminated), which must not
	// count as having died unasked; onAdd are called with the index of a
	// node add started.
	nodes []*node
	conns []*grpc.ClientConn
	down  map[int]string
	onAdd []func(i int)
}

// startCluster starts the Redis and the nodes of opts and returns once
// every node is ready and the shard map stable.
func startCluster(r *run, opts clusterOptions) *testCluster {
	t := r.t
	t.Helper()
	opts = opts.withDefaults()
	c := &testCluster{r: r, opts: opts, down: make(map[int]string)}
	began := time.Now()
	var addr string
	switch opts.Redis {
	case redisStandalone:
		c.redis = redistest.Start(t, redistest.AppendFsync("always"))
		addr = c.redis.Addr()
	case redisEverysec:
		c.redis = redistest.Start(t, redistest.AppendFsync("everysec"))
		addr = c.redis.Addr()
	case redisCluster:
		c.rcluster = redistest.StartRedisCluster(t, 3, opts.RedisReplicas)
		addr = strings.Join(c.rcluster.Addrs(), ",")
	default:
		t.Fatalf("clusterOptions.Redis = %d: unknown", opts.Redis)
	}
	// Every node is told the first nodes' gossip addresses with --join.
	for i := range opts.Nodes {
		g, _ := c.addrs(i)
		c.gossip = append(c.gossip, g)
	}
	c.redisArgs = []string{"--redis", opts.RedisURL(addr), "--join", strings.Join(c.gossip, ","),
		"--lease-ttl", opts.LeaseTTL.String(), "--shards", strconv.Itoa(opts.Shards)}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range c.all() {
				t.Logf("%s (%s) log tail, %s:\n%s", n.name, strings.Join(n.args, " "), n.logPath, n.logTail())
			}
		}
	})
	// The first node creates the cluster (and fixes its shard count);
	// the others join it.
	c.launch(0, c.gossip[0], c.grpcAddr(0))
	c.node(0).waitReady(t)
	for i := 1; i < opts.Nodes; i++ {
		c.launch(i, c.gossip[i], c.grpcAddr(i))
	}
	for i := 1; i < opts.Nodes; i++ {
		c.node(i).waitReady(t)
	}
	owners := c.waitStable()
	r.logf("redis %v at %s; %d nodes serve %d shards (%s) after %v", opts.Redis, addr, opts.Nodes, opts.Shards,
		shardsPerNode(owners), time.Since(began).Round(time.Millisecond))
	return c
}

func (k redisKind) String() string {
	switch k {
	case redisStandalone:
		return "standalone (appendfsync always)"
	case redisEverysec:
		return "standalone (appendfsync everysec)"
	case redisCluster:
		return "cluster (3 masters)"
	}
	return "redis?"
}

// grpcAddr returns a gRPC address for node i's next start: Addrs's, or a
// free port of 127.0.0.1.
func (c *testCluster) grpcAddr(i int) string {
	if c.opts.Addrs != nil {
		_, a := c.opts.Addrs(i)
		return a
	}
	return c.freeAddr()
}

func (c *testCluster) freeAddr() string {
	a, err := freeAddr()
	if err != nil {
		c.r.t.Fatal(err)
	}
	return a
}

// addrs returns node i's gossip and gRPC addresses for a start.
func (c *testCluster) addrs(i int) (gossip, grpc string) {
	if c.opts.Addrs != nil {
		return c.opts.Addrs(i)
	}
	return c.freeAddr(), c.freeAddr()
}

// launch starts node i (a new one when i is the node count) with gossip
// address gossip and gRPC address grpcAddr.
func (c *testCluster) launch(i int, gossip, grpcAddr string) {
	t := c.r.t
	args := append([]string(nil), c.redisArgs...)
	if c.opts.NodeArgs != nil {
		args = append(args, c.opts.NodeArgs(i)...)
	}
	var wrap func([]string) []string
	if c.opts.Command != nil {
		wrap = func(argv []string) []string { return c.opts.Command(i, argv) }
	}
	name := c.opts.Name(i)
	n := startNode(t, c.r.bin, name, gossip, grpcAddr, filepath.Join(c.r.dir, fmt.Sprintf("node%d.log", i)), args, wrap)
	conn := dial(t, n.grpcAddr)
	c.mu.Lock()
	defer c.mu.Unlock()
	if i == len(c.nodes) {
		c.nodes = append(c.nodes, n)
		c.conns = append(c.conns, conn)
		return
	}
	c.nodes[i], c.conns[i] = n, conn
}

// size is how many nodes the cluster has had, running or not.
func (c *testCluster) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.nodes)
}

// node returns node i.
func (c *testCluster) node(i int) *node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// conn returns the client connection to node i (to its newest process,
// after a restart).
func (c *testCluster) conn(i int) *grpc.ClientConn {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conns[i]
}

// all returns every node's current process.
func (c *testCluster) all() []*node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*node(nil), c.nodes...)
}

// up returns the indexes of the nodes no fault has taken down.
func (c *testCluster) up() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	var up []int
	for i := range c.nodes {
		if _, ok := c.down[i]; !ok {
			up = append(up, i)
		}
	}
	return up
}

func (c *testCluster) setDown(i int, why string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if why == "" {
		delete(c.down, i)
	} else {
		c.down[i] = why
	}
}

// kill9 kills node i with SIGKILL, as kill -9 does, and waits for it to
// exit.
func (c *testCluster) kill9(i int) {
	n := c.node(i)
	c.setDown(i, "killed")
	if err := n.kill9(); err != nil {
		c.r.t.Fatalf("kill -9 %s: %v", n.name, err)
	}
	c.r.logf("killed %s (pid %d) with SIGKILL: %v", n.name, n.cmd.Process.Pid, n.exitState())
}

// stop stops node i with SIGSTOP: it runs no more, its sockets stay open.
func (c *testCluster) stop(i int) {
	n := c.node(i)
	c.setDown(i, "stopped")
	if err := stopGroup(n.cmd.Process.Pid); err != nil {
		c.r.t.Fatalf("SIGSTOP %s: %v", n.name, err)
	}
	c.r.logf("stopped %s (pid %d) with SIGSTOP", n.name, n.cmd.Process.Pid)
}

// cont resumes node i, stopped by stop, with SIGCONT.
func (c *testCluster) cont(i int) {
	n := c.node(i)
	if err := contGroup(n.cmd.Process.Pid); err != nil {
		c.r.t.Fatalf("SIGCONT %s: %v", n.name, err)
	}
	c.setDown(i, "")
	c.r.logf("resumed %s (pid %d) with SIGCONT", n.name, n.cmd.Process.Pid)
}

// terminate stops node i with SIGTERM, a graceful leave, and waits for it
// to exit (at most terminateTimeout, then kills it and fails the test).
func (c *testCluster) terminate(i int) {
	n := c.node(i)
	c.setDown(i, "terminated")
	if err := termGroup(n.cmd.Process.Pid); err != nil {
		c.r.t.Fatalf("SIGTERM %s: %v", n.name, err)
	}
	select {
	case <-n.exited:
		c.r.logf("terminated %s (pid %d) with SIGTERM: %v", n.name, n.cmd.Process.Pid, n.exitState())
	case <-time.After(terminateTimeout):
		n.kill()
		c.r.t.Fatalf("%s still running %v after SIGTERM", n.name, terminateTimeout)
	}
}

// terminateTimeout bounds a graceful stop: the node hands its shards
// over and drains its streams first.
const terminateTimeout = 60 * time.Second

// restart starts node i again, after a kill9 or terminate, with its name
// and gossip address, and waits until it is ready.
func (c *testCluster) restart(i int) {
	old := c.node(i)
	if old.running() {
		c.r.t.Fatalf("restart %s: still running", old.name)
	}
	c.launch(i, old.gossipAddr, c.grpcAddr(i))
	c.node(i).waitReady(c.r.t)
	c.setDown(i, "")
	c.r.logf("restarted %s (pid %d)", old.name, c.node(i).cmd.Process.Pid)
}

// add starts a new node that joins the cluster, waits until it is ready,
// tells the onAdd hooks (the subscribers) and returns its index.
func (c *testCluster) add() int { return c.addNode(true) }

// addServing is add without the wait for ready: it returns once the new
// node serves gRPC, for a node that may never be ready.
func (c *testCluster) addServing() int { return c.addNode(false) }

func (c *testCluster) addNode(ready bool) int {
	i := c.size()
	g, a := c.addrs(i)
	c.launch(i, g, a)
	if ready {
		c.node(i).waitReady(c.r.t)
	}
	c.mu.Lock()
	hooks := append([]func(int){}, c.onAdd...)
	c.mu.Unlock()
	for _, h := range hooks {
		h(i)
	}
	c.r.logf("added %s (pid %d)", c.node(i).name, c.node(i).cmd.Process.Pid)
	return i
}

// whenAdded calls f with the index of every node add starts.
func (c *testCluster) whenAdded(f func(i int)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onAdd = append(c.onAdd, f)
}

// waitStable waits until every node that is up sees all of them as
// active members and every shard served by exactly one of them, the one
// the ring assigns it to, and returns that shard map. It fails the test
// after stableTimeout.
func (c *testCluster) waitStable() []shardOwner {
	t := c.r.t
	t.Helper()
	deadline := time.Now().Add(stableTimeout)
	var why string
	for time.Now().Before(deadline) && c.r.ctx.Err() == nil {
		var owners []shardOwner
		if owners, why = c.unstable(); why == "" {
			return owners
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("cluster not stable within %v: %s", stableTimeout, why)
	return nil
}

// unstable returns the shard map when the cluster is stable, or says why
// it is not.
func (c *testCluster) unstable() ([]shardOwner, string) {
	ctx, cancel := context.WithTimeout(c.r.ctx, 5*time.Second)
	defer cancel()
	up := c.up()
	var owners []shardOwner
	for _, i := range up {
		name := c.node(i).name
		cs := pb.NewClusterServiceClient(c.conn(i))
		mr, err := cs.Members(ctx, &pb.MembersRequest{})
		if err != nil {
			return nil, fmt.Sprintf("%s: Members: %v", name, err)
		}
		active := 0
		for _, m := range mr.GetMembers() {
			if m.GetState() == pb.MemberState_MEMBER_STATE_ALIVE && m.GetNodeState() == pb.NodeState_NODE_STATE_ACTIVE {
				active++
			}
		}
		if active != len(up) {
			return nil, fmt.Sprintf("%s sees %d active members of %d", name, active, len(up))
		}
		sm, err := cs.ShardMap(ctx, &pb.ShardMapRequest{})
		if err != nil {
			return nil, fmt.Sprintf("%s: ShardMap: %v", name, err)
		}
		got := make([]shardOwner, sm.GetShardCount())
		entries := 0
		for _, o := range sm.GetShards() {
			if o.GetState() != pb.ShardState_SHARD_STATE_SERVING || o.GetOwner() == "" || o.GetOwner() != o.GetAssigned() {
				return nil, fmt.Sprintf("%s: shard %d is %v on %q, assigned to %q", name,
					o.GetShard(), o.GetState(), o.GetOwner(), o.GetAssigned())
			}
			if o.GetShard() >= sm.GetShardCount() {
				return nil, fmt.Sprintf("%s: ShardMap has shard %d of %d", name, o.GetShard(), sm.GetShardCount())
			}
			got[o.GetShard()] = shardOwner{o.GetOwner(), o.GetEpoch()}
			entries++
		}
		if entries != int(sm.GetShardCount()) || entries != c.opts.Shards {
			return nil, fmt.Sprintf("%s: ShardMap has %d entries for %d shards, want %d", name, entries, sm.GetShardCount(), c.opts.Shards)
		}
		for s := range owners { // the previous node's map
			if owners[s] != got[s] {
				return nil, fmt.Sprintf("shard %d: %s says %v, another node %v", s, name, got[s], owners[s])
			}
		}
		owners = got
	}
	return owners, ""
}

// shardMap asks the first node that answers, of those up, for the whole
// shard map.
func (c *testCluster) shardMap() ([]shardOwner, error) {
	var err error
	for _, i := range c.up() {
		var owners []shardOwner
		if owners, err = shardMap(c.r.ctx, c.conn(i)); err == nil {
			return owners, nil
		}
	}
	return nil, fmt.Errorf("no node up answered ShardMap: %w", err)
}

// mostShards returns the index of the node up that serves the most
// shards in owners (the lowest index on a tie).
func (c *testCluster) mostShards(owners []shardOwner) int {
	count := make(map[string]int)
	for _, o := range owners {
		count[o.owner]++
	}
	best, most := -1, -1
	for _, i := range c.up() {
		if n := count[c.node(i).name]; n > most {
			best, most = i, n
		}
	}
	return best
}

// check adds a problem to v for every node that exited unasked.
func (c *testCluster) check(v *verdict) {
	for i, n := range c.all() {
		c.mu.Lock()
		_, asked := c.down[i]
		c.mu.Unlock()
		if !asked && !n.running() {
			v.problem("%s exited unasked: %v", n.name, n.exitState())
		}
	}
}
