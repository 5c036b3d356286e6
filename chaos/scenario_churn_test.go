package chaos

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// Scenario churn's membership changes: how many, and how many nodes may
// be up at once. Node 0 stays, so that every joining node finds a member
// at the --join addresses the cluster started with.
const (
	churnChanges = 10
	churnMinUp   = 2
	churnMaxUp   = 5
	// churnKillShare is the share of the changes that remove a node with
	// kill -9 rather than SIGTERM, drawn among the removals.
	churnKillShare = 0.3
)

// churnTimers is how many timers scenario churn schedules: 200,000 by
// default, so that its run stays within make chaos's budget on two
// shared cores, and 1,000,000 with TIMERD_CHAOS_FULL=1.
func churnTimers() int {
	if os.Getenv("TIMERD_CHAOS_FULL") == "1" {
		return 1_000_000
	}
	return 200_000
}

// churnTimeout bounds a run of scenario churn: the harness's default,
// or 8 minutes for the full run.
func churnTimeout() time.Duration {
	if churnTimers() > 200_000 {
		return 8 * time.Minute
	}
	return 0
}

func init() {
	register(scenario{
		name: "churn",
		about: "ten joins and leaves (SIGTERM, now and then kill -9) under load with 200,000 pending timers " +
			"(1,000,000 with TIMERD_CHAOS_FULL=1): nothing lost, and at most one epoch of a shard may fire at any " +
			"instant, as the nodes' own logs say",
		run: churn,
		// Two shared cores schedule and fire 1,000,000 timers, through the
		// churn, in 4 to 5 minutes.
		timeout: churnTimeout(),
	})
}

// churnKind is one kind of membership change.
type churnKind int

const (
	churnJoin  churnKind = iota // a new node starts and joins
	churnLeave                  // a node gets SIGTERM: it hands its shards over and leaves
	churnKill                   // a node gets SIGKILL: its leases lapse
)

func (k churnKind) String() string {
	switch k {
	case churnJoin:
		return "join"
	case churnLeave:
		return "leave"
	case churnKill:
		return "kill"
	}
	return "change?"
}

// planChurn draws changes membership changes of a cluster that starts
// with up nodes, keeping between churnMinUp and churnMaxUp up, with at
// least one of each kind.
func planChurn(rng *rand.Rand, up, changes int) []churnKind {
	plan := make([]churnKind, changes)
	for i := range plan {
		switch {
		case up <= churnMinUp:
			plan[i] = churnJoin
		case up >= churnMaxUp || rng.IntN(2) == 0:
			plan[i] = churnLeave
			if rng.Float64() < churnKillShare {
				plan[i] = churnKill
			}
		default:
			plan[i] = churnJoin
		}
		if plan[i] == churnJoin {
			up++
		} else {
			up--
		}
	}
	// Every kind at least once: a removal becomes the missing one (the
	// count of nodes up stays as planned).
	for _, k := range []churnKind{churnLeave, churnKill} {
		if slices.Contains(plan, k) {
			continue
		}
		other := churnLeave + churnKill - k
		if i := slices.Index(plan, other); i >= 0 && countOf(plan, other) > 1 {
			plan[i] = k
		}
	}
	return plan
}

func countOf(plan []churnKind, k churnKind) int {
	n := 0
	for _, p := range plan {
		if p == k {
			n++
		}
	}
	return n
}

// churnStep is what one membership change cost.
type churnStep struct {
	kind  churnKind
	node  string
	moved int           // shards whose owner changed
	took  time.Duration // from the change until the shard map was stable
}

