package bench

import (
	"context"
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// schedule measures durable schedules per second: one phase per batch
// size, each Concurrency callers in a closed loop (or paced at Rate) for
// Duration or Count timers, all due Delay from now so none fires during
// the run. It reports timers/s, calls/s and the latency of every call.
func (r *run) schedule(ctx context.Context) {
	cfg := r.cfg
	m, stopMeter := r.startMeter(cfg.Duration*time.Duration(len(cfg.Batches)), "scheduled")
	scheduled := m.counter("scheduled")
	due := func(int64) time.Time { return r.clock.Now().Add(cfg.Delay).Truncate(time.Millisecond) }
	var issued int64 // timers handed to callers, over every phase
	for _, b := range cfg.Batches {
		if ctx.Err() != nil {
			break
		}
		m.setPhase(fmt.Sprintf("batch=%d", b))
		lat := NewLatency()
		before := scheduled.n.Load()
		start := r.clock.Now()
		phaseCtx, cancel := context.WithDeadline(ctx, start.Add(cfg.Duration))
		jobs, wait := r.scheduler(ctx, due, lat, scheduled, nil, nil)
		base := issued
		if cfg.Rate > 0 {
			n := int64(cfg.Rate * cfg.Duration.Seconds())
			if cfg.Count > 0 {
				n = min(n, cfg.Count)
			}
			// Wait for whole batches: the rate is what is offered.
			linger := time.Duration(float64(b) / cfg.Rate * float64(time.Second))
			release(phaseCtx, r.clock, Pacer{Start: start, Rate: cfg.Rate}, n, b, 0, linger, func(from, to int64) bool {
				issued = base + to
				return send(phaseCtx, jobs, span{base + from, base + to})
			})
		} else {
			for (cfg.Count == 0 || issued-base < cfg.Count) && phaseCtx.Err() == nil {
				s := span{issued, issued + int64(b)}
				if cfg.Count > 0 {
					s.to = min(s.to, base+cfg.Count)
				}
				if !send(phaseCtx, jobs, s) {
					break
				}
				issued = s.to
			}
		}
		cancel()
		close(jobs)
		wait()
		elapsed := r.clock.Now().Sub(start)
		r.report.Metrics = append(r.report.Metrics,
			Metric{Name: fmt.Sprintf("scheduled, batch=%d", b), Value: perSecond(scheduled.n.Load()-before, elapsed), Unit: "timers/s"},
			Metric{Name: fmt.Sprintf("calls, batch=%d", b), Value: perSecond(lat.Count(), elapsed), Unit: "calls/s"})
		r.report.Dists = append(r.report.Dists, lat.Dist(fmt.Sprintf("Schedule call, batch=%d", b)))
	}
	stopMeter()
	if !cfg.Keep {
		r.notef("removing the %d timers scheduled", issued)
		r.cleanup(issued, nil)
	}
}

// fire offers timers due at a steady Rate for Duration (or Count timers),
// each scheduled Lead before it is due, to a subscription of the run's
// topic. It reports delivered and acknowledged timers per second and the
// lateness of every first delivery against the time the run asked for.
func (r *run) fire(ctx context.Context) {
	cfg := r.cfg
	n := r.offered()
	m, v, stop := r.open(ctx, n, cfg.Lead+cfg.Duration, "delivered", "scheduled", "delivered")
	if stop == nil {
		return
	}
	m.setPhase("load")
	p := Pacer{Start: ceilMilli(r.clock.Now().Add(cfg.Lead)), Rate: cfg.Rate}
	v.setExpect(p.At)
	lat := NewLatency()
	var late atomic.Int64
	var released atomic.Int64
	jobs, wait := r.scheduler(ctx, p.At, lat, m.counter("scheduled"), nil, &late)
	release(ctx, r.clock, p, n, cfg.Batches[0], cfg.Lead, min(cfg.Lead/4, 100*time.Millisecond), func(from, to int64) bool {
		released.Store(to)
		return send(ctx, jobs, span{from, to})
	})
	close(jobs)
	wait()
	loaded := r.clock.Now()
	m.setPhase("draining")
	scheduled := m.counter("scheduled").n.Load()
	v.drain(ctx, scheduled, p.At(n-1).Add(cfg.Drain))
	stop()

	delivered := v.delivered.n.Load()
	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "offered", Value: cfg.Rate, Unit: "timers/s"},
		Metric{Name: "scheduled", Value: perSecond(scheduled, loaded.Sub(p.Start.Add(-cfg.Lead))), Unit: "timers/s"},
		Metric{Name: "delivered and acked", Value: perSecond(delivered, v.since(p.Start)), Unit: "timers/s"},
		Metric{Name: "delivered", Value: float64(delivered), Unit: "timers"},
		Metric{Name: "scheduled after their due time", Value: float64(late.Load()), Unit: "timers"},
		Metric{Name: "redeliveries", Value: float64(v.redelivered.Load()), Unit: "deliveries"})
	r.report.Dists = append(append(r.report.Dists, v.dists()...), lat.Dist(fmt.Sprintf("Schedule call, batch=%d", cfg.Batches[0])))
	r.report.Checks = v.checks(r.missing(ctx, scheduled-delivered))
	r.cleanup(released.Load(), v.seen.has)
}

