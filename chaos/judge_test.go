package chaos

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
)

// The tests of this file check the verdict's arithmetic on made-up
// ledgers; they need no processes, so they run without TIMERD_CHAOS.

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// sec is t0 plus s seconds.
func sec(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }

// sched is a Schedule of id due at due, sent at 0s and answered at 0.1s
// with outcome.
func sched(id string, due float64, o outcome) op {
	return op{kind: opSchedule, id: id, due: sec(due), sent: sec(0), answered: sec(0.1), outcome: o}
}

// got is a delivery of id, due at due (its own), received at at.
func got(id string, due, at float64, attempt uint32) delivery {
	return delivery{id: id, due: sec(due), received: sec(at), attempt: attempt, payloadOK: true}
}

func TestJudge(t *testing.T) {
	for _, tc := range []struct {
		name string
		ops  []op
		got  []delivery
		want verdict
	}{{
		name: "clean",
		ops:  []op{sched("a", 1, outcomeOK), sched("b", 2, outcomeOK)},
		got:  []delivery{got("a", 1, 1.5, 1), got("b", 2, 2, 1)},
		want: verdict{Pass: true, Scheduled: 2, Acknowledged: 2, Expected: 2, Deliveries: 2, LatenessP50MS: 0, LatenessP99MS: 500, LatenessMaxMS: 500},
	}, {
		name: "lost, and duplicates",
		ops:  []op{sched("a", 1, outcomeOK), sched("b", 2, outcomeOK)},
		got:  []delivery{got("a", 1, 1, 1), got("a", 1, 7, 2), got("a", 1, 8, 1)},
		want: verdict{Scheduled: 2, Acknowledged: 2, Expected: 2, Deliveries: 3, Lost: 1, Duplicates: 2, Redelivered: 1},
	}, {
		name: "early by its own due time and by the one sent",
		ops:  []op{sched("a", 2, outcomeOK), sched("b", 2, outcomeOK)},
		got:  []delivery{got("a", 2, 1.9, 1), got("b", 1, 1.5, 1)},
		// b's delivery claims a due time never sent: corrupt, and early
		// by the one that was.
		want: verdict{Scheduled: 2, Acknowledged: 2, Expected: 2, Deliveries: 2, Early: 2, Corrupt: 1, LatenessP50MS: -100, LatenessP99MS: 500, LatenessMaxMS: 500},
	}, {
		name: "failed versus indeterminate",
		ops: []op{
			sched("failed", 1, outcomeFailed),
			sched("maybe", 1, outcomeIndeterminate),
			sched("maybe-not", 1, outcomeIndeterminate),
			sched("retried", 1, outcomeIndeterminate), sched("retried", 1, outcomeOK),
		},
		got: []delivery{got("failed", 1, 1, 1), got("maybe", 1, 1, 1), got("retried", 1, 1, 1), got("never", 1, 1, 1)},
		// A delivery of a timer whose every Schedule failed, or of one
		// never sent, is unexpected; an indeterminate one may be
		// delivered, or not.
		want: verdict{Scheduled: 4, Acknowledged: 1, Failed: 1, Indeterminate: 2, IndeterminateDelivered: 1, Expected: 1,
			Deliveries: 4, Unexpected: 2},
	}, {
		name: "cancelled-fired",
		ops: []op{
			sched("a", 5, outcomeOK), {kind: opCancel, id: "a", sent: sec(1), answered: sec(1.1), outcome: outcomeOK},
			sched("b", 5, outcomeOK), {kind: opCancel, id: "b", sent: sec(1), answered: sec(1.1), outcome: outcomeOK},
			// c's Cancel is answered after its due time: a delivery
			// may have been on its way.
			sched("c", 1, outcomeOK), {kind: opCancel, id: "c", sent: sec(1), answered: sec(1.2), outcome: outcomeOK},
			// d's Cancel is indeterminate: d may fire or not.
			sched("d", 5, outcomeOK), {kind: opCancel, id: "d", sent: sec(1), answered: sec(1.1), outcome: outcomeIndeterminate},
			// e is scheduled again after its Cancel.
			sched("e", 5, outcomeOK), {kind: opCancel, id: "e", sent: sec(1), answered: sec(1.1), outcome: outcomeOK},
			{kind: opSchedule, id: "e", due: sec(6), sent: sec(2), answered: sec(2.1), outcome: outcomeOK},
		},
		got:  []delivery{got("a", 5, 5, 1), got("c", 1, 1.1, 1), got("d", 5, 5, 1), got("e", 6, 6, 1)},
		want: verdict{Scheduled: 5, Acknowledged: 5, Cancelled: 4, Expected: 1, Deliveries: 4, CancelledFired: 1},
	}, {
		name: "a failed Cancel leaves the timer to fire",
		ops: []op{sched("a", 5, outcomeOK),
			{kind: opCancel, id: "a", sent: sec(1), answered: sec(1.1), outcome: outcomeFailed, code: codes.NotFound}},
		want: verdict{Scheduled: 1, Acknowledged: 1, Expected: 1, Lost: 1},
	}, {
		name: "rescheduled",
		ops: []op{sched("a", 5, outcomeOK), sched("b", 5, outcomeOK),
			{kind: opReschedule, id: "a", due: sec(3), sent: sec(1), answered: sec(1.1), outcome: outcomeOK},
			{kind: opReschedule, id: "b", due: sec(8), sent: sec(1), answered: sec(1.1), outcome: outcomeIndeterminate}},
		// b fires at either due time; before both is early (and its
		// lateness is negative).
		got: []delivery{got("a", 3, 3.2, 1), got("b", 8, 8, 1), got("b", 5, 5, 1), got("b", 5, 4, 1)},
		want: verdict{Scheduled: 2, Acknowledged: 2, Rescheduled: 2, Expected: 2, Deliveries: 4, Early: 1, Duplicates: 2,
			LatenessP50MS: -1000, LatenessP99MS: 200, LatenessMaxMS: 200},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			l := newLedger()
			for _, o := range tc.ops {
				l.record(o)
			}
			for _, d := range tc.got {
				l.deliver(d)
			}
			v := judge(l)
			v.Examples = nil
			if v.json() != tc.want.json() {
				t.Errorf("judge =\n%s, want\n%s", v.json(), tc.want.json())
			}
		})
	}
}

