package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Progress says where Run shows how a run goes.
type Progress struct {
	// W receives the progress display; nil shows none.
	W io.Writer
	// TTY redraws one line with a bar in place; otherwise a plain line is
	// written every Every.
	TTY bool
	// Every is the interval of plain lines (default 5s).
	Every time.Duration
}

// ProgressTo shows progress on w: a bar redrawn in place when w is a
// terminal, plain lines every 5s otherwise.
func ProgressTo(w io.Writer) Progress {
	p := Progress{W: w}
	if f, ok := w.(*os.File); ok {
		st, err := f.Stat()
		p.TTY = err == nil && st.Mode()&os.ModeCharDevice != 0
	}
	return p
}

// Run runs scenario against t with cfg and returns its report. A run that
// ctx ends (Ctrl-C) or that the target fails stops its load, waits no
// further for deliveries and returns the report of what it measured so
// far, marked Interrupted; the error is only for a run that cannot start:
// a bad Config (ErrConfig), an unknown scenario (ErrScenario) or one t
// cannot run (ErrUnsupported).
//
// Before it returns, Run removes the timers it left in the target (not
// delivered, or all of them for schedule unless Keep), so a bench leaves
// no topic with timers nobody will take.
func Run(ctx context.Context, scenario string, t Target, cfg Config, prog Progress) (*Report, error) {
	cfg = cfg.WithDefaults(scenario)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if len(cfg.Rates) > 1 {
		return nil, fmt.Errorf("%w: Rates: a run takes one rate; Sweep runs fire at each of %d", ErrConfig, len(cfg.Rates))
	}
	var body func(*run, context.Context)
	switch scenario {
	case "schedule":
		body = (*run).schedule
	case "fire", "burst":
		if _, ok := t.(Firer); !ok {
			return nil, fmt.Errorf("%w: %s does not deliver timers, so it cannot run %s", ErrUnsupported, t.Name(), scenario)
		}
		body = (*run).fire
		if scenario == "burst" {
			body = (*run).burst
		}
	case "mixed":
		_, fires := t.(Firer)
		_, mutates := t.(Mutator)
		if !fires || !mutates {
			return nil, fmt.Errorf("%w: %s cannot cancel, move and deliver timers, so it cannot run mixed", ErrUnsupported, t.Name())
		}
		body = (*run).mixed
	case "failover", "recovery":
		if _, ok := t.(Cluster); !ok {
			return nil, fmt.Errorf("%w: %s has no shard map to read, so it cannot run %s", ErrUnsupported, t.Name(), scenario)
		}
		body = (*run).failover
		if scenario == "recovery" {
			body = (*run).recovery
		}
		if scenario == "failover" && !cfg.Kill.set() {
			return nil, fmt.Errorf("%w: Kill: failover needs an action that kills a node (--kill-cmd)", ErrConfig)
		}
		if scenario == "recovery" && !cfg.Restart.set() {
			return nil, fmt.Errorf("%w: Restart: recovery needs an action that restarts the cluster (--restart-cmd)", ErrConfig)
		}
	default:
		return nil, fmt.Errorf("%w %q (want one of %s)", ErrScenario, scenario, strings.Join(Scenarios, ", "))
	}
	if prog.Every <= 0 {
		prog.Every = 5 * time.Second
	}
	var rid [4]byte
	rand.Read(rid[:])
	r := &run{
		cfg:     cfg,
		t:       t,
		clock:   cfg.Clock,
		id:      hex.EncodeToString(rid[:]),
		payload: make([]byte, cfg.PayloadSize),
		prog:    &progress{w: prog.W, tty: prog.TTY, every: prog.Every},
	}
	r.topic = "bench-" + r.id
	for i := range r.payload {
		r.payload[i] = 'a' + byte(i%26)
	}
	r.report = &Report{Scenario: scenario, Target: t.Name(), Addr: t.Addr(), Start: time.Now(), Host: host(),
		Params: cfg.params(scenario)}
	start := r.clock.Now()

	loadCtx, stop := context.WithCancel(ctx)
	r.stop = stop
	// The floor probe runs beside the whole run, on the wall clock
	// whatever cfg.Clock is: it measures the machine, not the run.
	floor := startFloor(cfg.FloorRate)
	body(r, loadCtx)
	stop()
	r.report.Floor = floor.stop(cfg.StarvedP99)

	r.report.Elapsed = r.clock.Now().Sub(start).Seconds()
	if err := r.failure(); err != nil {
		r.report.Interrupted = true
		r.report.Error = err.Error()
	}
	if ctx.Err() != nil {
		r.report.Interrupted = true
	}
	return r.report, nil
}

// run is one Run: what every scenario needs. Scenario methods run on the
// goroutine of Run; the goroutines they start end before they return.
type run struct {
	cfg     Config
	t       Target
	clock   Clock
	id      string // random, names the run's topic and timers
	topic   string
	payload []byte
	prog    *progress
	report  *Report
	stop    context.CancelFunc // ends the load

	mu sync.Mutex
	// err is the first error that stopped the run.
	err error
}

// fail records err as what stopped the run, unless one was already, and
// ends the load.
func (r *run) fail(err error) {
	r.mu.Lock()
	if r.err == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.stop()
}