func churn(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{NodeArgs: debugLog})
	subscribe(r, c, subscribeConfig{})
	timers := churnTimers()
	if timers != 200_000 {
		// The harness's replay line names the seed and the scenario, not
		// this size.
		t.Cleanup(func() {
			if t.Failed() {
				fmt.Printf("chaos: churn ran with %s timers: replay it with TIMERD_CHAOS_FULL=1 as well\n", itoa(timers))
			}
		})
	}
	// Every timer is sent at once, in big batches over several
	// connections, due after the scheduling and throughout the churn.
	// The full run's spread keeps its firing rate near the default's
	// (about 10,000/s): over 40s, two shared cores fired 1,000,000
	// timers with a p99 lateness of 98s.
	first, spread := 10*time.Second, 20*time.Second
	if timers > 200_000 {
		first, spread = 30*time.Second, 90*time.Second
	}
	w := newWorkload(r, c, workloadConfig{Timers: timers, FirstDue: first, Spread: spread,
		MinBatch: 1000, MaxBatch: 1000, FullRate: true, Concurrency: 8, CallTimeout: 10 * time.Second, RetryFor: 30 * time.Second})
	plan := planChurn(r.rng, c.size(), churnChanges)
	start := w.begin()

	died := make(map[int]time.Time)
	owners := shardMapRetried(t, r, c)
	var steps []churnStep
	for _, kind := range plan {
		if !sleepUntil(r.ctx, time.Now().Add(500*time.Millisecond+time.Duration(r.rng.Int64N(int64(time.Second))))) {
			t.Fatal("run timed out during the churn")
		}
		step := churnStep{kind: kind}
		began := time.Now()
		switch kind {
		case churnJoin:
			step.node = c.node(c.add()).name
		default:
			up := c.up()[1:] // never node 0: see churnChanges
			i := up[r.rng.IntN(len(up))]
			step.node = c.node(i).name
			if kind == churnKill {
				c.kill9(i)
				died[i] = time.Now()
			} else {
				c.terminate(i)
			}
		}
		after := c.waitStable()
		step.took = time.Since(began)
		for s := range after {
			if s < len(owners) && after[s].owner != owners[s].owner {
				step.moved++
			}
		}
		owners = after
		steps = append(steps, step)
		r.logf("%s %s: %d shards moved, stable after %v (%s)", kind, step.node, step.moved, step.took.Round(time.Millisecond), shardsPerNode(after))
	}
	churned := time.Since(start)
	if !w.wait() {
		t.Fatal("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), 60*time.Second)

	v := r.judge()
	v.figure("timers", timers)
	v.figure("churn_took", churned)
	var names, moves []string
	var took []time.Duration
	for _, s := range steps {
		names = append(names, s.kind.String()+" "+s.node)
		moves = append(moves, fmt.Sprint(s.moved))
		took = append(took, s.took)
	}
	slices.Sort(took)
	v.figure("changes", strings.Join(names, ", "))
	v.figure("moves", strings.Join(moves, ","))
	v.figure("stable_after_min", took[0])
	v.figure("stable_after_p50", took[len(took)/2])
	v.figure("stable_after_max", took[len(took)-1])
	for _, kind := range []churnKind{churnJoin, churnLeave, churnKill} {
		var d []time.Duration
		for _, s := range steps {
			if s.kind == kind {
				d = append(d, s.took)
			}
		}
		if len(d) > 0 {
			v.figure("stable_after_"+kind.String()+"_max", slices.Max(d))
		}
	}
	hs := clusterHoldings(t, c, died)
	v.figure("holdings", len(hs))
	checkHoldings(v, hs, c.opts.Shards)
	c.check(v)
	w.check(v)
}

// TestPlanChurn: every plan keeps the nodes up within bounds and has
// each kind of change, whatever the seed.
func TestPlanChurn(t *testing.T) {
	for seed := range uint64(500) {
		plan := planChurn(rand.New(rand.NewPCG(seed, 0)), 3, churnChanges)
		if len(plan) != churnChanges {
			t.Fatalf("seed %d: %d changes, want %d", seed, len(plan), churnChanges)
		}
		up := 3
		for i, k := range plan {
			if k == churnJoin {
				up++
			} else {
				up--
			}
			if up < churnMinUp || up > churnMaxUp {
				t.Fatalf("seed %d: %v leaves %d nodes up after change %d", seed, plan, up, i)
			}
		}
		for _, k := range []churnKind{churnJoin, churnLeave, churnKill} {
			if !slices.Contains(plan, k) {
				t.Fatalf("seed %d: %v has no %v", seed, plan, k)
			}
		}
	}
}
