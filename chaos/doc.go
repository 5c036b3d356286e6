// Package chaos owns the fault scenarios of timerd as a cluster of real
// processes: real redis-server (standalone, or a Redis Cluster) from
// internal/redistest and timerd processes built once from ./cmd/timerd,
// on 127.0.0.1 with free ports, driven only through the public gRPC
// contract (api/timerd/v1), while faults are injected: kill -9, SIGSTOP
// and SIGCONT, graceful stops, restarts, joins, a duplicate name, a proxy
// in front of Redis.
//
// A scenario (a name, what it proves and its run) lives in a file of its
// own, scenario_<name>_test.go, and registers itself from init. TestChaos
// runs each registered scenario once per seed as TestChaos/<name>/seed=<n>;
// TIMERD_CHAOS_SCENARIOS (a regexp) picks scenarios, TIMERD_CHAOS_SEED
// replays one seed and TIMERD_CHAOS_SEEDS=k runs k random ones. A run
// draws its plan from its seed (due times, batches, victims, moments), so
// a replay repeats the plan; the processes' own timing is not
// reproducible.
//
// Every write the workload sends (Schedule, Reschedule, Cancel) is
// recorded in a ledger with its outcome (acknowledged, certainly failed or
// indeterminate) and every delivery with its receive time, attempt, shard,
// epoch and the node whose stream carried it. The judge checks the
// deliveries against the writes:
//
//   - lost: an acknowledged timer, not cancelled since, never delivered;
//   - unexpected: a delivery of a timer never sent or whose every Schedule
//     certainly failed;
//   - early: a delivery received, by the test's clock, before its due time;
//   - cancelled-fired: a timer whose Cancel was acknowledged before its
//     due time, delivered after that acknowledgement;
//   - corrupt: a payload or a due time that no write sent;
//
// each of which must be 0, and counts duplicates, the indeterminate
// timers delivered all the same and the lateness of first deliveries.
// A scenario adds its own figures (what the fault cost, in time) and
// problems (its own checks that failed). Every run prints one verdict
// line and the verdict as JSON; a failing one prints its seed and the
// command that replays it.
//
// Invariants: the package holds tests only and imports no server
// internals; the checks are the oracle, never wall-clock thresholds
// (timings are figures, with generous bounds against hangs only); every
// run is bounded by a context, and every process it starts runs in a
// process group of its own that the test's cleanup kills, passed, failed
// or timed out; on Linux the kernel also kills it if the test binary dies
// first.
package chaos
