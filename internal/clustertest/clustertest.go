// Package clustertest starts in-process timerd clusters for tests: real
// nodes (server.Server) with real memberlist gossip and real gRPC on
// 127.0.0.1 with free ports, sharing one real redis-server or a real Redis
// Cluster of three masters (StartOn). It owns the nodes' lifecycles: every
// node it started is stopped when the test ends.
//
// It must not be imported outside tests.
package clustertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/internal/redistest"
	"github.com/timerd/timerd/internal/scrape"
	"github.com/timerd/timerd/server"
)

// Option changes the configuration of every node of a cluster.
type Option func(*server.Config)

// Redis is the kind of Redis deployment a cluster's nodes share.
type Redis int

const (
	// Standalone is one redis-server.
	Standalone Redis = iota
	// RedisCluster is a Redis Cluster of three masters without replicas,
	// which the nodes reach through a list of seeds, so that each master
	// holds some of the shards.
	RedisCluster
)

// Redises lists every kind of Redis, for a test that runs on each.
var Redises = []Redis{Standalone, RedisCluster}

func (r Redis) String() string {
	if r == RedisCluster {
		return "redis-cluster"
	}
	return "standalone"
}

// Cluster is a set of in-process nodes on one Redis deployment. Its
// methods may be called concurrently.
type Cluster struct {
	tb testing.TB
	// Redis is the redis-server of a Standalone cluster; nil on a Redis
	// Cluster.
	Redis *redistest.Server
	// RedisCluster is the Redis Cluster of a RedisCluster cluster; nil on
	// a standalone Redis.
	RedisCluster *redistest.Cluster
	redisURL     string
	opts         []Option
	// dial are the options of the connections the Cluster makes to its
	// nodes to check them.
	dial []grpc.DialOption

	mu sync.Mutex
	// nodes are by index, in start order; a stopped node stays, and
	// stopped says which.
	nodes   []*server.Server
	stopped []bool
}

// Start starts a redis-server and n nodes, each joining the first, and
// waits until every node serves the shards the ring gives it.
func Start(tb testing.TB, n int, opts ...Option) *Cluster {
	tb.Helper()
	return StartOn(tb, Standalone, n, opts...)
}

// StartOn is Start on the given kind of Redis.
func StartOn(tb testing.TB, r Redis, n int, opts ...Option) *Cluster {
	tb.Helper()
	return start(tb, r, n, []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts)
}

// StartDial is Start for nodes that need more than a plaintext
// connection: the Cluster reaches its nodes with dial (their TLS
// credentials and a token, say).
func StartDial(tb testing.TB, n int, dial []grpc.DialOption, opts ...Option) *Cluster {
	tb.Helper()
	return start(tb, Standalone, n, dial, opts)
}

func start(tb testing.TB, r Redis, n int, dial []grpc.DialOption, opts []Option) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb, opts: opts, dial: dial}
	switch r {
	case RedisCluster:
		c.RedisCluster = redistest.StartRedisCluster(tb, 3, 0)
		c.redisURL = "redis://" + strings.Join(c.RedisCluster.Addrs(), ",")
	default:
		c.Redis = redistest.Start(tb)
		c.redisURL = "redis://" + c.Redis.Addr()
	}
	for range n {
		c.Add()
	}
	c.WaitStable()
	return c
}

// Config returns the configuration of node i of this cluster.
func (c *Cluster) Config(i int) server.Config {
	cfg := server.LocalConfig(c.tb.TempDir())
	cfg.NodeName = fmt.Sprintf("node-%d", i)
	cfg.RedisURL = c.redisURL
	cfg.Shards = 32
	cc := cluster.LocalConfig()
	cc.Seeds = c.seeds()
	cfg.Cluster = &cc
	for _, o := range c.opts {
		o(&cfg)
	}
	return cfg
}

// seeds returns the gossip addresses of the running nodes.
func (c *Cluster) seeds() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for i, n := range c.nodes {
		if !c.stopped[i] {
			out = append(out, n.GossipAddr())
		}
	}
	return out
}

// Add starts one more node, joining the running ones, and returns it
// once it has started (it may still be taking its shards).
func (c *Cluster) Add() *server.Server {
	c.tb.Helper()
	c.mu.Lock()
	i := len(c.nodes)
	c.mu.Unlock()
	srv, err := server.New(c.Config(i))
	if err != nil {
		c.tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		c.tb.Fatalf("start node %d: %v", i, err)
	}
	c.mu.Lock()
	c.nodes = append(c.nodes, srv)
	c.stopped = append(c.stopped, false)
	c.mu.Unlock()
	c.tb.Cleanup(func() { c.stop(i, false) })
	return srv
}

