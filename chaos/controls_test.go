package chaos

import (
	"context"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/netfault"
)

// TestClusterControls drives the harness's own controls over real
// processes and checks that what they do leaves the delivery guarantee
// whole: a Redis Cluster, and a standalone Redis reached through a proxy
// (the RedisURL hook); a node terminated and restarted, one added, one
// stopped and resumed, one killed and restarted; a workload that also
// reschedules and cancels. It needs TIMERD_CHAOS=1.
func TestClusterControls(t *testing.T) {
	if os.Getenv("TIMERD_CHAOS") != "1" {
		t.Skip("real processes: set TIMERD_CHAOS=1 to run it (make chaos)")
	}
	for _, tc := range []struct {
		name     string
		redis    redisKind
		proxy    bool
		controls bool
	}{
		{name: "redis-cluster", redis: redisCluster},
		{name: "everysec-through-proxy", redis: redisEverysec, proxy: true, controls: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
			defer cancel()
			r := &run{t: t, name: tc.name, seed: 1, rng: rand.New(rand.NewPCG(1, 2)), ctx: ctx, dir: t.TempDir(),
				bin: timerdBinary(t), ledger: newLedger(), began: time.Now()}
			opts := clusterOptions{Redis: tc.redis}
			var proxied string
			if tc.proxy {
				opts.RedisURL = func(addr string) string {
					p, err := netfault.Listen(addr)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { _ = p.Close() })
					proxied = p.Addr()
					return redisURL(p.Addr())
				}
			}
			c := startCluster(r, opts)
			if tc.proxy && (proxied == "" || c.redisArgs[1] != redisURL(proxied)) {
				t.Fatalf("the nodes' --redis is %q, want the proxy's %q", c.redisArgs[1], proxied)
			}
			subscribe(r, c, subscribeConfig{})
			w := newWorkload(r, c, workloadConfig{Timers: 4_000, FirstDue: 2 * time.Second, Spread: 15 * time.Second,
				LeadMin: 3 * time.Second, LeadMax: 6 * time.Second, Reschedule: 0.2, Cancel: 0.2})
			w.begin()
			if tc.controls {
				c.terminate(0)
				c.restart(0)
				added := c.add()
				c.stop(2)
				time.Sleep(500 * time.Millisecond)
				c.cont(2)
				c.kill9(1)
				c.restart(1)
				if c.size() != 4 || added != 3 || !c.node(1).running() || !c.node(0).running() {
					t.Fatalf("after the controls: %d nodes, added %d, node-0 running %v, node-1 running %v",
						c.size(), added, c.node(0).running(), c.node(1).running())
				}
				owners := c.waitStable()
				if got := shardsPerNode(owners); len(c.up()) != 4 {
					t.Fatalf("up %v after the controls (%s)", c.up(), got)
				}
			}
			if !w.wait() {
				t.Fatalf("the batches did not all end within the run's bound")
			}
			r.drain(w.lastDue(), 40*time.Second)
			v := r.judge()
			c.check(v)
			w.check(v)
			v.seal()
			t.Log(v.line())
			if !v.Pass || v.Rescheduled == 0 || v.Cancelled == 0 {
				t.Errorf("want a pass with timers rescheduled and cancelled: %s\n%v\n%v", v.line(), v.Problems, v.Examples)
			}
		})
	}
}
