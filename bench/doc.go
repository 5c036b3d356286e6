// Package bench is the load generator and report writer behind
// "timerctl bench": it drives a running timerd (or a peer measured the
// same way) through a Target and reports what an engineer sizing or
// tuning a deployment needs.
//
// It owns the scenarios (schedule, fire, mixed, burst; and on a cluster,
// failover and recovery, which kill or restart nodes through an Action
// such as a shell command), the rate sweep of fire (Sweep), their
// pacing, the HDR histograms of latency and lateness, the floor measured
// beside every run, the correctness counters (early, lost, stray and
// cancelled-but-fired deliveries, timers missing after a restart) and the
// report: a table, JSON, a Markdown and HTML report with SVG plots, and
// side-by-side comparisons of reports, with the spread of repetitions.
//
// Invariants:
//   - Load is open loop where a rate is asked for (Pacer): a target that
//     stalls shows as lateness and a backlog, not as a lower offered rate.
//   - Lateness is measured against the due time the bench asked for, on
//     the bench's clock, when the delivery reaches the bench; a delivery
//     before it is counted as early, never hidden in the histogram. It is
//     monotonic time: due times keep the monotonic reading of the clock
//     they come from (ceilMilli), and only the target is sent the wall
//     clock due time, in whole ms.
//   - Every run measures its floor at the same time (Floor: a lock-free
//     time.AfterFunc stream in the bench's process, the Go scheduler's
//     latency, GC pauses, CPU time, the host's load and steal) and marks
//     itself machine starved when the floor's p99 crosses
//     Config.StarvedP99; the floor never fails a run.
//   - Every run removes the timers it leaves in the target, also when it
//     is interrupted.
//
// It reaches timerd only through package client and must not touch the
// server's internals: what it measures is what a user of the client sees.
// A cluster is reached through its members' addresses (Timerd), and read
// through the client's Members and ShardMap; a timer's shard is the one
// package ring gives, which the client shares.
// Peers that need dependencies of their own live in the separate module
// bench/peers: asynq, and redis-raw, which encodes timerd's records with
// package store (and so would link go-redis and Pebble into timerctl).
package bench
