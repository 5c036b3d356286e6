package chaos

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	timerdbin "github.com/timerd/timerd/internal/binary"
)

// scenario is one fault scenario: a name (the subtest's), what it proves,
// and its run, which starts what it needs, injects its faults, drives a
// workload into r's ledger and may judge it itself (r.judge) to add its
// figures and problems; if it does not, the harness judges the ledger
// when run returns.
type scenario struct {
	name  string
	about string
	run   func(t *testing.T, r *run)
}

// scenarios holds the registered scenarios by name.
var scenarios = map[string]scenario{}

// register adds a scenario; scenario files call it from init.
func register(s scenario) {
	if _, dup := scenarios[s.name]; dup || s.name == "" || s.run == nil {
		panic(fmt.Sprintf("chaos: register(%q): a scenario needs a name of its own and a run", s.name))
	}
	scenarios[s.name] = s
}

// runTimeout bounds one scenario run, start and drain included.
const runTimeout = 4 * time.Minute

// run is one scenario run: its seed and what is drawn from it, a context
// that bounds it, a directory for its files, the timerd binary and the
// ledger of its writes and deliveries.
type run struct {
	t      *testing.T
	name   string
	seed   uint64
	rng    *rand.Rand
	ctx    context.Context
	dir    string
	bin    string
	ledger *ledger
	began  time.Time
	// verdict is set by judge; subs are the subscriber sets started.
	verdict *verdict
	subs    []*subscribers
}

// logf logs with the time since the run began.
func (r *run) logf(format string, args ...any) {
	r.t.Helper()
	r.t.Logf("+%v %s", time.Since(r.began).Round(time.Millisecond), fmt.Sprintf(format, args...))
}

// judge judges the ledger now and returns the verdict, which the
// scenario may add figures and problems to; the harness prints it when
// the run returns.
func (r *run) judge() *verdict {
	v := judge(r.ledger)
	v.Scenario, v.Seed = r.name, r.seed
	r.verdict = &v
	return r.verdict
}

// drain waits until every timer the ledger expects has been delivered,
// or until bound after lastDue (or after now, if later), then settleFor
// more for late duplicates and strays. It reports whether nothing was
// missing.
func (r *run) drain(lastDue time.Time, bound time.Duration) bool {
	deadline := lastDue
	if now := time.Now(); now.After(deadline) {
		deadline = now
	}
	deadline = deadline.Add(bound)
	for time.Now().Before(deadline) && r.ledger.missing() > 0 {
		if !sleepUntil(r.ctx, time.Now().Add(200*time.Millisecond)) {
			break
		}
	}
	n := r.ledger.missing()
	sleepUntil(r.ctx, time.Now().Add(settleFor))
	r.logf("drained: %d expected timers undelivered", n)
	return n == 0
}

// settleFor is the wait after the last expected delivery, for late
// duplicates and strays.
const settleFor = 2 * time.Second

// timerd is built once per test binary, into buildDir.
var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// timerdBinary builds ./cmd/timerd, once per test binary.
func timerdBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "timerd-chaos-")
		if buildErr != nil {
			return
		}
		var paths []string
		if paths, buildErr = timerdbin.Build(buildDir, "timerd"); buildErr == nil {
			buildBin = paths[0]
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// TestChaos runs every registered scenario (those whose name matches the
// regexp TIMERD_CHAOS_SCENARIOS, when set) once per seed: the seed
// TIMERD_CHAOS_SEED, or TIMERD_CHAOS_SEEDS random ones (default 1), as
// subtests TestChaos/<name>/seed=<n>. It needs TIMERD_CHAOS=1.
func TestChaos(t *testing.T) {
	if os.Getenv("TIMERD_CHAOS") != "1" {
		t.Skip("fault scenarios over real processes: set TIMERD_CHAOS=1 to run them (make chaos)")
	}
	filter := regexp.MustCompile("")
	if s := os.Getenv("TIMERD_CHAOS_SCENARIOS"); s != "" {
		var err error
		if filter, err = regexp.Compile(s); err != nil {
			t.Fatalf("TIMERD_CHAOS_SCENARIOS=%q: %v", s, err)
		}
	}
	seeds := chaosSeeds(t)
	names := sortedKeys(scenarios)
	ran := 0
	for _, name := range names {
		if !filter.MatchString(name) {
			continue
		}
		ran++
		sc := scenarios[name]
		t.Run(name, func(t *testing.T) {
			for _, seed := range seeds {
				t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) { runScenario(t, sc, seed) })
			}
		})
	}
	if ran == 0 {
		t.Fatalf("no scenario matches TIMERD_CHAOS_SCENARIOS=%q; there are: %s", os.Getenv("TIMERD_CHAOS_SCENARIOS"), strings.Join(names, ", "))
	}
}

