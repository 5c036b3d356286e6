package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"
)

// failover loads Count timers due evenly over Spread, the first Lead from
// now, to a subscription on every node; KillAfter past the first due time
// it runs Kill, then waits until every acknowledged timer has arrived, or
// Drain past the last due time, or Duration from the start. It reports how
// soon the killed node's timers fired elsewhere, their lateness beside the
// other nodes' timers, and what was lost, early or delivered twice.
//
// The killed node's timers are those of the shards it held just before
// the kill, by the shard map; the killed node is the member that, after
// the run, is gone, not alive, or a new process (another incarnation). A
// timer fired elsewhere when its delivery carries a higher epoch than its
// shard had before the kill.
func (r *run) failover(ctx context.Context) {
	cfg := r.cfg
	cl := r.t.(Cluster)
	n := cfg.Count
	deadline := r.clock.Now().Add(cfg.Duration)
	m, v, stop := r.open(ctx, n, cfg.Lead+cfg.Spread+cfg.Drain, "delivered", "scheduled", "delivered")
	if stop == nil {
		return
	}
	m.setPhase("reading the shard map")
	layout, err := r.layout(ctx, cl)
	if err != nil {
		stop()
		return
	}
	shards := uint32(len(layout.Shards))
	shardOf := make([]uint32, n)
	for seq := range n {
		shardOf[seq] = cl.Shard(r.ID(seq), shards)
	}
	// What each first delivery says: when it came (ns since the
	// receiver's base, plus one) and the epoch of the node that fired it.
	// Each seq is written once, by its first delivery, and read after the
	// subscription has ended.
	recv := make([]int64, n)
	epoch := make([]uint64, n)
	v.setOnFirst(func(seq int64, d Delivery, at time.Time) {
		recv[seq] = int64(at.Sub(v.base)) + 1
		epoch[seq] = d.Epoch
	})

	m.setPhase("loading")
	p := Pacer{Start: ceilMilli(r.clock.Now().Add(cfg.Lead)), Rate: float64(n) / cfg.Spread.Seconds()}
	v.setExpect(p.At)
	lat := NewLatency()
	ok := newBitset(n)
	var late atomic.Int64
	start := r.clock.Now()
	jobs, wait := r.scheduler(ctx, p.At, lat, m.counter("scheduled"), &ok, &late)
	released := releaseAll(ctx, jobs, wait, n, int64(cfg.Batches[0]))
	loaded := r.clock.Now()
	var acked int64
	for seq := range n {
		if ok.has(seq) {
			acked++
		}
	}

	killAt := p.Start.Add(cfg.KillAfter)
	var killStart, killEnd time.Time
	var before Layout
	if r.failure() == nil && ctx.Err() == nil {
		if loaded.After(killAt) {
			r.notef("loading took %v, past the kill time: the kill runs late, at once", loaded.Sub(start).Round(time.Millisecond))
		}
		m.setPhase("firing until the kill")
		r.clock.Sleep(ctx, earliest(killAt, deadline).Sub(r.clock.Now()))
	}
	if r.failure() == nil && ctx.Err() == nil {
		// The owners and epochs just before the kill say whose timers are
		// whose, and which deliveries came from another node.
		before, err = r.layout(ctx, cl)
		if err == nil {
			m.setPhase("killing")
			r.notef("running the kill command: %s", cfg.Kill.Name)
			killStart = r.clock.Now()
			err = cfg.Kill.Do(ctx)
			killEnd = r.clock.Now()
			if err != nil && ctx.Err() == nil {
				r.fail(fmt.Errorf("kill: %w", err))
			}
		}
	}
	if r.failure() == nil && ctx.Err() == nil {
		m.setPhase("waiting for the killed node's timers")
		v.drain(ctx, acked, earliest(p.At(n-1).Add(cfg.Drain), deadline))
	}
	ended := r.clock.Now()
	var after Layout
	if !killStart.IsZero() && r.failure() == nil {
		// Who died is read from a node still up, with a context of its own
		// (a run cut short still says what it saw).
		actx, cancel := context.WithTimeout(context.Background(), afterKillWait)
		after = r.layoutAfterKill(actx, cl, before)
		cancel()
	}
	stop()

	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "timers", Value: float64(n), Unit: "timers"},
		Metric{Name: "scheduled", Value: perSecond(m.counter("scheduled").n.Load(), loaded.Sub(start)), Unit: "timers/s"},
		Metric{Name: "scheduled after their due time", Value: float64(late.Load()), Unit: "timers"},
		Metric{Name: "delivered", Value: float64(v.delivered.n.Load()), Unit: "timers"},
		Metric{Name: "duplicates", Value: float64(v.redelivered.Load()), Unit: "deliveries"})
	r.report.Dists = append(r.report.Dists, v.dists()...)
	lost := int64(-1)
	if !killStart.IsZero() && r.failure() == nil {
		f := failoverOf(r, failoverRun{
			n: n, due: p.At, shardOf: shardOf, recv: recv, epoch: epoch, base: v.base, ok: ok, seen: v.seen,
			before: before, after: after, killStart: killStart, killEnd: killEnd, ended: ended, drain: cfg.Drain,
		})
		lost = f.lost
		if ctx.Err() != nil {
			lost = -1
		}
	}
	r.report.Dists = append(r.report.Dists, lat.Dist(fmt.Sprintf("Schedule call, batch=%d", cfg.Batches[0])))
	cs := v.checks(r.missing(ctx, lost))
	for i := range cs {
		if cs[i].Name == "not delivered" {
			cs[i].Name, cs[i].Note = "lost", "acknowledged by Schedule, never delivered"
		}
	}
	r.report.Checks = cs
	r.cleanup(released, v.seen.has)
}

