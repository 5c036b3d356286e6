// Package chaos owns the fault tests of timerd as a cluster of real
// processes: it builds timerd from ./cmd/timerd into a temporary
// directory, starts a real redis-server and three timerd nodes on
// 127.0.0.1 with free ports, drives them only through the public gRPC
// contract (api/timerd/v1), injects faults (kill -9 of a node) while a
// client schedules and subscribers consume, and gives a verdict on the
// guarantee of docs/ARCHITECTURE.md: every acknowledged timer delivered
// at least once, never early, nothing delivered that was never asked
// for. It also measures how long a dead node's timers wait for another
// node to fire them.
//
// The package holds tests only and imports no server internals. Its
// fault tests take about a minute, so they run only with TIMERD_CHAOS=1
// (make chaos); without it they skip. A run is drawn from a seed
// (TIMERD_CHAOS_SEED, random by default) that picks the node to kill, the
// moment of the kill, the due times and the batches; a failing run prints
// the seed and the command that replays it. The processes' own timing is
// not reproducible, so a replay repeats the plan, not the interleaving.
//
// Every process a test starts runs in a process group of its own and is
// killed with its group when the test ends, passed, failed or timed out;
// on Linux the kernel also kills it if the test binary dies first.
package chaos
