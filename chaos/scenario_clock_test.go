package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/timerd/timerd/internal/scrape"
)

// clockStep is one step of the stepped node's wall clock: at, after the
// start of the workload, its offset from the machine's clock becomes to.
type clockStep struct {
	at time.Duration
	to time.Duration
}

func init() {
	register(scenario{
		name: "clock-step",
		about: "step one node's wall clock 5 minutes forward, then 5 minutes back, then back to true, " +
			"while its timers come due (TIMERD_TEST_WALL_OFFSET_FILE; the machine's clock does not move): " +
			"nothing fires early by the true clock, nothing is lost, the stepped node keeps its shards or loses them cleanly",
		run: clockStepRun,
	})
}

func clockStepRun(t *testing.T, r *run) {
	const nodes = 3
	stepped := r.rng.IntN(nodes)
	offsetFile := filepath.Join(r.dir, "wall-offset")
	writeOffset(t, offsetFile, 0)
	// The hook reaches the stepped node through env(1), which execs
	// timerd with it set: the harness gives the nodes no TIMERD_*
	// variable of its own.
	envBin, err := exec.LookPath("env")
	if err != nil {
		t.Fatalf("env(1), to set the stepped node's wall clock hook: %v", err)
	}
	c := startCluster(r, clusterOptions{Nodes: nodes, Command: func(i int, argv []string) []string {
		if i != stepped {
			return argv
		}
		return append([]string{envBin, "TIMERD_TEST_WALL_OFFSET_FILE=" + offsetFile}, argv...)
	}})
	name := c.node(stepped).name
	subscribe(r, c, subscribeConfig{})
	before, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}

	// Steady load: timers due over 24s from 2s on, each batch sent shortly
	// before its due times; the steps come in the middle of it, each at
	// a seeded instant within a second of its mark.
	w := newWorkload(r, c, workloadConfig{Timers: 30_000, FirstDue: 2 * time.Second, Spread: 24 * time.Second,
		Reschedule: 0.05, Cancel: 0.05})
	jitter := func() time.Duration { return time.Duration(r.rng.Int64N(int64(time.Second))) }
	steps := []clockStep{
		{at: 6*time.Second + jitter(), to: 5 * time.Minute},
		{at: 12*time.Second + jitter(), to: -5 * time.Minute},
		{at: 18*time.Second + jitter(), to: 0},
	}
	start := w.begin()
	skews := sampleSkew(r.ctx, c.node(stepped).httpAddr)
	for _, s := range steps {
		if !sleepUntil(r.ctx, start.Add(s.at)) {
			t.Fatalf("the run ended before the step at +%v", s.at)
		}
		writeOffset(t, offsetFile, s.to)
		skews.mark(s.to)
		r.logf("%s: wall clock offset %+v", name, s.to)
	}
	// The window in which the node's wall was wrong, and one clock check
	// more for it to see the reset.
	winFrom, winTo := start.Add(steps[0].at), start.Add(steps[len(steps)-1].at+time.Second)
	if !w.wait() {
		t.Fatalf("the batches did not all end within the run's bound")
	}
	r.drain(w.lastDue(), c.opts.LeaseTTL+10*time.Second)
	skews.stop()
	after, err := c.shardMap()
	if err != nil {
		t.Fatal(err)
	}

	v := r.judge()
	v.figure("stepped_node", name)
	for _, to := range []time.Duration{5 * time.Minute, -5 * time.Minute, 0} {
		if got, ok := skews.reported(to); ok {
			v.figure(fmt.Sprintf("skew_reported_at_%+v", to), got)
			if d := (got - to).Abs(); d > 5*time.Second {
				v.problem("with the wall clock stepped to %+v the node reported a skew of %v", to, got)
			}
		} else {
			v.problem("no skew sample while the wall clock was %+v", to)
		}
	}
	inWin := func(due time.Time) bool { return !due.Before(winFrom) && due.Before(winTo) }
	own, others := latenessByOwner(r.ledger.expected(), r.ledger.deliveries(), before, name, inWin)
	if len(own) == 0 || len(others) == 0 {
		v.problem("%d timers of %s's shards and %d of the others' came due while its wall clock was stepped; want some of each",
			len(own), name, len(others))
	} else {
		v.figure("lateness_p99_stepped_node_in_window", percentile(own, 99))
		v.figure("lateness_p99_other_nodes_in_window", percentile(others, 99))
		v.figure("extra_lateness_p99", percentile(own, 99)-percentile(others, 99))
		v.figure("extra_lateness_max", own[len(own)-1]-others[len(others)-1])
	}
	kept, moved := ownership(before, after, name)
	v.figure("stepped_node_shards", kept+moved)
	v.figure("stepped_node_shards_moved", moved)
	for _, p := range twoOwners(r.ledger.deliveries()) {
		v.problem("%s", p)
	}
	c.check(v)
	w.check(v)
}

