package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/internal/servertest"
	"github.com/timerd/timerd/server"
	"github.com/timerd/timerd/shard"
)

// This file runs the scenarios end to end: against an in-memory target
// whose misbehaviour the test chooses (to see the checks catch it),
// against an in-process timerd and against a real redis-server. It
// asserts counts and correctness only, never speed.

// seqOfID returns the sequence number of a run's timer id, false for the
// probe or an id of no run.
func seqOfID(id string) (int64, bool) {
	if strings.Contains(id, "-probe") {
		return 0, false
	}
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return 0, false
	}
	seq, err := strconv.ParseInt(id[i+1:], 10, 64)
	return seq, err == nil
}

// memTarget is an in-memory Firer and Mutator on real timers. It fires
// each stored timer at its due time plus the offset fate gives it, or
// never when fate says to drop it (the timer stays stored, as one a
// target lost). Its methods may be called concurrently.
type memTarget struct {
	// fate gives timer seq's firing offset from its due time, or false to
	// drop it; nil fires every timer on time.
	fate func(seq int64) (offset time.Duration, fire bool)
	// ignoreCancel makes Cancel report success and leave the timer to
	// fire.
	ignoreCancel bool
	// strays, when set, delivers these ids on the run's topic when timer
	// 0 is scheduled; a "%s" in one is replaced by the run's id.
	strays []string

	mu     sync.Mutex
	timers map[string]*memTimer
	subs   map[string]chan Delivery
	closed bool
}

type memTimer struct {
	t    Timer
	fire *time.Timer // nil for a dropped timer
}

func newMemTarget() *memTarget {
	return &memTarget{timers: map[string]*memTimer{}, subs: map[string]chan Delivery{}}
}

func (m *memTarget) Name() string { return "mem" }
func (m *memTarget) Addr() string { return "memory" }

// topicChan returns the delivery queue of topic. m.mu is held.
func (m *memTarget) topicChan(topic string) chan Delivery {
	ch, ok := m.subs[topic]
	if !ok {
		ch = make(chan Delivery, 1<<16)
		m.subs[topic] = ch
	}
	return ch
}

// arm sets the timer of mt to fire by its fate. m.mu is held.
func (m *memTarget) arm(mt *memTimer) {
	// On time is a ms late: the bench's and the timer's clocks are the
	// same wall clock, but a timer waits on the monotonic one.
	offset, fire := time.Millisecond, true
	if seq, ok := seqOfID(mt.t.ID); ok && m.fate != nil {
		offset, fire = m.fate(seq)
	}
	if !fire {
		mt.fire = nil
		return
	}
	id := mt.t.ID
	mt.fire = time.AfterFunc(time.Until(mt.t.Due.Add(offset)), func() { m.fired(id, mt) })
}

// fired delivers the timer id, if it is still the stored mt.
func (m *memTarget) fired(id string, mt *memTimer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.timers[id] != mt {
		return // cancelled or moved
	}
	delete(m.timers, id)
	m.topicChan(mt.t.Topic) <- Delivery{ID: id, Due: mt.t.Due, Fired: time.Now(), Attempt: 1}
}

func (m *memTarget) Schedule(ctx context.Context, timers []Timer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errors.New("mem: closed")
	}
	for _, t := range timers {
		if old, ok := m.timers[t.ID]; ok && old.fire != nil {
			old.fire.Stop()
		}
		mt := &memTimer{t: t}
		m.timers[t.ID] = mt
		m.arm(mt)
		if seq, ok := seqOfID(t.ID); ok && seq == 0 {
			run := strings.TrimSuffix(t.ID, "-0")
			for _, s := range m.strays {
				m.topicChan(t.Topic) <- Delivery{ID: strings.ReplaceAll(s, "%s", run), Due: t.Due, Attempt: 1}
			}
		}
	}
	return nil
}

func (m *memTarget) Subscribe(ctx context.Context, topic string, fn func(Delivery)) error {
	m.mu.Lock()
	ch := m.topicChan(topic)
	m.mu.Unlock()
	for {
		select {
		case d := <-ch:
			fn(d)
		case <-ctx.Done():
			return nil
		}
	}
}

// remove deletes timer id and reports whether it was stored. m.mu is held.
func (m *memTarget) remove(id string) bool {
	mt, ok := m.timers[id]
	if ok {
		if mt.fire != nil {
			mt.fire.Stop()
		}
		delete(m.timers, id)
	}
	return ok
}

