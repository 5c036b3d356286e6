package server_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/clustertest"
)

// BenchmarkClusterRelayFireAck measures fire-and-ack throughput and
// lateness through a 3-node cluster: a plain subscriber connected to one
// node, which relays the other two nodes' deliveries, beside the Go
// client's direct streams to every member, in the same run and cluster.
// b.N timers, scheduled through node 1, all come due at one instant once
// they are scheduled; fires/s is b.N over the time from then until the
// last first delivery, and the lateness percentiles are of first
// deliveries. Run it with a fixed count: -benchtime 20000x.
func BenchmarkClusterRelayFireAck(b *testing.B) {
	c := clustertest.Start(b, 3)
	runs := 0
	for _, kind := range subscriberKinds {
		b.Run(kind.name, func(b *testing.B) {
			// A topic of its own: the subscribers of earlier runs stay
			// until the cluster stops.
			runs++
			topic := fmt.Sprintf("bench-%s-%d", kind.name, runs)
			relayed := c.MetricSum("timerd_relayed_deliveries_total")
			col := kind.start(b, c, topic)
			s := newScheduler(b, c.Node(1).GRPCAddr(), topic)
			due := time.Now().Add(time.Second + time.Duration(b.N)*100*time.Microsecond)
			s.schedule("t", b.N, due, 0)
			if late := time.Since(due); late > 0 {
				b.Logf("scheduling ended %v after the timers came due", late)
			}
			b.ResetTimer()
			all := s.acknowledged()
			col.Wait(all, 5*time.Minute)
			b.StopTimer()
			if v := col.Check(all); !v.OK() {
				b.Fatalf("verdict: %v", v)
			}
			lates := make([]time.Duration, 0, len(all))
			var last time.Time
			for id := range all {
				first := col.Got(id)[0]
				lates = append(lates, first.Received.Sub(due))
				if first.Received.After(last) {
					last = first.Received
				}
			}
			slices.Sort(lates)
			b.ReportMetric(float64(b.N)/last.Sub(due).Seconds(), "fires/s")
			b.ReportMetric(float64(lates[len(lates)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lates[len(lates)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(c.MetricSum("timerd_relayed_deliveries_total")-relayed, "relayed")
		})
	}
}