// writeOffset writes the wall clock offset d to path (via a rename, so
// that the node never reads half a file).
func writeOffset(t *testing.T, path string, d time.Duration) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%+v\n", d)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// skewSampler reads a node's timerd_clock_skew_seconds every
// skewSampleEvery and keeps, for each wall clock offset the test set,
// the samples taken while it held.
type skewSampler struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	current time.Duration                     // the offset now
	samples map[time.Duration][]time.Duration // by offset
}

// skewSampleEvery is how often the skew is read.
const skewSampleEvery = 200 * time.Millisecond

func sampleSkew(ctx context.Context, httpAddr string) *skewSampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &skewSampler{cancel: cancel, done: make(chan struct{}), samples: make(map[time.Duration][]time.Duration)}
	go func() {
		defer close(s.done)
		for sleepUntil(ctx, time.Now().Add(skewSampleEvery)) {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			secs, err := scrape.Sum(rctx, httpAddr, "timerd_clock_skew_seconds")
			cancel()
			skew := time.Duration(secs * float64(time.Second))
			if err != nil {
				continue // a scrape cut by the run's end, or a busy node
			}
			s.mu.Lock()
			s.samples[s.current] = append(s.samples[s.current], skew)
			s.mu.Unlock()
		}
	}()
	return s
}

// mark says the offset is now to; the samples from now on are its.
func (s *skewSampler) mark(to time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = to
	// The node sees a step within a second (its clock's check); the
	// samples before it are the previous offset's, so start afresh.
	s.samples[to] = nil
}

// reported returns the skew the node reported most often at offset to:
// the median of the samples taken while it held, after the node's clock
// had seen it.
func (s *skewSampler) reported(to time.Duration) (time.Duration, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	xs := slices.Clone(s.samples[to])
	if len(xs) == 0 {
		return 0, false
	}
	slices.Sort(xs)
	return xs[len(xs)/2], true
}

// stop stops sampling and waits for the sampler. It is safe to call
// twice.
func (s *skewSampler) stop() {
	s.cancel()
	<-s.done
}

// latenessByOwner returns, sorted, the lateness of the first delivery of
// each expected timer due in the window (in), after the due time it
// carried: own for those of the shards victim owned in owners, others for
// the rest.
func latenessByOwner(exp map[string]expectation, got []delivery, owners []shardOwner, victim string,
	in func(due time.Time) bool) (own, others []time.Duration) {
	first := make(map[string]delivery)
	for _, d := range got {
		if f, ok := first[d.id]; !ok || d.received.Before(f.received) {
			first[d.id] = d
		}
	}
	for id, d := range first {
		if _, ok := exp[id]; !ok || !in(d.due) {
			continue
		}
		late := d.received.Sub(d.due)
		if int(d.shard) < len(owners) && owners[d.shard].owner == victim {
			own = append(own, late)
		} else {
			others = append(others, late)
		}
	}
	slices.Sort(own)
	slices.Sort(others)
	return own, others
}

// ownership counts the shards victim served in before that it still
// serves under the same epoch in after (kept), and those that moved or
// were acquired again (moved).
func ownership(before, after []shardOwner, victim string) (kept, moved int) {
	for s, o := range before {
		if o.owner != victim {
			continue
		}
		if s < len(after) && after[s] == o {
			kept++
		} else {
			moved++
		}
	}
	return kept, moved
}

// twoOwners looks for two owners of one shard firing at once: a delivery
// of a shard under an epoch, received after a delivery of the shard
// under a later epoch was, was fired by an owner that the later one had
// already replaced. A lease lapses before the next owner can acquire it
// and its owner stops firing before then, so none may come.
func twoOwners(got []delivery) []string {
	type epochFirst struct {
		epoch uint64
		first time.Time
	}
	byShard := make(map[uint32][]epochFirst)
	for _, d := range got {
		es := byShard[d.shard]
		i := slices.IndexFunc(es, func(e epochFirst) bool { return e.epoch == d.epoch })
		switch {
		case i < 0:
			byShard[d.shard] = append(es, epochFirst{d.epoch, d.received})
		case d.received.Before(es[i].first):
			es[i].first = d.received
		}
	}
	var problems []string
	for _, d := range got {
		for _, e := range byShard[d.shard] {
			if e.epoch > d.epoch && d.received.After(e.first) {
				problems = append(problems, fmt.Sprintf("shard %d: %s delivered under epoch %d %v after epoch %d first delivered",
					d.shard, d.id, d.epoch, d.received.Sub(e.first), e.epoch))
				break
			}
		}
		if len(problems) >= maxExamples {
			break
		}
	}
	return problems
}