// Restart starts node i again after Kill or Leave, as its process would
// be restarted: under its name, at its gRPC and gossip addresses, joining
// the running nodes, with a new incarnation. It returns once the node has
// started (it may still be taking its shards); the node is stopped when
// the test ends.
func (c *Cluster) Restart(i int) *server.Server {
	c.tb.Helper()
	c.mu.Lock()
	old, stopped := c.nodes[i], c.stopped[i]
	c.mu.Unlock()
	if !stopped {
		c.tb.Fatalf("restart node %d: it is running", i)
	}
	cfg := c.Config(i)
	cfg.GRPCAddr = old.GRPCAddr()
	cfg.Cluster.BindAddr = old.GossipAddr()
	srv, err := server.New(cfg)
	if err != nil {
		c.tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		c.tb.Fatalf("restart node %d: %v", i, err)
	}
	c.mu.Lock()
	c.nodes[i], c.stopped[i] = srv, false
	c.mu.Unlock()
	return srv
}

// Node returns node i.
func (c *Cluster) Node(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Live returns the running nodes.
func (c *Cluster) Live() []*server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*server.Server
	for i, n := range c.nodes {
		if !c.stopped[i] {
			out = append(out, n)
		}
	}
	return out
}

// Addrs returns the gRPC addresses of the running nodes.
func (c *Cluster) Addrs() []string {
	var out []string
	for _, n := range c.Live() {
		out = append(out, n.GRPCAddr())
	}
	return out
}

// MetricSum scrapes /metrics of every running node and returns the sum
// of the samples of the metric name over its labels and the nodes.
func (c *Cluster) MetricSum(name string) float64 {
	c.tb.Helper()
	var sum float64
	for _, n := range c.Live() {
		v, err := scrape.Sum(context.Background(), n.HTTPAddr(), name)
		if err != nil {
			c.tb.Fatal(err)
		}
		sum += v
	}
	return sum
}

// Leave stops node i gracefully: it hands its shards over and leaves.
func (c *Cluster) Leave(i int) { c.stop(i, false) }

// Kill stops node i as a crash would: no leave, no release, no flush.
func (c *Cluster) Kill(i int) { c.stop(i, true) }

func (c *Cluster) stop(i int, kill bool) {
	c.mu.Lock()
	if c.stopped[i] {
		c.mu.Unlock()
		return
	}
	c.stopped[i] = true
	srv := c.nodes[i]
	c.mu.Unlock()
	var err error
	if kill {
		err = srv.Kill()
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err = srv.Close(ctx)
	}
	if err != nil {
		c.tb.Errorf("stop node %d (kill %v): %v", i, kill, err)
	}
}

// WaitStable waits, at most a minute, until every running node sees every
// other as an active member, is ready, and every shard is served by
// exactly one of them, as each node's own part of the shard map says.
func (c *Cluster) WaitStable() {
	c.tb.Helper()
	deadline := time.Now().Add(time.Minute)
	var why string
	for time.Now().Before(deadline) {
		if why = c.unstable(); why == "" {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.tb.Fatalf("cluster not stable after a minute: %s", why)
}

// unstable says why the cluster is not stable, or "".
func (c *Cluster) unstable() string {
	live := c.Live()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var shards uint32
	served := map[uint32]string{}
	for _, n := range live {
		if !n.Ready() {
			return n.GRPCAddr() + " not ready"
		}
		conn, err := grpc.NewClient(n.GRPCAddr(), c.dial...)
		if err != nil {
			return err.Error()
		}
		cs := pb.NewClusterServiceClient(conn)
		mr, err := cs.Members(ctx, &pb.MembersRequest{})
		if err != nil {
			conn.Close()
			return err.Error()
		}
		active := 0
		for _, m := range mr.GetMembers() {
			if m.GetNodeState() == pb.NodeState_NODE_STATE_ACTIVE {
				active++
			}
		}
		if active != len(live) || len(mr.GetMembers()) != len(live) {
			conn.Close()
			return fmt.Sprintf("%s sees %d members, %d active, of %d", n.GRPCAddr(), len(mr.GetMembers()), active, len(live))
		}
		sm, err := cs.ShardMap(ctx, &pb.ShardMapRequest{Local: true})
		conn.Close()
		if err != nil {
			return err.Error()
		}
		shards = sm.GetShardCount()
		for _, o := range sm.GetShards() {
			if o.GetOwner() == "" {
				continue
			}
			if o.GetState() != pb.ShardState_SHARD_STATE_SERVING {
				return fmt.Sprintf("shard %d is %v on %s", o.GetShard(), o.GetState(), o.GetOwner())
			}
			if prev, ok := served[o.GetShard()]; ok {
				return fmt.Sprintf("shard %d served by %s and %s", o.GetShard(), prev, o.GetOwner())
			}
			served[o.GetShard()] = o.GetOwner()
		}
	}
	if uint32(len(served)) != shards {
		return fmt.Sprintf("%d of %d shards served", len(served), shards)
	}
	return ""
}
