// Package e2e tests the built binaries, timerd and timerctl, as a user
// runs them: it builds both with the go command, starts timerd processes
// on loopback ports with their embedded store in temporary directories,
// drives them with timerctl, the Go client and (when installed) grpcurl,
// and stops them with SIGTERM or SIGKILL.
//
// The package holds tests only. It checks what only whole processes show:
// flag and environment handling, exit codes and startup errors, graceful
// shutdown, and that acknowledged timers survive a restart or a kill -9 of
// the node and still fire, none early; and that SIGHUP alone makes a
// node take a new token file and certificate (TestSIGHUPReload replaces
// them so that the files' watcher cannot see it), even while it starts.
// It imports no server internals.
//
// TestMakeCluster runs tools/cluster.sh, the script of make cluster, on
// free ports and with the binaries it built: a redis-server and three
// nodes that it drives with timerctl, kills one of, restarts, and then
// stops with SIGINT, after which no process the script started may run.
// Like the tests that start Redis, it is skipped without redis-server,
// and fails under CI.
//
// The grpcurl test looks for grpcurl on PATH and in $(go env GOPATH)/bin;
// it is skipped when grpcurl is missing, unless CI is set (CI=true),
// where it fails: the CI script installs it. So is the test of the
// Node.js client in examples/node, which needs node and npm on PATH: it
// installs the example's pinned packages with npm ci (from npm's cache
// when they are there) and runs the example against a started node.
package e2e