// burst schedules Count timers all due at one instant, Lead after the
// start, and measures the herd: how long it takes to drain, and how
// lateness spreads across it.
func (r *run) burst(ctx context.Context) {
	cfg := r.cfg
	n := cfg.Count
	m, v, stop := r.open(ctx, n, cfg.Lead, "delivered", "scheduled", "delivered")
	if stop == nil {
		return
	}
	m.setPhase("scheduling the herd")
	start := r.clock.Now()
	at := ceilMilli(start.Add(cfg.Lead))
	due := func(int64) time.Time { return at }
	v.setExpect(due)
	lat := NewLatency()
	var late atomic.Int64
	jobs, wait := r.scheduler(ctx, due, lat, m.counter("scheduled"), nil, &late)
	released := releaseAll(ctx, jobs, wait, n, int64(cfg.Batches[0]))
	loaded := r.clock.Now()
	m.setPhase("waiting for the instant")
	scheduled := m.counter("scheduled").n.Load()
	v.drain(ctx, scheduled, at.Add(cfg.Drain))
	stop()

	delivered := v.delivered.n.Load()
	drained := v.since(at)
	var first time.Duration
	if f := v.first.Load(); f != 0 {
		first = v.receivedAt(f).Sub(at)
	}
	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "herd", Value: float64(n), Unit: "timers"},
		Metric{Name: "scheduled", Value: perSecond(scheduled, loaded.Sub(start)), Unit: "timers/s"},
		Metric{Name: "time to drain", Value: drained.Seconds() * 1000, Unit: "ms"},
		Metric{Name: "delivered and acked", Value: perSecond(delivered, drained), Unit: "timers/s"},
		Metric{Name: "first delivery after the instant", Value: first.Seconds() * 1000, Unit: "ms"},
		Metric{Name: "scheduled after the instant", Value: float64(late.Load()), Unit: "timers"},
		Metric{Name: "redeliveries", Value: float64(v.redelivered.Load()), Unit: "deliveries"})
	r.report.Dists = append(append(r.report.Dists, v.dists()...), lat.Dist(fmt.Sprintf("Schedule call, batch=%d", cfg.Batches[0])))
	r.report.Checks = v.checks(r.missing(ctx, scheduled-delivered))
	if late.Load() > 0 {
		r.notef("%d timers were scheduled after the instant: raise --lead", late.Load())
	}
	r.cleanup(released, v.seen.has)
}