// failoverRun is what failover measured, for failoverOf to read.
type failoverRun struct {
	n       int64
	due     func(seq int64) time.Time
	shardOf []uint32
	// recv and epoch are each first delivery's receive time (ns since
	// base, plus one; 0: never) and the epoch it carried.
	recv  []int64
	epoch []uint64
	base  time.Time
	// ok holds the timers whose Schedule succeeded, seen those delivered.
	ok, seen bitset
	// before and after are the layouts just before the kill and after
	// the run.
	before, after      Layout
	killStart, killEnd time.Time
	// ended is when the wait for deliveries ended.
	ended time.Time
	drain time.Duration
}

// failoverOutcome is what failoverOf found that the checks need.
type failoverOutcome struct {
	// lost is the number of acknowledged timers never delivered, of those
	// due more than a drain before the end.
	lost int64
}

// failoverOf adds to r's report the figures of a failover run: which
// node died, how soon its timers fired elsewhere, and their lateness
// beside the others'. It fails the run when no member died.
func failoverOf(r *run, f failoverRun) failoverOutcome {
	var out failoverOutcome
	dead := killedMembers(f.before, f.after)
	if len(dead) == 0 {
		r.fail(errors.New("failover: after the kill command every member is alive, with the same incarnation: it killed no node of the cluster"))
		return out
	}
	r.report.Params = append(r.report.Params, Param{Name: "killed", Value: strings.Join(dead, ",")})
	deadShard := make([]bool, len(f.before.Shards))
	var deadShards int
	for s, sh := range f.before.Shards {
		if slices.Contains(dead, sh.Owner) {
			deadShard[s], deadShards = true, deadShards+1
		}
	}
	at := func(seq int64) time.Time { return f.base.Add(time.Duration(f.recv[seq] - 1)) }
	// elsewhere: the killed node's timer seq was fired by another node.
	elsewhere := func(seq int64) bool {
		if f.recv[seq] == 0 {
			return false
		}
		if e := f.epoch[seq]; e != 0 {
			return e > f.before.Shards[f.shardOf[seq]].Epoch
		}
		return at(seq).After(f.killEnd)
	}
	// takeover[s] is when the first of shard s's timers fired elsewhere.
	takeover := make(map[uint32]time.Time)
	var first time.Time
	var affected int64
	deadLat, otherLat := NewLatency(), NewLatency()
	judgeBy := f.ended.Add(-f.drain)
	var unjudged int64
	for seq := range f.n {
		s := f.shardOf[seq]
		due := f.due(seq)
		seen := f.recv[seq] != 0
		if f.ok.has(seq) && !seen {
			if due.After(judgeBy) {
				unjudged++
			} else {
				out.lost++
			}
		}
		if deadShard[s] {
			if seen && at(seq).Before(f.killStart) {
				continue // fired by the node before it died
			}
			affected++
			if seen {
				deadLat.Record(at(seq).Sub(due))
			}
		} else if !due.Before(f.killStart) && seen {
			otherLat.Record(at(seq).Sub(due))
		}
		if deadShard[s] && elsewhere(seq) {
			t := at(seq)
			if first.IsZero() || t.Before(first) {
				first = t
			}
			if tk, ok := takeover[s]; !ok || t.Before(tk) {
				takeover[s] = t
			}
		}
	}
	// The backlog: the killed node's timers that were due by the time
	// their shard fired again elsewhere; the last of them to arrive is
	// when the failure stopped holding timers back.
	var last time.Time
	var backlog int64
	for seq := range f.n {
		if tk, ok := takeover[f.shardOf[seq]]; ok && elsewhere(seq) && !f.due(seq).After(tk) {
			backlog++
			if t := at(seq); t.After(last) {
				last = t
			}
		}
	}
	ms := func(d time.Duration) float64 { return d.Seconds() * 1000 }
	r.report.Metrics = append(r.report.Metrics,
		Metric{Name: "shards", Value: float64(len(f.before.Shards)), Unit: "shards"},
		Metric{Name: "killed node's shards", Value: float64(deadShards), Unit: "shards"},
		Metric{Name: "killed node's shards fired again elsewhere", Value: float64(len(takeover)), Unit: "shards"},
		Metric{Name: "killed node's timers not delivered before the kill", Value: float64(affected), Unit: "timers"},
		Metric{Name: "kill command", Value: ms(f.killEnd.Sub(f.killStart)), Unit: "ms"})
	if !first.IsZero() {
		r.report.Metrics = append(r.report.Metrics,
			Metric{Name: "kill → first of its timers fired elsewhere", Value: ms(first.Sub(f.killStart)), Unit: "ms"},
			Metric{Name: "kill → last of its overdue timers fired elsewhere", Value: ms(last.Sub(f.killStart)), Unit: "ms"},
			Metric{Name: "killed node's timers overdue when their shard fired again", Value: float64(backlog), Unit: "timers"})
	} else {
		r.notef("none of the killed node's timers fired elsewhere")
	}
	if unjudged > 0 {
		r.report.Metrics = append(r.report.Metrics, Metric{Name: "not delivered, due within a drain of the end (not judged)", Value: float64(unjudged), Unit: "timers"})
		r.notef("%d timers due within --drain of the end of the run were not delivered and are not judged: raise --duration", unjudged)
	}
	r.report.Dists = append(r.report.Dists,
		deadLat.Dist("lateness, killed node's timers (not delivered before the kill)"),
		otherLat.Dist("lateness, other nodes' timers (due after the kill)"))
	return out
}

