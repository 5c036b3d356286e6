package redistest

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
)

// Shared servers outlive one test: a package whose tests each need a
// Redis Cluster shares one, since a cluster's masters take about two
// seconds to accept writes after they start (Redis's writable delay).
// Tests that share a cluster keep apart by key prefix, and must not kill
// or pause its nodes.

// shared holds the package's shared clusters; RunMain stops them.
var shared struct {
	mu sync.Mutex
	// clusters maps a shape, "<masters>/<replicas>", to its cluster, or
	// to the message with which starting it failed or was skipped.
	clusters map[string]sharedCluster
	// cleanups are the shared servers' cleanups, run by RunMain in
	// reverse order.
	cleanups []func()
}

type sharedCluster struct {
	c    *Cluster
	fail string // the start's fatal message; "" when it did not fail
	skip string // the start's skip message
}

// RunMain runs the package's tests and then stops the servers they share;
// a package that uses SharedRedisCluster calls it from TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(redistest.RunMain(m)) }
func RunMain(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	cleanups := shared.cleanups
	shared.cleanups, shared.clusters = nil, nil
	shared.mu.Unlock()
	for _, f := range slices.Backward(cleanups) {
		f()
	}
	return code
}

// SharedRedisCluster returns the package's cluster of masters masters
// with replicasPerMaster replicas each, started by the first test that
// asks for that shape (see StartRedisCluster) and stopped by RunMain, and
// so shared by every test of the package. If starting it failed, or was
// skipped for want of redis-server, every test that asks fails or skips
// alike.
func SharedRedisCluster(tb testing.TB, masters, replicasPerMaster int) *Cluster {
	tb.Helper()
	shape := fmt.Sprintf("%d/%d", masters, replicasPerMaster)
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.clusters == nil {
		shared.clusters = make(map[string]sharedCluster)
	}
	sc, ok := shared.clusters[shape]
	if !ok {
		sc = startShared(masters, replicasPerMaster)
		shared.clusters[shape] = sc
	}
	switch {
	case sc.fail != "":
		tb.Fatalf("%s", sc.fail)
	case sc.skip != "":
		tb.Skipf("%s", sc.skip)
	}
	return sc.c
}

// startShared starts a cluster owned by the package rather than a test.
// shared.mu is held.
func startShared(masters, replicas int) (sc sharedCluster) {
	tb := &packageTB{}
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(packageStop); !ok {
				panic(r)
			}
			sc = sharedCluster{fail: tb.fail, skip: tb.skip}
			// What started before the failure stops now.
			for _, f := range slices.Backward(tb.cleanups) {
				f()
			}
			return
		}
		shared.cleanups = append(shared.cleanups, tb.cleanups...)
	}()
	return sharedCluster{c: StartRedisCluster(tb, masters, replicas)}
}

// packageTB is the testing.TB of servers shared by a package's tests: its
// cleanups run when RunMain ends, and Fatal or Skip stop the start of the
// server by panicking with packageStop, which startShared recovers.
// Methods it does not define are those of a nil testing.TB, which this
// package's starting code does not call.
type packageTB struct {
	testing.TB
	cleanups   []func()
	fail, skip string
}

// packageStop is the panic value of packageTB's Fatal and Skip.
type packageStop struct{}

func (p *packageTB) Helper()          {}
func (p *packageTB) Cleanup(f func()) { p.cleanups = append(p.cleanups, f) }

func (p *packageTB) TempDir() string {
	dir, err := os.MkdirTemp("", "redistest")
	if err != nil {
		p.Fatalf("redistest: temporary directory: %v", err)
	}
	p.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func (p *packageTB) Fatal(args ...any) { p.Fatalf("%s", fmt.Sprint(args...)) }

func (p *packageTB) Fatalf(format string, args ...any) {
	p.fail = fmt.Sprintf(format, args...)
	panic(packageStop{})
}

func (p *packageTB) Skipf(format string, args ...any) {
	p.skip = fmt.Sprintf(format, args...)
	panic(packageStop{})
}

// Errorf reports a failure of a cleanup at the end of the package's tests,
// when no test is left to fail.
func (p *packageTB) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}