func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// ID returns the id of the run's timer seq.
func (r *run) ID(seq int64) string {
	return r.id + "-" + strconv.FormatInt(seq, 10)
}

// seqOf returns the sequence number of a timer id of this run.
func (r *run) seqOf(id string) (int64, bool) {
	rest, ok := strings.CutPrefix(id, r.id+"-")
	if !ok {
		return 0, false
	}
	seq, err := strconv.ParseInt(rest, 10, 64)
	return seq, err == nil && seq >= 0
}

// startMeter starts sampling counters names; the returned function stops
// it and takes the series into the report.
func (r *run) startMeter(budget time.Duration, names ...string) (*meter, func()) {
	r.prog.budget = budget
	m := newMeter(r.clock.Now(), r.cfg.Tick, r.prog, names...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.run(ctx, r.clock)
	}()
	return m, func() {
		cancel()
		<-done
		r.report.Series = append(r.report.Series, m.Series()...)
	}
}

// span is the half-open range of sequence numbers [from, to).
type span struct{ from, to int64 }

// scheduler schedules the spans sent on the returned channel with
// Concurrency callers: timer seq is due at due(seq). Each successful call
// sets its timers in ok (when not nil), adds them to done and its latency
// to lat; one that fails fails the run. Timers sent after their due time
// are counted in late. Close the channel, then call wait.
func (r *run) scheduler(ctx context.Context, due func(int64) time.Time, lat *Latency, done *counter, ok *bitset, late *atomic.Int64) (chan<- span, func()) {
	jobs := make(chan span, r.cfg.Concurrency)
	var wg sync.WaitGroup
	for range r.cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf []Timer
			for s := range jobs {
				if ctx.Err() != nil {
					continue // drain, so the sender is never stuck
				}
				buf = buf[:0]
				for seq := s.from; seq < s.to; seq++ {
					buf = append(buf, Timer{ID: r.ID(seq), Topic: r.topic, Due: due(seq), Payload: r.payload})
				}
				t0 := r.clock.Now()
				if late != nil && t0.After(buf[0].Due) {
					late.Add(s.to - s.from)
				}
				if err := r.t.Schedule(ctx, buf); err != nil {
					if ctx.Err() == nil {
						r.fail(fmt.Errorf("schedule: %w", err))
					}
					continue
				}
				lat.Record(r.clock.Now().Sub(t0))
				if ok != nil {
					for seq := s.from; seq < s.to; seq++ {
						ok.set(seq)
					}
				}
				done.add(s.to - s.from)
			}
		}()
	}
	return jobs, wg.Wait
}

// releaseAll sends the timers [0, n) to jobs in spans of batch, all at
// once (the scenarios that load before they measure), then closes jobs
// and waits for the schedulers. It returns how many it sent: fewer than
// n when ctx ended first.
func releaseAll(ctx context.Context, jobs chan<- span, wait func(), n, batch int64) int64 {
	var released int64
	for released < n {
		s := span{released, min(released+batch, n)}
		if !send(ctx, jobs, s) {
			break
		}
		released = s.to
	}
	close(jobs)
	wait()
	return released
}

// send sends s on jobs unless ctx ends first.
func send(ctx context.Context, jobs chan<- span, s span) bool {
	select {
	case jobs <- s:
		return true
	case <-ctx.Done():
		return false
	}
}

// cleanup removes the timers of the run that are still in the target:
// those in [0, n) that gone does not rule out (nil: all). It runs after
// the load with a context of its own, so Ctrl-C still leaves nothing
// behind.
func (r *run) cleanup(n int64, gone func(seq int64) bool) {
	const chunk = 10000
	ids := make([]string, 0, chunk)
	for seq := int64(0); seq < n; seq++ {
		if gone != nil && gone(seq) {
			continue
		}
		if ids = append(ids, r.ID(seq)); len(ids) == chunk {
			if !r.cleanupIDs(ids) {
				return
			}
			ids = ids[:0]
		}
	}
	r.cleanupIDs(ids)
}

// cleanupIDs removes the timers ids from the target and reports whether
// that worked; a failure is added to the report's error.
func (r *run) cleanupIDs(ids []string) bool {
	if len(ids) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := r.t.Cleanup(ctx, r.topic, ids); err != nil {
		r.report.Error = strings.TrimPrefix(r.report.Error+"; ", "; ") + "cleanup: " + err.Error()
		return false
	}
	return true
}

// rate is n per second over d, 0 for an empty d.
func perSecond(n int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

// bitset is a set of sequence numbers; set may be called concurrently.
type bitset []atomic.Uint64

func newBitset(n int64) bitset { return make(bitset, (n+63)/64) }

// set adds i and reports whether it was new.
func (b bitset) set(i int64) bool {
	w, m := &b[i/64], uint64(1)<<(i%64)
	return w.Or(m)&m == 0
}

func (b bitset) has(i int64) bool { return b[i/64].Load()&(1<<(i%64)) != 0 }

// host describes this machine for reports.
func host() Host {
	name, _ := os.Hostname()
	return Host{Hostname: name, OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
}