// mixed is the order-timeout pattern: timers created at Rate, each due
// Delay after its creation; halfway to its due time a share (Cancel) is
// cancelled and another (Reschedule) moved Delay/2 later, and the rest
// fire. It reports each operation's rate and latency, and checks that no
// cancelled timer fires and no moved one fires before its new time.
func (r *run) mixed(ctx context.Context) {
	cfg := r.cfg
	mt := r.t.(Mutator)
	n := r.offered()
	half := (cfg.Delay / 2).Truncate(time.Millisecond)
	m, v, stop := r.open(ctx, n, cfg.Delay+cfg.Duration, "fired", "created", "cancelled", "rescheduled", "fired")
	if stop == nil {
		return
	}
	m.setPhase("load")
	p := Pacer{Start: ceilMilli(r.clock.Now().Add(cfg.Delay)), Rate: cfg.Rate}
	created, cancelled, moved := newBitset(n), newBitset(n), newBitset(n)
	moveTo := func(seq int64) time.Time { return p.At(seq).Add(half) }
	v.setExpect(func(seq int64) time.Time {
		if moved.has(seq) {
			return moveTo(seq)
		}
		return p.At(seq)
	})
	fate := func(seq int64) float64 { return float64(uint64(seq)*0x9E3779B97F4A7C15>>11) / (1 << 53) }

	schedLat, cancelLat, moveLat := NewLatency(), NewLatency(), NewLatency()
	// A Cancel or Reschedule that returns after the timer's due time may
	// have come after it fired: such a timer may fire (at its old time),
	// so it is held to neither check. lateOps counts them.
	unsure := newBitset(n)
	var late, lateOps, missedCancel, missedMove, skipped, released atomic.Int64
	jobs, wait := r.scheduler(ctx, p.At, schedLat, m.counter("created"), &created, &late)
	var wg sync.WaitGroup
	var createdBy time.Time // when the last Schedule returned
	wg.Add(1)
	go func() {
		defer wg.Done()
		release(ctx, r.clock, p, n, cfg.Batches[0], cfg.Delay, min(half/4, 100*time.Millisecond), func(from, to int64) bool {
			released.Store(to)
			return send(ctx, jobs, span{from, to})
		})
		close(jobs)
		wait()
		createdBy = r.clock.Now()
	}()
	// The mutations: the timers of a span are cancelled or moved half
	// their delay before they are due.
	mut := make(chan span, cfg.Concurrency)
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var cancels, moves []int64
			var ids []string
			var dues []time.Time
			var ok []bool
			// apply makes one call for the timers seqs and records, for each
			// it changed, whether the change came before its due time.
			apply := func(seqs []int64, lat *Latency, done *counter, set bitset, missed *atomic.Int64, call func(ids []string, ok []bool) error) {
				if len(seqs) == 0 || ctx.Err() != nil {
					return
				}
				ids, ok = ids[:0], ok[:0]
				for _, seq := range seqs {
					ids = append(ids, r.ID(seq))
					ok = append(ok, false)
				}
				t0 := r.clock.Now()
				if err := call(ids, ok); err != nil {
					if ctx.Err() == nil {
						r.fail(err)
					}
					return
				}
				t1 := r.clock.Now()
				lat.Record(t1.Sub(t0))
				for i, seq := range seqs {
					switch {
					case !ok[i]:
						missed.Add(1)
					case t1.Before(p.At(seq)):
						set.set(seq)
						done.add(1)
					default:
						unsure.set(seq)
						lateOps.Add(1)
						done.add(1)
					}
				}
			}
			for s := range mut {
				cancels, moves, dues = cancels[:0], moves[:0], dues[:0]
				for seq := s.from; seq < s.to; seq++ {
					f := fate(seq)
					switch {
					case f >= cfg.Cancel+cfg.Reschedule:
						continue
					case !created.has(seq):
						skipped.Add(1) // its Schedule has not returned yet
					case f < cfg.Cancel:
						cancels = append(cancels, seq)
					default:
						moves = append(moves, seq)
						dues = append(dues, moveTo(seq))
					}
				}
				apply(cancels, cancelLat, m.counter("cancelled"), cancelled, &missedCancel, func(ids []string, ok []bool) error {
					if err := mt.Cancel(ctx, ids, ok); err != nil {
						return fmt.Errorf("cancel: %w", err)
					}
					return nil
				})
				apply(moves, moveLat, m.counter("rescheduled"), moved, &missedMove, func(ids []string, ok []bool) error {
					if err := mt.Reschedule(ctx, ids, dues, ok); err != nil {
						return fmt.Errorf("reschedule: %w", err)
					}
					return nil
				})
			}
		}()
	}
	release(ctx, r.clock, p, n, cfg.Batches[0], half, min(half/4, 100*time.Millisecond), func(from, to int64) bool {
		return send(ctx, mut, span{from, to})
	})
	close(mut)
	wg.Wait()
	loaded := r.clock.Now() // the last mutation returned too
	m.setPhase("draining")
	// mustFire is a timer that was created and neither cancelled nor
	// changed too late to be sure of.
	mustFire := func(seq int64) bool { return created.has(seq) && !cancelled.has(seq) && !unsure.has(seq) }
	var expected int64
	for seq := range n {
		if mustFire(seq) {
			expected++
		}
	}
	// Deliveries of unsure timers count too, so drain on the ones that
	// must fire. The drain polls this every 10ms, so it counts a word of
	// each set at a time rather than test every timer.
	arrived := func() int64 {
		var k int
		for w := range v.seen {
			k += bits.OnesCount64(v.seen[w].Load() & created[w].Load() &^ cancelled[w].Load() &^ unsure[w].Load())
		}
		return int64(k)
	}
	v.drainUntil(ctx, func() bool { return arrived() >= expected }, moveTo(n-1).Add(cfg.Drain))
	stop()

	var firedCancelled, missing int64
	for seq := range n {
		switch {
		case cancelled.has(seq) && v.seen.has(seq):
			firedCancelled++
		case mustFire(seq) && !v.seen.has(seq):
			missing++
		}
	}
	// Each kind of operation is rated over its own window: creations from
	// the start, mutations from half a delay later, fires from the first
	// due time.
	creating := createdBy.Sub(p.Start.Add(-cfg.Delay))
	mutating := loaded.Sub(p.Start.Add(-half))
	c := func(name string) int64 { return m.counter(name).n.Load() }
	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "offered", Value: cfg.Rate, Unit: "timers/s"},
		Metric{Name: "created", Value: perSecond(c("created"), creating), Unit: "timers/s"},
		Metric{Name: "cancelled", Value: perSecond(c("cancelled"), mutating), Unit: "timers/s"},
		Metric{Name: "rescheduled", Value: perSecond(c("rescheduled"), mutating), Unit: "timers/s"},
		Metric{Name: "fired and acked", Value: perSecond(c("fired"), v.since(p.Start)), Unit: "timers/s"},
		Metric{Name: "operations", Value: perSecond(c("created")+c("cancelled")+c("rescheduled")+c("fired"), v.since(p.Start.Add(-cfg.Delay))), Unit: "ops/s"},
		Metric{Name: "cancels and moves done after the due time", Value: float64(lateOps.Load()), Unit: "timers"},
		Metric{Name: "cancels too late (already fired and acked)", Value: float64(missedCancel.Load()), Unit: "timers"},
		Metric{Name: "moves too late (already fired and acked)", Value: float64(missedMove.Load()), Unit: "timers"},
		Metric{Name: "mutations skipped (schedule not yet returned)", Value: float64(skipped.Load()), Unit: "timers"},
		Metric{Name: "redeliveries", Value: float64(v.redelivered.Load()), Unit: "deliveries"})
	r.report.Dists = append(append(r.report.Dists, v.dists()...),
		schedLat.Dist(fmt.Sprintf("Schedule call, batch=%d", cfg.Batches[0])),
		cancelLat.Dist("Cancel call"), moveLat.Dist("Reschedule call"))
	r.report.Checks = append(v.checks(r.missing(ctx, missing)),
		Check{Name: "cancelled timers fired", Got: firedCancelled, Want: 0, Note: "cancelled before due, then delivered"})
	if lateOps.Load() > 0 {
		r.notef("%d cancels and moves returned after their timers were due: the target is overloaded at this rate", lateOps.Load())
	}
	// An unsure timer may have been delivered and then revived by a late
	// Reschedule (a new occurrence at its new time), so it is removed even
	// if it was seen.
	r.cleanup(released.Load(), func(seq int64) bool { return (v.seen.has(seq) && !unsure.has(seq)) || cancelled.has(seq) })
}

