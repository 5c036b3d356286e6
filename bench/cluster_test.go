package bench

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/clustertest"
	"github.com/timerd/timerd/server"
)

// This file runs the scenarios against in-process clusters. It asserts
// counts and correctness, never speed.

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
