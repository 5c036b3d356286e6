package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/timerd/timerd/shard"
)

// registerClock registers the gauges of the node's steady clock, which
// clock returns (nil before the node opens, or with another clock):
// timerd_clock_skew_seconds, the wall clock less the time the node fires
// by, which a step of the wall shows at once while the node keeps firing
// by its own clock; and timerd_clock_store_skew_seconds, the store's
// clock less the node's at its last reading.
func registerClock(reg *prometheus.Registry, clock func() *shard.SteadyClock) {
	gauge := func(name, help string, read func(*shard.SteadyClock) time.Duration) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "timerd", Name: name, Help: help}, func() float64 {
			if c := clock(); c != nil {
				return read(c).Seconds()
			}
			return 0
		})
	}
	reg.MustRegister(
		gauge("clock_skew_seconds",
			"The wall clock less the node's steady clock, which it fires timers by: a step of the wall clock shows here and is not followed unless the store's clock agrees.",
			(*shard.SteadyClock).Skew),
		gauge("clock_store_skew_seconds",
			"The store's clock (Redis TIME) less the node's steady clock at its last reading (read when the wall clock steps).",
			(*shard.SteadyClock).StoreSkew))
}
