package cluster

import (
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// BenchmarkDeathDetection measures how long a killed node (closed without
// leaving) stays in the survivors' Views: from its Close until every
// survivor's View has dropped it. That delay bounds a failover, which
// must also wait out the dead node's leases. ns/op is the mean; max-ms
// the slowest iteration. Run with -benchtime=Nx: each iteration forms a
// new cluster on loopback.
func BenchmarkDeathDetection(b *testing.B) {
	presets := []struct {
		name   string
		preset func() Config
	}{
		{"local", LocalConfig},
		{"default", DefaultConfig},
	}
	for _, p := range presets {
		for _, n := range []int{3, 5} {
			b.Run(fmt.Sprintf("%s/nodes=%d", p.name, n), func(b *testing.B) {
				log := slog.New(slog.DiscardHandler)
				var worst time.Duration
				b.StopTimer()
				for range b.N {
					nodes := startPreset(b, n, log, p.preset)
					survivors, victim := nodes[:n-1], nodes[n-1]
					b.StartTimer()
					t0 := time.Now()
					_ = victim.Close()
					for !allDropped(survivors, victim.Self().Name) {
						time.Sleep(time.Millisecond)
					}
					d := time.Since(t0)
					b.StopTimer()
					worst = max(worst, d)
					for _, c := range survivors {
						_ = c.Close()
					}
				}
				b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
			})
		}
	}
}

// allDropped reports whether no node's View holds name.
func allDropped(nodes []*Cluster, name string) bool {
	return !slices.ContainsFunc(nodes, func(c *Cluster) bool {
		_, ok := c.View().Member(name)
		return ok
	})
}