// offered is the number of timers a paced scenario offers: Rate for
// Duration, at most Count.
func (r *run) offered() int64 {
	n := max(1, int64(r.cfg.Rate*r.cfg.Duration.Seconds()))
	if r.cfg.Count > 0 {
		n = min(n, r.cfg.Count)
	}
	return n
}

// open starts the meter of a scenario that fires (counters names, shown
// over budget) and its subscription, feeding a receiver of n timers that
// counts deliveries on the counter named delivered. stop ends both; it is
// nil when the subscription failed, which has failed the run.
func (r *run) open(ctx context.Context, n int64, budget time.Duration, delivered string, names ...string) (m *meter, v *receiver, stop func()) {
	m, stopMeter := r.startMeter(budget, names...)
	v = r.newReceiver(n, m.counter(delivered))
	m.setPhase("subscribing")
	stopSub := r.subscribe(ctx, v)
	if stopSub == nil {
		stopMeter()
		return m, v, nil
	}
	return m, v, func() { stopSub(); stopMeter() }
}

// missing returns n as the count of timers never delivered, or -1 (no
// check) when the run was cut short.
func (r *run) missing(ctx context.Context, n int64) int64 {
	if ctx.Err() != nil || r.failure() != nil {
		return -1
	}
	return n
}

// notef writes a line for the person watching the run.
func (r *run) notef(format string, args ...any) {
	if r.prog.w != nil {
		fmt.Fprintf(r.prog.w, format+"\n", args...)
	}
}