// TestJudgeLateness checks the percentiles of the first deliveries'
// lateness over 100 timers, 0 to 99ms late.
func TestJudgeLateness(t *testing.T) {
	l := newLedger()
	for i := range 100 {
		id := string(rune('a'+i/26)) + string(rune('a'+i%26))
		l.record(sched(id, 1, outcomeOK))
		d := got(id, 1, 1, 1)
		d.received = d.received.Add(time.Duration(i) * time.Millisecond)
		l.deliver(d)
		l.deliver(got(id, 1, 9, 2)) // a later duplicate counts no lateness
	}
	v := judge(l)
	if !v.Pass || v.LatenessP50MS != 49 || v.LatenessP99MS != 98 || v.LatenessMaxMS != 99 || v.Duplicates != 100 {
		t.Errorf("judge = %s, want a pass with lateness p50 49ms, p99 98ms, max 99ms and 100 duplicates", v.json())
	}
}

// TestVerdictLine checks that figures and problems reach the line and
// that a problem fails the verdict.
func TestVerdictLine(t *testing.T) {
	l := newLedger()
	l.record(sched("a", 1, outcomeOK))
	l.deliver(got("a", 1, 1, 1))
	v := judge(l)
	v.Scenario, v.Seed = "x", 7
	v.figure("takeover", 2340*time.Millisecond)
	v.figure("pending", 12345)
	v.seal()
	if !v.Pass || !strings.Contains(v.line(), "chaos verdict: PASS x seed=7: 1 scheduled") || !strings.HasSuffix(v.line(), "; takeover 2.34s, pending 12,345; problems 0") {
		t.Errorf("line = %s", v.line())
	}
	v.problem("node-%d exited", 1)
	v.seal()
	if v.Pass || !strings.HasPrefix(v.line(), "chaos verdict: FAIL") || !strings.Contains(v.json(), `"problems":["node-1 exited"]`) {
		t.Errorf("with a problem: %s\n%s", v.line(), v.json())
	}
}

// TestMeasureFailover checks the failover figures on made-up deliveries.
func TestMeasureFailover(t *testing.T) {
	kill := t0
	before := []shardOwner{{"n0", 5}, {"n1", 7}, {"n1", 3}}
	e := func(due, ackedAt float64) expectation { return expectation{due: sec(due), ackedAt: sec(ackedAt)} }
	exp := map[string]expectation{"a": e(-1, -5), "b": e(1, -5), "c": e(2, 1), "d": e(10, -5), "e": e(-2, -5), "f": e(1, -5)}
	deliveries := []delivery{
		{id: "e", shard: 1, epoch: 7, received: sec(-1.9)}, // delivered before the kill: neither pending nor stranded
		{id: "e", shard: 1, epoch: 8, received: sec(3)},    // its duplicate from the new owner
		{id: "a", shard: 1, epoch: 8, received: sec(3.5)},  // stranded, 4.5s late
		{id: "b", shard: 2, epoch: 4, received: sec(4)},    // stranded; shard 2 taken over at +4s
		{id: "c", shard: 1, epoch: 8, received: sec(3.2)},  // stranded, acknowledged after the kill
		{id: "d", shard: 1, epoch: 8, received: sec(10)},   // due after the takeover: pending, not stranded
		{id: "f", shard: 0, epoch: 5, received: sec(1)},    // another node's shard
		{id: "g", shard: 0, epoch: 6, received: sec(-1)},   // which moved before the kill: not counted
		{id: "h", shard: 0, epoch: 6, received: sec(5)},    // and delivered under a new epoch after it
	}
	f := measureFailover(before, "n1", kill, exp, deliveries)
	want := failover{Shards: 2, ShardCount: 3, Pending: 3, TakenOver: 2, TakeoverMin: 3 * time.Second, TakeoverMax: 4 * time.Second,
		Stranded: 3, First: 3200 * time.Millisecond, Last: 4 * time.Second, VictimLatenessMax: 4500 * time.Millisecond, OthersMoved: 1}
	if f != want {
		t.Errorf("measureFailover =\n%+v, want\n%+v", f, want)
	}
}