func (m *memTarget) Cancel(ctx context.Context, ids []string, ok []bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		if m.ignoreCancel {
			_, ok[i] = m.timers[id]
			continue
		}
		ok[i] = m.remove(id)
	}
	return nil
}

func (m *memTarget) Reschedule(ctx context.Context, ids []string, due []time.Time, ok []bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		mt, found := m.timers[id]
		if !found {
			continue
		}
		m.remove(id)
		moved := &memTimer{t: mt.t}
		moved.t.Due = due[i]
		m.timers[id] = moved
		m.arm(moved)
		ok[i] = true
	}
	return nil
}

func (m *memTarget) Cleanup(_ context.Context, _ string, ids []string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		m.remove(id)
	}
	return nil
}

func (m *memTarget) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}

// stored is the number of timers the target holds.
func (m *memTarget) stored() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.timers)
}

// waitEmpty waits until m holds no timer: every timer of a run fired,
// was cancelled or was removed by the run's cleanup.
func waitEmpty(t *testing.T, m *memTarget) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for m.stored() != 0 {
		if time.Now().After(deadline) {
			t.Errorf("%d timers left in the target", m.stored())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

var (
	_ Firer   = (*memTarget)(nil)
	_ Mutator = (*memTarget)(nil)
)

// storeOnly hides every method of a Target but Target's.
type storeOnly struct{ Target }

// check returns the check of rep named name.
func check(t *testing.T, rep *Report, name string) Check {
	t.Helper()
	for _, c := range rep.Checks {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("report has no check %q: %+v", name, rep.Checks)
	return Check{}
}

// metric returns the value of rep's metric name.
func metric(t *testing.T, rep *Report, name string) float64 {
	t.Helper()
	for _, m := range rep.Metrics {
		if m.Name == name {
			return m.Value
		}
	}
	t.Fatalf("report has no metric %q: %+v", name, rep.Metrics)
	return 0
}

// dist returns rep's distribution name.
func dist(t *testing.T, rep *Report, name string) Dist {
	t.Helper()
	for _, d := range rep.Dists {
		if d.Name == name {
			return d
		}
	}
	t.Fatalf("report has no distribution %q", name)
	return Dist{}
}

// checkFilled checks what every finished report has: its parameters,
// metrics, distributions with counts and curves, series with points.
func checkFilled(t *testing.T, rep *Report, scenario string) {
	t.Helper()
	if rep.Scenario != scenario || rep.Target == "" || rep.Addr == "" || rep.Start.IsZero() || rep.Elapsed <= 0 {
		t.Errorf("report header: scenario %q target %q addr %q start %v elapsed %g", rep.Scenario, rep.Target, rep.Addr, rep.Start, rep.Elapsed)
	}
	if rep.Host.OS == "" || rep.Host.CPUs < 1 || rep.Host.GoVersion == "" {
		t.Errorf("report host: %+v", rep.Host)
	}
	if len(rep.Params) == 0 || len(rep.Metrics) == 0 || len(rep.Dists) == 0 || len(rep.Series) == 0 {
		t.Fatalf("report lacks params, metrics, dists or series: %d %d %d %d", len(rep.Params), len(rep.Metrics), len(rep.Dists), len(rep.Series))
	}
	for _, d := range rep.Dists {
		// Cancel and Reschedule calls of mixed may be none.
		if d.Count == 0 && !strings.HasPrefix(d.Name, "Cancel") && !strings.HasPrefix(d.Name, "Reschedule") {
			t.Errorf("distribution %q has no values", d.Name)
		}
		if d.Count > 0 {
			checkCurve(t, d)
		}
	}
	for _, s := range rep.Series {
		if len(s.Points) == 0 {
			t.Errorf("series %q has no points", s.Name)
		}
		for i := 1; i < len(s.Points); i++ {
			if s.Points[i].X <= s.Points[i-1].X {
				t.Errorf("series %q: X not increasing at %d: %v", s.Name, i, s.Points)
				break
			}
		}
	}
}

// memConfig is a short run for the in-memory target: 100 timers at 200/s.
// The drain ends as soon as every timer has come, so only a run whose
// target drops timers waits it out; it is long enough for a loaded
// machine to deliver the others.
func memConfig() Config {
	return Config{Duration: 500 * time.Millisecond, Rate: 200, Batches: []int{10}, Concurrency: 4,
		Lead: 500 * time.Millisecond, Delay: 400 * time.Millisecond, Drain: 2 * time.Second, Tick: 50 * time.Millisecond}
}

func TestRunChecksCatchMisbehaviour(t *testing.T) {
	t.Parallel()
	const n = 100 // memConfig: 200/s for 500ms
	for _, tc := range []struct {
		name     string
		scenario string
		target   func() *memTarget
		// want are the checks that must fail, with their counts; every
		// other check must hold.
		want map[string]int64
	}{
		{name: "fire clean", scenario: "fire", target: newMemTarget},
		{name: "fire early, dropped and strays", scenario: "fire", target: func() *memTarget {
			m := newMemTarget()
			m.fate = func(seq int64) (time.Duration, bool) {
				switch seq % 10 {
				case 3:
					// At once: some 400ms early (the lead, less the
					// linger), so that no stall of this busy machine makes
					// it look on time.
					return -time.Hour, true
				case 7:
					return 0, false
				}
				return time.Millisecond, true
			}
			m.strays = []string{"%s-99999", "%s-x", "another-run-5"}
			return m
		}, want: map[string]int64{"early deliveries": n / 10, "not delivered": n / 10, "stray deliveries": 3}},
		{name: "burst early", scenario: "burst", target: func() *memTarget {
			m := newMemTarget()
			m.fate = func(seq int64) (time.Duration, bool) {
				if seq < 5 {
					return -time.Hour, true // at once: 500ms early
				}
				return time.Millisecond, true
			}
			return m
		}, want: map[string]int64{"early deliveries": 5}},
		{name: "mixed clean", scenario: "mixed", target: newMemTarget},
		{name: "mixed ignores cancels", scenario: "mixed", target: func() *memTarget {
			m := newMemTarget()
			m.ignoreCancel = true
			return m
		}, want: map[string]int64{"cancelled timers fired": -1}}, // -1: some
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			m := tc.target()
			cfg := memConfig()
			if tc.scenario == "burst" {
				cfg.Count = n
			}
			if tc.scenario == "mixed" {
				cfg.Cancel, cfg.Reschedule = 0.5, 0.3
			}
			rep, err := Run(context.Background(), tc.scenario, m, cfg, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			if rep.Interrupted || rep.Error != "" {
				t.Fatalf("run interrupted: %q", rep.Error)
			}
			checkFilled(t, rep, tc.scenario)
			var failed []string
			for _, c := range rep.Checks {
				want, bad := tc.want[c.Name]
				switch {
				case !bad && !c.OK():
					t.Errorf("check %q = %d, want %d", c.Name, c.Got, c.Want)
				case bad && want >= 0 && c.Got != want:
					t.Errorf("check %q = %d, want %d", c.Name, c.Got, want)
				case bad && want < 0 && c.Got <= 0:
					t.Errorf("check %q = %d, want some", c.Name, c.Got)
				}
				if bad {
					failed = append(failed, c.Name)
				}
			}
			if len(failed) != len(tc.want) {
				t.Errorf("checks %v failed, want %d of them: %+v", failed, len(tc.want), rep.Checks)
			}
			err = rep.Err()
			if len(tc.want) == 0 && err != nil {
				t.Errorf("Err = %v, want nil", err)
			}
			for name := range tc.want {
				if err == nil || !strings.Contains(err.Error(), name) {
					t.Errorf("Err = %v, does not name %q", err, name)
				}
			}
			if want := tc.want["early deliveries"]; want > 0 {
				if c := check(t, rep, "early deliveries"); !strings.Contains(c.Note, "early") || !strings.Contains(c.Note, "earliest") {
					t.Errorf("early check note %q does not say how early", c.Note)
				}
				if d := dist(t, rep, "lateness"); d.Min != 0 {
					t.Errorf("lateness min = %g with early deliveries, want 0 (they are recorded as 0)", d.Min)
				}
			}
			if tc.scenario == "fire" {
				dropped := tc.want["not delivered"]
				if got := metric(t, rep, "delivered"); got != float64(n-dropped) {
					t.Errorf("delivered = %g, want %d", got, n-dropped)
				}
				if d := dist(t, rep, "lateness"); d.Count != n-dropped {
					t.Errorf("lateness count = %d, want %d", d.Count, n-dropped)
				}
				// The fake says when it fired: the lateness at send.
				if d := dist(t, rep, "lateness at send (target's clock)"); d.Count != n-dropped {
					t.Errorf("lateness at send count = %d, want %d", d.Count, n-dropped)
				}
			}
			if tc.scenario == "mixed" {
				if metric(t, rep, "cancelled") <= 0 || metric(t, rep, "rescheduled") <= 0 || metric(t, rep, "created") <= 0 {
					t.Errorf("mixed metrics: %+v", rep.Metrics)
				}
				if d := dist(t, rep, "Cancel call"); d.Count == 0 {
					t.Error("no Cancel calls timed")
				}
			}
			// Nothing is left behind: the dropped timers were removed (and
			// the cancels ignored may still be firing).
			waitEmpty(t, m)
		})
	}
}

// TestRunMixedMoveIgnored has a target whose Reschedule says it moved a
// timer but fires it at the old time: early against the new one.
func TestRunMixedMoveIgnored(t *testing.T) {
	t.Parallel()
	m := &ignoreMoves{memTarget: newMemTarget()}
	cfg := memConfig()
	cfg.Cancel, cfg.Reschedule = 0.2, 0.5
	rep, err := Run(context.Background(), "mixed", m, cfg, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if c := check(t, rep, "early deliveries"); c.Got == 0 {
		t.Errorf("early deliveries = 0 with moves ignored: %+v", rep.Checks)
	}
	if err := rep.Err(); err == nil || !strings.Contains(err.Error(), "early deliveries") {
		t.Errorf("Err = %v", err)
	}
	waitEmpty(t, m.memTarget)
}

type ignoreMoves struct{ *memTarget }

func (m *ignoreMoves) Reschedule(_ context.Context, ids []string, _ []time.Time, ok []bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, id := range ids {
		_, ok[i] = m.timers[id]
	}
	return nil
}

// reviveMoves is a target whose Reschedule returns only after the timers'
// old due times, and then moves each to its new time even if it has fired
// meanwhile, as timerd does with a timer whose delivery is not yet
// acknowledged: a new occurrence.
type reviveMoves struct {
	*memTarget
	mu  sync.Mutex
	all map[string]Timer
}

func (m *reviveMoves) Schedule(ctx context.Context, timers []Timer) error {
	m.mu.Lock()
	for _, t := range timers {
		m.all[t.ID] = t
	}
	m.mu.Unlock()
	return m.memTarget.Schedule(ctx, timers)
}

func (m *reviveMoves) Reschedule(_ context.Context, ids []string, due []time.Time, ok []bool) error {
	var latest time.Time
	m.mu.Lock()
	for _, id := range ids {
		if d := m.all[id].Due; d.After(latest) {
			latest = d
		}
	}
	m.mu.Unlock()
	time.Sleep(time.Until(latest.Add(20 * time.Millisecond)))
	m.memTarget.mu.Lock()
	defer m.memTarget.mu.Unlock()
	for i, id := range ids {
		m.remove(id)
		m.mu.Lock()
		t := m.all[id]
		m.mu.Unlock()
		t.Due = due[i]
		mt := &memTimer{t: t}
		m.timers[id] = mt
		m.arm(mt)
		ok[i] = true
	}
	return nil
}

// TestRunMixedLateMoveRevives: a move that returns after the timer's due
// time may have revived a timer the run received; the run removes it.
func TestRunMixedLateMoveRevives(t *testing.T) {
	t.Parallel()
	m := &reviveMoves{memTarget: newMemTarget(), all: map[string]Timer{}}
	cfg := memConfig()
	// Moves of a second: the revived timers are due well after the run's
	// last delivery.
	cfg.Cancel, cfg.Reschedule, cfg.Delay, cfg.Concurrency = 0, 0.3, 2*time.Second, 16
	rep, err := Run(context.Background(), "mixed", m, cfg, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Errorf("Err = %v", err)
	}
	if got := metric(t, rep, "cancels and moves done after the due time"); got == 0 {
		t.Fatalf("no late moves: %+v", rep.Metrics)
	}
	// At once: the revived timers are due after the last delivery the run
	// waited for, and nothing but the run's cleanup removes them.
	if got := m.stored(); got != 0 {
		t.Errorf("%d timers left in the target", got)
	}
}

// failingTarget fails every Schedule after the first few calls.
type failingTarget struct {
	*memTarget
	calls atomic.Int64
}

func (f *failingTarget) Schedule(ctx context.Context, timers []Timer) error {
	if f.calls.Add(1) > 3 {
		return errors.New("disk on fire")
	}
	return f.memTarget.Schedule(ctx, timers)
}

func TestRunTargetFails(t *testing.T) {
	t.Parallel()
	f := &failingTarget{memTarget: newMemTarget()}
	cfg := memConfig()
	cfg.Concurrency = 1
	rep, err := Run(context.Background(), "fire", f, cfg, Progress{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Interrupted || !strings.Contains(rep.Error, "disk on fire") {
		t.Errorf("report of a failing target: interrupted %v error %q", rep.Interrupted, rep.Error)
	}
	if err := rep.Err(); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Errorf("Err = %v, want the target's failure", err)
	}
	// A run cut short does not count the timers it never scheduled as
	// lost.
	for _, c := range rep.Checks {
		if c.Name == "not delivered" {
			t.Errorf("an interrupted run has a not-delivered check: %+v", c)
		}
	}
	waitEmpty(t, f.memTarget)
}

func TestRunErrors(t *testing.T) {
	t.Parallel()
	m := newMemTarget()
	for _, tc := range []struct {
		scenario string
		target   Target
		cfg      Config
		want     error
	}{
		{"nope", m, Config{}, ErrScenario},
		{"", m, Config{}, ErrScenario},
		{"Fire", m, Config{}, ErrScenario},
		{"fire", storeOnly{m}, Config{}, ErrUnsupported},
		{"burst", storeOnly{m}, Config{}, ErrUnsupported},
		{"mixed", storeOnly{m}, Config{}, ErrUnsupported},
		// A Firer that cannot cancel cannot run mixed.
		{"mixed", struct{ Firer }{m}, Config{}, ErrUnsupported},
		{"fire", m, Config{Concurrency: -1}, ErrConfig},
		{"schedule", m, Config{Batches: []int{0}}, ErrConfig},
		{"mixed", m, Config{Cancel: 0.9, Reschedule: 0.9}, ErrConfig},
	} {
		rep, err := Run(context.Background(), tc.scenario, tc.target, tc.cfg, Progress{})
		if !errors.Is(err, tc.want) || rep != nil {
			t.Errorf("Run(%q, %T, %+v) = %v, %v, want %v", tc.scenario, tc.target, tc.cfg, rep, err, tc.want)
		}
	}
	if got := m.stored(); got != 0 {
		t.Errorf("a run that did not start stored %d timers", got)
	}
}

func TestRunScheduleMem(t *testing.T) {
	t.Parallel()
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep=%v", keep), func(t *testing.T) {
			t.Parallel()
			m := newMemTarget()
			// Closed loop, bounded by Count per batch size.
			rep, err := Run(context.Background(), "schedule", m,
				Config{Duration: 5 * time.Second, Count: 1000, Batches: []int{7, 100}, Concurrency: 3, Keep: keep, Tick: 50 * time.Millisecond}, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			checkFilled(t, rep, "schedule")
			if len(rep.Metrics) != 4 || len(rep.Dists) != 2 || rep.Err() != nil {
				t.Errorf("metrics %+v dists %d err %v", rep.Metrics, len(rep.Dists), rep.Err())
			}
			// 1,000 a phase: 143 calls of 7 (the last of 6), 10 of 100.
			if d := dist(t, rep, "Schedule call, batch=7"); d.Count != 143 {
				t.Errorf("calls of 7 = %d, want 143", d.Count)
			}
			if d := dist(t, rep, "Schedule call, batch=100"); d.Count != 10 {
				t.Errorf("calls of 100 = %d, want 10", d.Count)
			}
			want := 0
			if keep {
				want = 2000
			}
			if got := m.stored(); got != want {
				t.Errorf("%d timers stored after the run, want %d", got, want)
			}
		})
	}
}

// TestRunProgress shows the progress lines on a plain writer.
func TestRunProgress(t *testing.T) {
	t.Parallel()
	var out syncBuffer
	m := newMemTarget()
	cfg := memConfig()
	rep, err := Run(context.Background(), "fire", m, cfg, Progress{W: &out, Every: time.Millisecond})
	if err != nil || rep.Err() != nil {
		t.Fatalf("Run = %v, %v", err, rep.Err())
	}
	s := out.String()
	if !strings.Contains(s, "delivered") || !strings.Contains(s, "scheduled") || strings.Contains(s, "\r") {
		t.Errorf("progress output:\n%s", s)
	}
}

// syncBuffer is a strings.Builder that may be written concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startTimerd starts an in-process timerd on loopback with its embedded
// store in a temporary directory, and a client of it. Its shards keep the
// production lease, ack timeout and store-op timeout rather than
// LocalConfig's, which a loaded machine (-race, parallel tests) can
// outlast: a lost lease or an ack timeout redelivers timers the run has
// already received, and those are left behind after it.
func startTimerd(t *testing.T) (*server.Server, *client.Client) {
	t.Helper()
	cfg := server.LocalConfig(t.TempDir())
	prod := shard.DefaultConfig(0, "")
	cfg.Shard.LeaseTTL, cfg.Shard.AckTimeout, cfg.Shard.OpTimeout, cfg.Shard.MaxAttempts = prod.LeaseTTL, prod.AckTimeout, prod.OpTimeout, prod.MaxAttempts
	srv := servertest.Start(t, cfg)
	cl, err := client.New(context.Background(), srv.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return srv, cl
}

// recorder is the timerd target that records the ids of every timer a
// run asked it to schedule, and calls after (when set) once a Schedule
// of the run's own timers (not the probe) has returned.
type recorder struct {
	*Timerd
	after func(calls int)

	mu    sync.Mutex
	ids   []string
	calls int
}

func (r *recorder) Schedule(ctx context.Context, timers []Timer) error {
	err := r.Timerd.Schedule(ctx, timers)
	r.mu.Lock()
	for _, t := range timers {
		r.ids = append(r.ids, t.ID)
	}
	probe := len(timers) == 1 && strings.Contains(timers[0].ID, "-probe")
	if !probe {
		r.calls++
	}
	calls := r.calls
	r.mu.Unlock()
	if !probe && r.after != nil {
		r.after(calls)
	}
	return err
}

// runIDs returns the ids recorded, less the probe's.
func (r *recorder) runIDs() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var ids []string
	for _, id := range r.ids {
		if !strings.Contains(id, "-probe") {
			ids = append(ids, id)
		}
	}
	return ids
}

// sample returns at most about k of ids, spread over them, with the
// first and the last.
func sample(ids []string, k int) []string {
	if len(ids) <= k {
		return ids
	}
	var out []string
	step := len(ids) / k
	for i := 0; i < len(ids); i += step {
		out = append(out, ids[i])
	}
	return append(out, ids[len(ids)-1])
}

// waitGone waits until none of ids is stored in timerd's namespace "bench":
// acknowledgements and cancels are applied asynchronously.
func waitGone(t *testing.T, cl *client.Client, ids []string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, id := range ids {
		for {
			info, err := cl.Get(context.Background(), "bench", id)
			if errors.Is(err, client.ErrNotFound) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("timer %s still there after the run: Get = %+v, %v (now %v)", id, info, err, time.Now())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// checkDelivered checks a run that delivered: every check holds, nothing
// early, and every timer scheduled was delivered once.
func checkDelivered(t *testing.T, rep *Report, scheduled int) {
	t.Helper()
	if err := rep.Err(); err != nil || rep.Interrupted {
		t.Fatalf("run failed: %v (interrupted %v, error %q)", err, rep.Interrupted, rep.Error)
	}
	if c := check(t, rep, "early deliveries"); c.Got != 0 {
		t.Errorf("early deliveries = %d", c.Got)
	}
	if c := check(t, rep, "not delivered"); c.Got != 0 {
		t.Errorf("not delivered = %d", c.Got)
	}
	if got := dist(t, rep, "lateness").Count; got != int64(scheduled) {
		t.Errorf("lateness recorded for %d timers, want %d", got, scheduled)
	}
	if got := dist(t, rep, "lateness at send (target's clock)").Count; got != int64(scheduled) {
		t.Errorf("lateness at send recorded for %d timers, want %d", got, scheduled)
	}
}

func TestTimerdScenarios(t *testing.T) {
	t.Parallel()
	const tick = 50 * time.Millisecond
	t.Run("schedule", func(t *testing.T) {
		t.Parallel()
		srv, cl := startTimerd(t)
		for _, keep := range []bool{false, true} {
			rec := &recorder{Timerd: NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{})}
			rep, err := Run(context.Background(), "schedule", rec,
				Config{Duration: 500 * time.Millisecond, Count: 5000, Batches: []int{10, 100}, Concurrency: 8, Keep: keep, Tick: tick}, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			checkFilled(t, rep, "schedule")
			if err := rep.Err(); err != nil || rep.Interrupted {
				t.Fatalf("keep=%v: %v (interrupted %v)", keep, err, rep.Interrupted)
			}
			for _, b := range []int{10, 100} {
				if metric(t, rep, fmt.Sprintf("scheduled, batch=%d", b)) <= 0 || metric(t, rep, fmt.Sprintf("calls, batch=%d", b)) <= 0 {
					t.Errorf("keep=%v: metrics %+v", keep, rep.Metrics)
				}
			}
			ids := rec.runIDs()
			if len(ids) == 0 || len(ids) > 10000 {
				t.Fatalf("keep=%v: %d timers scheduled", keep, len(ids))
			}
			if !keep {
				waitGone(t, cl, sample(ids, 200))
				continue
			}
			// Kept: they are there, pending, due in an hour.
			for _, id := range sample(ids, 100) {
				info, err := cl.Get(context.Background(), "bench", id)
				if err != nil {
					t.Fatalf("keep: Get %s: %v", id, err)
				}
				if d := time.Until(info.Due); d < 50*time.Minute || d > time.Hour {
					t.Errorf("keep: timer %s due in %v, want about 1h", id, d)
				}
			}
		}
	})
	t.Run("fire", func(t *testing.T) {
		t.Parallel()
		srv, cl := startTimerd(t)
		rec := &recorder{Timerd: NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{})}
		rep, err := Run(context.Background(), "fire", rec,
			Config{Duration: time.Second, Rate: 500, Lead: 500 * time.Millisecond, Drain: 20 * time.Second, Tick: tick}, Progress{})
		if err != nil {
			t.Fatal(err)
		}
		checkFilled(t, rep, "fire")
		ids := rec.runIDs()
		if len(ids) != 500 {
			t.Errorf("%d timers scheduled, want 500", len(ids))
		}
		checkDelivered(t, rep, len(ids))
		if got := metric(t, rep, "delivered"); got != float64(len(ids)) {
			t.Errorf("delivered = %g, scheduled %d", got, len(ids))
		}
		if got := metric(t, rep, "redeliveries"); got != 0 {
			t.Errorf("redeliveries = %g", got)
		}
		waitGone(t, cl, sample(ids, 100))
	})
	t.Run("mixed", func(t *testing.T) {
		t.Parallel()
		srv, cl := startTimerd(t)
		rec := &recorder{Timerd: NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{})}
		rep, err := Run(context.Background(), "mixed", rec,
			Config{Duration: time.Second, Rate: 300, Delay: time.Second, Drain: 20 * time.Second, Tick: tick}, Progress{})
		if err != nil {
			t.Fatal(err)
		}
		checkFilled(t, rep, "mixed")
		ids := rec.runIDs()
		if len(ids) != 300 {
			t.Errorf("%d timers scheduled, want 300", len(ids))
		}
		if err := rep.Err(); err != nil || rep.Interrupted {
			t.Fatalf("run failed: %v (interrupted %v)", err, rep.Interrupted)
		}
		for _, name := range []string{"early deliveries", "not delivered", "stray deliveries", "cancelled timers fired"} {
			if c := check(t, rep, name); c.Got != 0 {
				t.Errorf("%s = %d", name, c.Got)
			}
		}
		for _, name := range []string{"created", "fired and acked"} {
			if metric(t, rep, name) <= 0 {
				t.Errorf("metric %s = 0", name)
			}
		}
		// How many cancels and moves land before their timers are due
		// depends on the machine's speed; the timers of neither share
		// (fate >= 0.9) fire whatever it is, the cancelled never.
		fate := func(seq int64) float64 { return float64(uint64(seq)*0x9E3779B97F4A7C15>>11) / (1 << 53) }
		var untouched int64
		for seq := range int64(300) {
			if fate(seq) >= 0.9 {
				untouched++
			}
		}
		if got := dist(t, rep, "lateness").Count; got < untouched || got > 300 {
			t.Errorf("lateness recorded for %d of 300 timers, want at least the %d neither cancelled nor moved: %+v", got, untouched, rep.Metrics)
		}
		waitGone(t, cl, sample(ids, 100))
	})
	t.Run("burst", func(t *testing.T) {
		t.Parallel()
		srv, cl := startTimerd(t)
		rec := &recorder{Timerd: NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{})}
		rep, err := Run(context.Background(), "burst", rec,
			Config{Count: 2000, Lead: 2 * time.Second, Drain: 20 * time.Second, Tick: tick}, Progress{})
		if err != nil {
			t.Fatal(err)
		}
		checkFilled(t, rep, "burst")
		ids := rec.runIDs()
		if len(ids) != 2000 {
			t.Errorf("%d timers scheduled, want 2000", len(ids))
		}
		checkDelivered(t, rep, len(ids))
		if got := metric(t, rep, "herd"); got != 2000 {
			t.Errorf("herd = %g", got)
		}
		if metric(t, rep, "time to drain") <= 0 || metric(t, rep, "first delivery after the instant") < 0 {
			t.Errorf("burst metrics: %+v", rep.Metrics)
		}
		waitGone(t, cl, sample(ids, 200))
	})
	t.Run("interrupted", func(t *testing.T) {
		t.Parallel()
		srv, cl := startTimerd(t)
		for _, tc := range []struct {
			scenario string
			cfg      Config
		}{
			{"fire", Config{Duration: 5 * time.Second, Rate: 1000, Batches: []int{50}, Lead: 300 * time.Millisecond, Tick: tick}},
			{"mixed", Config{Duration: 5 * time.Second, Rate: 1000, Batches: []int{50}, Delay: time.Second, Tick: tick}},
			{"burst", Config{Count: 5000, Batches: []int{50}, Lead: 5 * time.Second, Tick: tick}},
			{"schedule", Config{Duration: 5 * time.Second, Batches: []int{50, 100}, Tick: tick}},
		} {
			ctx, cancel := context.WithCancel(context.Background())
			// One caller, stopped (Ctrl-C) once it has made 10 calls: the
			// figures cover those, and no call is in flight.
			tc.cfg.Concurrency = 1
			rec := &recorder{Timerd: NewTimerd(cl, srv.GRPCAddr(), TimerdOptions{}), after: func(calls int) {
				if calls == 10 {
					cancel()
				}
			}}
			rep, err := Run(ctx, tc.scenario, rec, tc.cfg, Progress{})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if !rep.Interrupted {
				t.Errorf("%s: report not marked interrupted", tc.scenario)
			}
			if err := rep.Err(); err != nil {
				t.Errorf("%s: Err of an interrupted run = %v, want nil", tc.scenario, err)
			}
			if len(rep.Metrics) == 0 || len(rep.Dists) == 0 || len(rep.Series) == 0 {
				t.Errorf("%s: no partial figures: %+v", tc.scenario, rep)
			}
			ids := rec.runIDs()
			if len(ids) != 500 {
				t.Errorf("%s: %d timers scheduled, want the 10 calls of 50 made before the interrupt", tc.scenario, len(ids))
			}
			calls := dist(t, rep, "Schedule call, batch=50").Count
			if calls != 10 {
				t.Errorf("%s: %d calls timed, want 10", tc.scenario, calls)
			}
			for _, c := range rep.Checks {
				if c.Name == "not delivered" {
					t.Errorf("%s: an interrupted run checks for lost timers: %+v", tc.scenario, c)
				}
			}
			waitGone(t, cl, ids)
		}
	})
}

// TestAfterFunc runs fire and burst on the in-process peer: every timer
// arrives once, none early, and nothing is left pending afterwards.
func TestAfterFunc(t *testing.T) {
	for _, tc := range []struct {
		scenario string
		cfg      Config
		want     int64
	}{
		{"fire", Config{Rate: 1000, Duration: 500 * time.Millisecond, Lead: 200 * time.Millisecond, Drain: 5 * time.Second, Tick: 50 * time.Millisecond}, 500},
		{"burst", Config{Count: 3000, Lead: 300 * time.Millisecond, Drain: 5 * time.Second, Tick: 50 * time.Millisecond}, 3000},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			a := NewAfterFunc()
			defer a.Close()
			rep, err := Run(context.Background(), tc.scenario, a, tc.cfg, Progress{})
			if err != nil {
				t.Fatal(err)
			}
			if err := rep.Err(); err != nil {
				t.Fatalf("%v\n%+v", err, rep.Checks)
			}
			if got := rep.Dists[0].Count; got != tc.want {
				t.Errorf("lateness recorded for %d timers, want %d", got, tc.want)
			}
			if pending := a.pending(); pending != 0 {
				t.Errorf("%d timers left pending", pending)
			}
		})
	}
	if _, err := Run(context.Background(), "mixed", NewAfterFunc(), Config{}, Progress{}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("mixed on afterfunc: %v, want ErrUnsupported", err)
	}
}

// TestAfterFuncHolds checks that the in-process peer keeps a timer that
// fires before its topic has a subscription, as timerd does, and hands it
// to the next subscription.
func TestAfterFuncHolds(t *testing.T) {
	a := NewAfterFunc()
	defer a.Close()
	if err := a.Schedule(context.Background(), []Timer{{ID: "early-bird", Topic: "t", Due: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	for { // wait until it has fired, with nobody subscribed
		a.mu.Lock()
		n := len(a.held["t"])
		a.mu.Unlock()
		if n == 1 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if n := a.pending(); n != 0 {
		t.Errorf("%d timers pending after the only one fired", n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan Delivery, 1)
	go func() { _ = a.Subscribe(ctx, "t", func(d Delivery) { got <- d; cancel() }) }()
	select {
	case d := <-got:
		if d.ID != "early-bird" {
			t.Errorf("delivered %q, want early-bird", d.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held delivery never reached the subscription")
	}
}