// killedMembers returns the names of the members of before that after
// lists as gone, not alive, or run by a new process.
func killedMembers(before, after Layout) []string {
	var dead []string
	for _, m := range before.Members {
		if !m.Alive {
			continue
		}
		a, ok := after.member(m.Name)
		if !ok || !a.Alive || a.Incarnation != m.Incarnation {
			dead = append(dead, m.Name)
		}
	}
	return dead
}

// afterKillWait bounds how long failover waits, once its wait for
// deliveries has ended, for a node still up to see the killed member gone:
// the failure detector (a few probe intervals and a suspicion timeout)
// may not have spoken yet when every timer arrived soon after the kill.
const afterKillWait = 30 * time.Second

// layoutAfterKill reads the target's layout until it shows a member of
// before gone, not alive or restarted, or until ctx ends; it returns the
// last layout it read whole (the zero Layout when none could be read, and
// the run then fails). A read that ctx cut short is not a layout: taken
// for one, its empty member list would say every member died.
func (r *run) layoutAfterKill(ctx context.Context, cl Cluster, before Layout) Layout {
	var last Layout
	for {
		after, err := r.layout(ctx, cl)
		if err != nil {
			return last
		}
		last = after
		if len(killedMembers(before, after)) > 0 || !r.clock.Sleep(ctx, 100*time.Millisecond) {
			return last
		}
	}
}

// layout reads the target's layout, failing the run when it cannot or
// when the target has no shards.
func (r *run) layout(ctx context.Context, cl Cluster) (Layout, error) {
	l, err := cl.Layout(ctx)
	if err == nil && len(l.Shards) == 0 {
		err = errors.New("the target reports no shards")
	}
	if err != nil {
		if ctx.Err() == nil {
			r.fail(fmt.Errorf("read the cluster's layout: %w", err))
		}
		return Layout{}, err
	}
	return l, nil
}

// earliest returns the earlier of a and b.
func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
