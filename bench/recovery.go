package bench

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// recoverySample is how many of the loaded timers recovery looks up after
// the restart, spread evenly over them.
const recoverySample = 1000

// recoveryPoll is how often recovery reads the cluster's layout while it
// waits for every shard to serve again.
const recoveryPoll = 50 * time.Millisecond

// recovery loads Count timers due Delay from now (far enough that none
// fires), then schedules a probe timer due Lead after the restart begins,
// runs Restart, and measures from the restart's start until the cluster's
// shard map shows every shard serving again, and until the probe fires.
// Every shard serving again means: every member from before the restart
// is back, alive and active, at least one as a new process, every shard
// is served, and every shard of a restarted member was acquired again
// (its epoch grew). It then looks up a sample of the loaded timers, which
// must all be there.
func (r *run) recovery(ctx context.Context) {
	cfg := r.cfg
	cl := r.t.(Cluster)
	n := cfg.Count
	probe := n // the probe is the timer after the loaded ones
	m, v, stop := r.open(ctx, n+1, cfg.Duration, "delivered", "scheduled", "delivered")
	if stop == nil {
		return
	}
	at := ceilMilli(r.clock.Now().Add(cfg.Delay))
	var probeDue atomic.Pointer[time.Time]
	v.setExpect(func(seq int64) time.Time {
		if seq == probe {
			if d := probeDue.Load(); d != nil {
				return *d
			}
		}
		return at
	})
	var probeAt atomic.Pointer[time.Time]
	var probeEpoch atomic.Uint64
	v.setOnFirst(func(seq int64, d Delivery, t time.Time) {
		if seq == probe {
			probeEpoch.Store(d.Epoch)
			probeAt.Store(&t)
		}
	})

	m.setPhase("loading")
	lat := NewLatency()
	start := r.clock.Now()
	jobs, wait := r.scheduler(ctx, func(int64) time.Time { return at }, lat, m.counter("scheduled"), nil, nil)
	released := releaseAll(ctx, jobs, wait, n, int64(cfg.Batches[0]))
	loaded := r.clock.Now()
	scheduled := m.counter("scheduled").n.Load()
	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "timers loaded", Value: float64(scheduled), Unit: "timers"},
		Metric{Name: "scheduled", Value: perSecond(scheduled, loaded.Sub(start)), Unit: "timers/s"})
	r.report.Dists = append(r.report.Dists, lat.Dist(fmt.Sprintf("Schedule call, batch=%d", cfg.Batches[0])))

	var before Layout
	var restartStart, restartEnd, serving time.Time
	var held uint64
	var restarted map[string]bool // the members restarted, once serving
	if r.failure() == nil && ctx.Err() == nil {
		before, _ = r.layout(ctx, cl)
	}
	if r.failure() == nil && ctx.Err() == nil {
		due := ceilMilli(r.clock.Now().Add(cfg.Lead))
		probeDue.Store(&due)
		if err := r.t.Schedule(ctx, []Timer{{ID: r.ID(probe), Topic: r.topic, Due: due, Payload: r.payload}}); err != nil {
			if ctx.Err() == nil {
				r.fail(fmt.Errorf("schedule the probe timer: %w", err))
			}
		}
	}
	if r.failure() == nil && ctx.Err() == nil {
		m.setPhase("restarting")
		r.notef("running the restart command: %s", cfg.Restart.Name)
		restartStart = r.clock.Now()
		err := cfg.Restart.Do(ctx)
		restartEnd = r.clock.Now()
		if err != nil && ctx.Err() == nil {
			r.fail(fmt.Errorf("restart: %w", err))
		}
	}
	deadline := restartStart.Add(cfg.Duration)
	if r.failure() == nil && ctx.Err() == nil {
		m.setPhase("waiting for every shard to serve")
		for r.clock.Now().Before(deadline) {
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			l, err := cl.Layout(pctx)
			cancel()
			if err == nil {
				restarted = recovered(before, l)
			}
			if restarted != nil {
				serving = r.clock.Now()
				held, _ = l.timers()
				break
			}
			if !r.clock.Sleep(ctx, recoveryPoll) {
				break
			}
		}
		m.setPhase("waiting for the probe timer")
		v.drainUntil(ctx, func() bool { return probeAt.Load() != nil }, deadline)
	}
	var absent []string
	if !serving.IsZero() && ctx.Err() == nil {
		m.setPhase("looking up the loaded timers")
		k := min(released, recoverySample)
		ids := make([]string, k)
		for i := range k {
			ids[i] = r.ID(i * released / k)
		}
		var err error
		if absent, err = cl.Absent(ctx, ids); err != nil && ctx.Err() == nil {
			r.fail(fmt.Errorf("look up the loaded timers after the restart: %w", err))
		}
	}
	stop()

	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 }
	if !restartStart.IsZero() {
		heldBefore, _ := before.timers()
		r.report.Metrics = append(r.report.Metrics,
			Metric{Name: "timers held by the shards before the restart", Value: float64(heldBefore), Unit: "timers"},
			Metric{Name: "restart command", Value: ms(restartEnd.Sub(restartStart)), Unit: "ms"})
	}
	switch {
	case !serving.IsZero():
		r.report.Metrics = append(r.report.Metrics,
			Metric{Name: "restart → every shard serving", Value: ms(serving.Sub(restartStart)), Unit: "ms"},
			Metric{Name: "restart command returned → every shard serving", Value: ms(serving.Sub(restartEnd)), Unit: "ms"},
			Metric{Name: "timers held by the shards after the restart", Value: float64(held), Unit: "timers"})
	case !restartStart.IsZero() && r.failure() == nil && ctx.Err() == nil:
		r.fail(fmt.Errorf("the cluster did not serve every shard again within %v of the restart", cfg.Duration))
	}
	if pa := probeAt.Load(); pa != nil {
		due := *probeDue.Load()
		r.report.Metrics = append(r.report.Metrics,
			Metric{Name: "restart → probe fired", Value: ms(pa.Sub(restartStart)), Unit: "ms"},
			Metric{Name: "restart command returned → probe fired", Value: ms(pa.Sub(restartEnd)), Unit: "ms"},
			Metric{Name: "probe lateness", Value: ms(pa.Sub(due)), Unit: "ms"})
		if s := cl.Shard(r.ID(probe), uint32(len(before.Shards))); int(s) < len(before.Shards) && restarted[before.Shards[s].Owner] {
			if e := probeEpoch.Load(); e != 0 && e <= before.Shards[s].Epoch && r.failure() == nil {
				r.fail(errors.New("the probe timer was fired by its shard's owner from before the restart: the restart took longer than --lead to stop it; raise --lead"))
			}
		}
	} else if !serving.IsZero() && r.failure() == nil && ctx.Err() == nil {
		r.fail(fmt.Errorf("the probe timer did not fire within %v of the restart", cfg.Duration))
	}
	cs := v.checks(-1)
	if !serving.IsZero() && r.failure() == nil {
		c := Check{Name: "loaded timers missing after the restart", Got: int64(len(absent)), Want: 0,
			Note: fmt.Sprintf("of %d looked up", min(released, recoverySample))}
		if len(absent) > 0 {
			c.Note += ", such as " + absent[0]
		}
		cs = append(cs, c)
	}
	r.report.Checks = cs
	r.notef("removing the %d timers loaded", released)
	// The loaded timers are all still there; the probe unless it fired.
	r.cleanup(n+1, func(seq int64) bool {
		if seq == probe {
			return v.seen.has(seq)
		}
		return seq >= released
	})
}

// recovered reports whether l, read after a restart, shows the cluster of
// before serving again: every member of before back, alive and active, at
// least one of them a new process; every shard served; and every shard
// whose owner before is a new process now acquired again. It returns the
// names of the members that are new processes then, nil when not.
func recovered(before, l Layout) map[string]bool {
	restarted := map[string]bool{}
	for _, b := range before.Members {
		m, ok := l.member(b.Name)
		if !ok || !m.Alive || !m.Active {
			return nil
		}
		if m.Incarnation != b.Incarnation {
			restarted[b.Name] = true
		}
	}
	if len(restarted) == 0 || len(l.Shards) != len(before.Shards) {
		return nil
	}
	for s, sh := range l.Shards {
		if !sh.Serving || restarted[before.Shards[s].Owner] && sh.Epoch <= before.Shards[s].Epoch {
			return nil
		}
	}
	return restarted
}