// runScenario runs sc with seed, then judges, prints and checks its
// verdict.
func runScenario(t *testing.T, sc scenario, seed uint64) {
	replay := fmt.Sprintf("TIMERD_CHAOS=1 TIMERD_CHAOS_SEED=%d TIMERD_CHAOS_SCENARIOS='^%s$' go test -count=1 -v -timeout 10m -run '^TestChaos$' ./chaos/",
		seed, regexp.QuoteMeta(sc.name))
	t.Logf("%s: %s\nseed %d (replay: %s)", sc.name, sc.about, seed, replay)
	// Registered first, so it runs last, after the processes are gone.
	t.Cleanup(func() {
		if t.Failed() {
			fmt.Printf("chaos: %s FAILED with seed %d; replay it with:\n  %s\n", sc.name, seed, replay)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	r := &run{t: t, name: sc.name, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x7469_6d65_7264)), // "timerd"
		ctx: ctx, dir: t.TempDir(), bin: timerdBinary(t), ledger: newLedger(), began: time.Now()}
	sc.run(t, r)
	if t.Failed() {
		return // a fatal step already said why
	}
	v := r.verdict
	if v == nil {
		v = r.judge()
	}
	if len(v.Problems) > maxExamples {
		v.Problems = append(v.Problems[:maxExamples], fmt.Sprintf("and %d more", len(v.Problems)-maxExamples))
	}
	v.seal()
	fmt.Println(v.line())
	fmt.Printf("chaos verdict json: %s\n", v.json())
	for _, s := range r.subs {
		t.Logf("subscriber streams opened, by node: %v", s.opened())
	}
	t.Logf("run took %v", time.Since(r.began).Round(time.Millisecond))
	if !v.Pass {
		t.Errorf("%s: lost %d, unexpected %d, early %d, cancelled-fired %d, corrupt %d, problems %d\n  %s",
			sc.name, v.Lost, v.Unexpected, v.Early, v.CancelledFired, v.Corrupt, len(v.Problems),
			strings.Join(append(append([]string(nil), v.Problems...), v.Examples...), "\n  "))
	}
}

// chaosSeeds returns TIMERD_CHAOS_SEED, or TIMERD_CHAOS_SEEDS random
// seeds (default 1).
func chaosSeeds(t *testing.T) []uint64 {
	if s := os.Getenv("TIMERD_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TIMERD_CHAOS_SEED=%q: want an unsigned integer: %v", s, err)
		}
		return []uint64{seed}
	}
	n := 1
	if s := os.Getenv("TIMERD_CHAOS_SEEDS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("TIMERD_CHAOS_SEEDS=%q: want a count of at least 1", s)
		}
	}
	seeds := make([]uint64, n)
	for i := range seeds {
		var b [8]byte
		_, _ = crand.Read(b[:])
		seeds[i] = binary.LittleEndian.Uint64(b[:]) >> 1 // fits an int64 too, for tools that read the JSON
	}
	return seeds
}

// shardsPerNode says how many shards each node serves in owners.
func shardsPerNode(owners []shardOwner) string {
	n := make(map[string]int)
	for _, o := range owners {
		n[o.owner]++
	}
	var parts []string
	for _, name := range sortedKeys(n) {
		parts = append(parts, fmt.Sprintf("%s %d", name, n[name]))
	}
	return strings.Join(parts, ", ")
}

// codeCounts formats counts by gRPC code.
func codeCounts(m map[codes.Code]int) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for k, n := range m {
		parts = append(parts, fmt.Sprintf("%v %s", k, itoa(n)))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}
