package chaos

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// The cancel-race scenario: Cancel and Reschedule sent at their timer's due
// instant, give or take a few milliseconds, and Schedule retried by a
// client that sends the same timer several times at once, and again after
// cutting its call.
//
// What it proves, from TimerService's contract: a Cancel answered OK
// removed the timer; the timer may have been IN_FLIGHT, whose delivery
// already on its way may still reach a consumer, but nothing of it is sent
// after the Cancel's answer, and if the Cancel was answered before the due
// time, nothing at all ("cancelled-fired"). A timer both cancelled (OK) and
// then sent is "reported as both". A Cancel answered NOT_FOUND of a
// scheduled timer means it fired and was acknowledged, so it was
// delivered. A Reschedule answered OK moved the timer: it is delivered at
// the new due time, never early, and its old occurrence is not sent after
// the answer. Schedule is an idempotent create: any number of copies of
// one timer, concurrent or retried after a cut call or after the timer
// fired (with the first call's request id), make one timer, which is one
// occurrence (one delivery id) however often it is delivered.
const (
	// raceTimers timers are cancelled, and raceMoves rescheduled, at their
	// due time plus an offset drawn from [-raceEarly, raceLate], to the
	// millisecond; their due times fall in raceWindow, raceFirstDue into
	// the run. The offsets lean early: a call is answered a few
	// milliseconds after it is sent, and on a loaded machine its sender
	// wakes late, so that the answers still fall on both sides of the due
	// time.
	raceTimers   = 1500
	raceMoves    = 750
	raceEarly    = 80 * time.Millisecond
	raceLate     = 40 * time.Millisecond
	raceFirstDue = 3 * time.Second
	raceWindow   = 2 * time.Second
	// A rescheduled timer moves raceMoveBy later.
	raceMoveBy = 1500 * time.Millisecond
	// retryTimers timers are scheduled by the retrying client, due
	// retryFirstDue to retryFirstDue+raceWindow into the run; each is
	// sent retryCopies times at once, and one in three is also sent again
	// retryLate after its due time.
	retryTimers   = 600
	retryCopies   = 3
	retryFirstDue = 6 * time.Second
	retryLate     = time.Second
	retryLead     = 3 * time.Second
	// raceCallTimeout bounds every Cancel, Reschedule and retry call.
	raceCallTimeout = 5 * time.Second
	// A forgetful subscriber process takes up to forgetCredit deliveries
	// and acks none; each comes again forgetAckTimeout later, on another
	// stream, unless a Cancel or a Reschedule took its timer.
	forgetCredit     = 200
	forgetAckTimeout = time.Second
)

func init() {
	register(scenario{
		name: "cancel-race",
		about: "Cancel and Reschedule sent at their timer's due instant, give or take a few milliseconds, and a client that sends each " +
			"Schedule several times at once and again after cutting it: no timer is cancelled and then sent, a moved timer's old " +
			"occurrence is not sent after the move, and every id scheduled once is one live timer",
		run: cancelRace,
	})
}

// raceOp is one Cancel or Reschedule of a timer due at due, and its
// answer.
type raceOp struct {
	id             string
	due, newDue    time.Time // newDue: a Reschedule's
	sent, answered time.Time
	code           codes.Code // the item's code, or the call's when it failed whole
	definite       bool       // an item answer, not a failed call
}

// ledgerOp is o as the ledger records it.
func (o raceOp) ledgerOp() op {
	l := op{kind: opCancel, id: o.id, sent: o.sent, answered: o.answered, code: o.code, outcome: callOutcome(o.code)}
	if o.definite {
		l.outcome = itemOutcome(o.code)
	}
	if !o.newDue.IsZero() {
		l.kind, l.due = opReschedule, o.newDue
	}
	return l
}

func cancelRace(t *testing.T, r *run) {
	c := startCluster(r, clusterOptions{})
	subscribe(r, c, subscribeConfig{})
	forgetful := startSubscriberProcess(r, c, r.rng.IntN(c.size()), forgetCredit, forgetAckTimeout)

	// The timers to cancel and to move, scheduled 2s to 2.5s ahead.
	w := newWorkload(r, c, workloadConfig{Timers: raceTimers + raceMoves, FirstDue: raceFirstDue, Spread: raceWindow,
		LeadMin: 2 * time.Second, LeadMax: 2500 * time.Millisecond, RetryFor: 2 * time.Second, CallTimeout: time.Second, Concurrency: 8})
	start := w.begin()

	// The races, each at its timer's due time plus a seeded offset, on a
	// seeded node; a seeded raceMoves of the timers are moved, the others
	// cancelled.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var cancels, moves []raceOp
	moved := make(map[string]bool)
	for _, b := range w.batches {
		for _, tp := range b.timers {
			move := r.rng.IntN(raceTimers+raceMoves) < raceMoves
			skew := time.Duration(r.rng.Int64N(int64((raceEarly+raceLate)/time.Millisecond)+1))*time.Millisecond - raceEarly
			conn := c.conn(r.rng.IntN(c.size()))
			o := raceOp{id: tp.id, due: w.due(tp)}
			if move {
				o.newDue = o.due.Add(raceMoveBy)
				moved[o.id] = true
			}
			wg.Go(func() {
				if !sleepUntil(r.ctx, o.due.Add(skew)) {
					return
				}
				sendRaceOp(r.ctx, conn, &o)
				r.ledger.record(o.ledgerOp())
				mu.Lock()
				defer mu.Unlock()
				if move {
					moves = append(moves, o)
				} else {
					cancels = append(cancels, o)
				}
			})
		}
	}
	rc := newRetryClient(r, c, start)
	wg.Go(func() { rc.run(r.ctx) })
	r.logf("%d timers cancelled and %d moved from %v before to %v after their due times over %v; %d timers scheduled %d times at once by a retrying client",
		raceTimers, raceMoves, raceEarly, raceLate, raceWindow, retryTimers, retryCopies)
	wg.Wait()
	if !w.wait() || r.ctx.Err() != nil {
		t.Fatalf("the run did not end within its bound")
	}
	r.drain(start.Add(retryFirstDue+raceWindow+retryLate), 40*time.Second)
	forgetful.kill9()

	v := r.judge()
	ops, got := r.ledger.snapshot()
	acked := scheduledAt(ops)
	held := make(map[string]time.Time)
	for _, d := range forgetful.deliveries() {
		if t, ok := held[d.id]; !ok || d.received.Before(t) {
			held[d.id] = d.received
		}
	}
	cs := checkCancels(cancels, acked, got, held)
	mv := checkMoves(moves, acked, got)
	rc.mu.Lock()
	twice, recreated := liveTwice(got, moved, rc.recreatable)
	retryProblems, calls, cut := rc.problems, rc.calls, rc.cut
	rc.mu.Unlock()
	for _, p := range slices.Concat(cs.problems, mv.problems, twice, retryProblems) {
		v.problem("%s", p)
	}
	v.figure("cancels", len(cancels))
	v.figure("cancel_ok_before_due", cs.okBefore)
	v.figure("cancel_ok_in_flight", cs.okInFlight)
	v.figure("cancel_ok_in_flight_delivered", cs.okDelivered)
	v.figure("cancel_ok_held_unacked", cs.okHeld)
	v.figure("cancel_not_found", cs.notFound)
	v.figure("cancel_other", cs.other)
	v.figure("reported_as_both", cs.both)
	v.figure("reschedules", len(moves))
	v.figure("reschedule_ok_before_due", mv.okBefore)
	v.figure("reschedule_ok_in_flight", mv.okInFlight)
	v.figure("reschedule_not_found", mv.notFound)
	v.figure("old_occurrence_after_move", mv.oldAfter)
	v.figure("retry_calls", calls)
	v.figure("retry_calls_cut", cut)
	v.figure("recreated_by_late_copy", recreated)
	v.figure("cancel_answered_after_due_p10", pctOf(answerSkew(cancels), 10))
	v.figure("cancel_answered_after_due_p50", pctOf(answerSkew(cancels), 50))
	v.figure("cancel_answered_after_due_p90", pctOf(answerSkew(cancels), 90))
	v.figure("cancel_took_p99", pctOf(took(cancels), 99))
	c.check(v)
	w.check(v)
}

// scheduledAt returns, for every timer with a Schedule answered OK in
// ops, when the first was answered.
func scheduledAt(ops []op) map[string]time.Time {
	at := make(map[string]time.Time)
	for _, o := range ops {
		if _, ok := at[o.id]; !ok && o.kind == opSchedule && o.outcome == outcomeOK {
			at[o.id] = o.answered
		}
	}
	return at
}

// sendRaceOp sends o's Cancel (or Reschedule, when it has a new due time)
// of one timer and records its answer.
func sendRaceOp(ctx context.Context, conn *grpc.ClientConn, o *raceOp) {
	tc := pb.NewTimerServiceClient(conn)
	cctx, cancel := context.WithTimeout(ctx, raceCallTimeout)
	defer cancel()
	o.sent = time.Now()
	var results []*pb.ItemResult
	var err error
	if o.newDue.IsZero() {
		var resp *pb.CancelResponse
		resp, err = tc.Cancel(cctx, &pb.CancelRequest{Namespace: namespace, Ids: []string{o.id}})
		results = resp.GetResults()
	} else {
		var resp *pb.RescheduleResponse
		resp, err = tc.Reschedule(cctx, &pb.RescheduleRequest{Namespace: namespace, RequestId: "move-" + o.id,
			Items: []*pb.RescheduleItem{{Id: o.id, When: &pb.RescheduleItem_DueTime{DueTime: timestamppb.New(o.newDue)}}}})
		results = resp.GetResults()
	}
	o.answered = time.Now()
	if err != nil || len(results) != 1 {
		o.code = status.Code(err)
		return
	}
	o.code, o.definite = codes.Code(results[0].GetCode()), true
}

// answerSkew returns how long after its timer's due time each op was
// answered (negative: before).
func answerSkew(ops []raceOp) []time.Duration {
	out := make([]time.Duration, len(ops))
	for i, o := range ops {
		out[i] = o.answered.Sub(o.due)
	}
	return out
}

// took returns how long each op took to be answered.
func took(ops []raceOp) []time.Duration {
	out := make([]time.Duration, len(ops))
	for i, o := range ops {
		out[i] = o.answered.Sub(o.sent)
	}
	return out
}

// cancelCheck is what the Cancels' answers and the deliveries say, beside
// the verdict's cancelled-fired (a Cancel answered OK before the due time,
// and a delivery after it).
type cancelCheck struct {
	okBefore, okInFlight, okDelivered, notFound, other int
	// okHeld counts the Cancels answered OK of timers a subscriber
	// process held unacked when the Cancel was sent: without the Cancel
	// they would be sent again.
	okHeld int
	// both counts the timers whose Cancel was answered OK at or after
	// their due time and that were sent (fired) after the answer:
	// reported as both cancelled and delivered.
	both     int
	problems []string
}

// checkCancels checks every Cancel against the deliveries; acked holds
// when each timer's Schedule was first answered OK, held when a
// subscriber process that never acks first received it.
func checkCancels(ops []raceOp, acked map[string]time.Time, got []delivery, held map[string]time.Time) cancelCheck {
	var c cancelCheck
	byID := make(map[string][]delivery)
	for _, d := range got {
		byID[d.id] = append(byID[d.id], d)
	}
	for _, o := range ops {
		ds := byID[o.id]
		switch {
		case !o.definite || (o.code != codes.OK && o.code != codes.NotFound):
			c.other++
		case o.code == codes.OK:
			if o.answered.Before(o.due) {
				c.okBefore++ // a delivery is the verdict's cancelled-fired
				continue
			}
			c.okInFlight++
			if len(ds) > 0 {
				c.okDelivered++
			}
			if t, ok := held[o.id]; ok && t.Before(o.sent) {
				c.okHeld++
			}
			for _, d := range ds {
				if d.fired.After(o.answered) {
					c.both++
					c.problems = append(c.problems, fmt.Sprintf("reported as both: %s cancelled OK at %s, then sent at %s (attempt %d)",
						o.id, o.answered.Format(time.StampMicro), d.fired.Format(time.StampMicro), d.attempt))
					break
				}
			}
		default: // NOT_FOUND
			c.notFound++
			if at, ok := acked[o.id]; ok && at.Before(o.sent) && o.answered.Before(o.due) {
				c.problems = append(c.problems, fmt.Sprintf("%s (due %s, scheduled OK before the Cancel was sent) answered NOT_FOUND before its due time",
					o.id, o.due.Format(time.StampMilli)))
			}
		}
	}
	return c
}

// moveCheck is what the Reschedules' answers and the deliveries say,
// beside the verdict's early and corrupt.
type moveCheck struct {
	okBefore, okInFlight, notFound, other int
	// oldAfter counts the timers whose old occurrence was sent after
	// their move was answered OK.
	oldAfter int
	problems []string
}

// checkMoves checks every Reschedule against the deliveries of the timers
// it moved: one answered OK is delivered at its new due time, and its old
// occurrence not sent after the answer; one answered NOT_FOUND fired and
// was acknowledged, so it is not delivered at the new due time.
func checkMoves(ops []raceOp, acked map[string]time.Time, got []delivery) moveCheck {
	var m moveCheck
	byID := make(map[string][]delivery)
	for _, d := range got {
		byID[d.id] = append(byID[d.id], d)
	}
	for _, o := range ops {
		ds := byID[o.id]
		_, scheduled := acked[o.id]
		has := func(due time.Time) bool {
			return slices.ContainsFunc(ds, func(d delivery) bool { return d.due.Equal(due) })
		}
		switch {
		case !o.definite || (o.code != codes.OK && o.code != codes.NotFound):
			m.other++
		case o.code == codes.OK:
			if o.answered.Before(o.due) {
				m.okBefore++
			} else {
				m.okInFlight++
			}
			if scheduled && !has(o.newDue) {
				m.problems = append(m.problems, fmt.Sprintf("%s moved OK to %s, never delivered at it", o.id, o.newDue.Format(time.StampMilli)))
			}
			for _, d := range ds {
				if d.due.Equal(o.due) && d.fired.After(o.answered) {
					m.oldAfter++
					m.problems = append(m.problems, fmt.Sprintf("%s moved OK at %s, its old occurrence then sent at %s",
						o.id, o.answered.Format(time.StampMicro), d.fired.Format(time.StampMicro)))
					break
				}
			}
		default: // NOT_FOUND: it fired and was acknowledged
			m.notFound++
			if has(o.newDue) {
				m.problems = append(m.problems, fmt.Sprintf("%s answered NOT_FOUND to its move, delivered at the new due time all the same", o.id))
			}
		}
	}
	return m
}

// liveTwice names, as problems, the timers with more than one occurrence
// (delivery id) among the deliveries of timers not moved: scheduled once,
// however often the request was sent, they are one live timer each. The
// exception is a timer recreatable after it first fired: a copy sent
// without a request id that reached the server after the first
// occurrence may have been acknowledged creates the timer anew, as the
// contract says; liveTwice counts those apart.
func liveTwice(got []delivery, moved map[string]bool, recreatable map[string]time.Time) (problems []string, recreated int) {
	occurrences := make(map[string]map[string]bool)
	firstFired := make(map[string]time.Time)
	for _, d := range got {
		if moved[d.id] {
			continue
		}
		if occurrences[d.id] == nil {
			occurrences[d.id] = make(map[string]bool)
		}
		occurrences[d.id][d.deliveryID] = true
		if f, ok := firstFired[d.id]; !ok || d.fired.Before(f) {
			firstFired[d.id] = d.fired
		}
	}
	for _, id := range sortedKeys(occurrences) {
		n := len(occurrences[id])
		if n <= 1 {
			continue
		}
		if last, ok := recreatable[id]; ok && last.After(firstFired[id]) {
			recreated++
			continue
		}
		last := "with its request id"
		if t, ok := recreatable[id]; ok {
			last = "last answered " + t.Format(time.StampMicro)
		}
		problems = append(problems, fmt.Sprintf("%s scheduled once (copies %s) has %d occurrences (delivery ids), first fired %s: more than one live timer",
			id, last, n, firstFired[id].Format(time.StampMicro)))
	}
	return problems, recreated
}

// retryClient schedules retryTimers timers the way a client that retries
// does, recording every call's outcome in the ledger: each request sent
// retryCopies times at once to different nodes (half of them with one
// request id, half with none), one in three also cut mid-flight and sent
// again until answered, and one in three sent again with its request id
// retryLate after its due time.
type retryClient struct {
	r     *run
	c     *testCluster
	start time.Time
	plan  []retryPlan

	mu sync.Mutex
	// recreatable holds, for the timers sent without a request id, when
	// the last answer to one of their copies came: a copy the server took
	// after the timer fired and was acknowledged creates it anew.
	recreatable map[string]time.Time
	problems    []string
	calls, cut  int
}

// retryPlan is one timer of the retrying client.
type retryPlan struct {
	id       string
	due      time.Time
	reqID    string // empty: none
	cutAfter time.Duration
	cutFirst bool
	late     bool
}

func newRetryClient(r *run, c *testCluster, start time.Time) *retryClient {
	rc := &retryClient{r: r, c: c, start: start, recreatable: make(map[string]time.Time)}
	for i := range retryTimers {
		p := retryPlan{
			id:  fmt.Sprintf("s%06d", i),
			due: start.Add(retryFirstDue + time.Duration(r.rng.Int64N(raceWindow.Milliseconds()))*time.Millisecond),
		}
		if i%2 == 0 {
			p.reqID = fmt.Sprintf("retry-%d-%d", r.seed, i)
		}
		p.cutFirst = i%3 == 1
		p.cutAfter = time.Duration(r.rng.Int64N(3000)) * time.Microsecond
		p.late = i%3 == 2 && p.reqID != ""
		rc.plan = append(rc.plan, p)
	}
	return rc
}

// run sends every timer's copies, from retryLead before the first due
// time, and the late retries after theirs.
func (rc *retryClient) run(ctx context.Context) {
	if !sleepUntil(ctx, rc.start.Add(retryFirstDue-retryLead)) {
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i, p := range rc.plan {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var copies sync.WaitGroup
			for c := range retryCopies {
				copies.Go(func() { rc.send(ctx, p, i+c, p.cutFirst && c == 0) })
			}
			copies.Wait()
		})
	}
	wg.Wait()
	for i, p := range rc.plan {
		if !p.late {
			continue
		}
		if !sleepUntil(ctx, p.due.Add(retryLate)) {
			return
		}
		wg.Go(func() { rc.send(ctx, p, i, false) })
	}
	wg.Wait()
}

// send sends p's Schedule to node (modulo the cluster's size) until it is
// answered (a cut call first cut after p.cutAfter), recording each call.
func (rc *retryClient) send(ctx context.Context, p retryPlan, node int, cut bool) {
	tc := pb.NewTimerServiceClient(rc.c.conn(node % rc.c.size()))
	req := &pb.ScheduleRequest{Namespace: namespace, RequestId: p.reqID, Timers: []*pb.TimerSpec{{Id: p.id, Topic: topic,
		Payload: []byte(p.id), When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(p.due)}}}}
	for attempt := 0; attempt < 10 && ctx.Err() == nil; attempt++ {
		timeout := raceCallTimeout
		if cut && attempt == 0 {
			timeout = p.cutAfter
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		o := op{kind: opSchedule, id: p.id, due: p.due, sent: time.Now()}
		resp, err := tc.Schedule(cctx, req)
		o.answered = time.Now()
		cancel()
		o.code = status.Code(err)
		o.outcome = callOutcome(o.code)
		if err == nil && len(resp.GetResults()) == 1 {
			o.code = codes.Code(resp.GetResults()[0].GetCode())
			o.outcome = itemOutcome(o.code)
		}
		rc.r.ledger.record(o)
		rc.mu.Lock()
		rc.calls++
		if cut && attempt == 0 {
			rc.cut++
		}
		if p.reqID == "" && o.answered.After(rc.recreatable[p.id]) {
			rc.recreatable[p.id] = o.answered
		}
		rc.mu.Unlock()
		switch o.code {
		case codes.OK:
			return
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted:
			sleepUntil(ctx, time.Now().Add(50*time.Millisecond))
			continue
		}
		rc.mu.Lock()
		rc.problems = append(rc.problems, fmt.Sprintf("%s: a copy of its Schedule answered %v", p.id, o.code))
		rc.mu.Unlock()
		return
	}
}

// TestCheckCancels checks, on made-up answers and deliveries, what counts
// as reported as both.
func TestCheckCancels(t *testing.T) {
	due := t0
	off := func(n int) time.Time { return due.Add(time.Duration(n) * time.Millisecond) }
	acked := make(map[string]time.Time)
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		acked[id] = off(-2000)
	}
	cancel := func(id string, sent, answered int, code codes.Code) raceOp {
		return raceOp{id: id, due: due, sent: off(sent), answered: off(answered), code: code, definite: true}
	}
	ops := []raceOp{
		cancel("a", -20, -10, codes.OK),       // cancelled before due, delivered: the verdict's cancelled-fired
		cancel("b", -5, 5, codes.OK),          // in flight, sent before the answer, held unacked: fine
		cancel("c", 2, 6, codes.OK),           // in flight, sent again after the answer: both
		cancel("d", -30, -25, codes.NotFound), // scheduled, not found before due
		cancel("e", 10, 12, codes.NotFound),   // fired and acked: fine
		{id: "f", due: due, sent: off(0), answered: off(5000), code: codes.DeadlineExceeded},
	}
	got := []delivery{
		{id: "a", fired: off(0), received: off(1)},
		{id: "b", fired: off(1), received: off(2)},
		{id: "c", fired: off(1), received: off(2), attempt: 1},
		{id: "c", fired: off(7), received: off(8), attempt: 2},
		{id: "e", fired: off(0), received: off(1)},
		{id: "f", fired: off(4000), received: off(4001)},
	}
	c := checkCancels(ops, acked, got, map[string]time.Time{"b": off(-6), "c": off(3)})
	want := cancelCheck{okBefore: 1, okInFlight: 2, okDelivered: 2, okHeld: 1, notFound: 2, other: 1, both: 1}
	probs := c.problems
	c.problems = nil
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("checkCancels = %+v, want %+v", c, want)
	}
	if len(probs) != 2 || !strings.HasPrefix(probs[0], "reported as both: c ") || !strings.HasPrefix(probs[1], "d ") {
		t.Errorf("problems = %q, want c reported as both, d not found before due", probs)
	}
}

// TestCheckMoves checks, on made-up answers and deliveries, the checks of
// the rescheduled timers.
func TestCheckMoves(t *testing.T) {
	due := t0
	newDue := due.Add(raceMoveBy)
	off := func(n int) time.Time { return due.Add(time.Duration(n) * time.Millisecond) }
	acked := make(map[string]time.Time)
	move := func(id string, answered int, code codes.Code) raceOp {
		acked[id] = off(-2000)
		return raceOp{id: id, due: due, newDue: newDue, sent: off(answered - 2), answered: off(answered), code: code, definite: true}
	}
	at := func(id string, due time.Time, fired int) delivery {
		return delivery{id: id, due: due, fired: off(fired), received: off(fired + 1), payloadOK: true}
	}
	for _, tc := range []struct {
		name     string
		move     raceOp
		got      []delivery
		want     moveCheck // without problems
		problems int
	}{
		{"moved before due", move("a", -5, codes.OK), []delivery{at("a", newDue, 1500)}, moveCheck{okBefore: 1}, 0},
		{"moved in flight", move("b", 3, codes.OK), []delivery{at("b", due, 1), at("b", newDue, 1500)}, moveCheck{okInFlight: 1}, 0},
		{"never at the new due time", move("c", -5, codes.OK), nil, moveCheck{okBefore: 1}, 1},
		{"old occurrence after the move", move("d", 3, codes.OK), []delivery{at("d", due, 4), at("d", newDue, 1500)},
			moveCheck{okInFlight: 1, oldAfter: 1}, 1},
		{"not found, delivered at the old due time", move("g", 5, codes.NotFound), []delivery{at("g", due, 0)}, moveCheck{notFound: 1}, 0},
		{"not found, delivered at the new due time", move("h", 5, codes.NotFound), []delivery{at("h", due, 0), at("h", newDue, 1500)},
			moveCheck{notFound: 1}, 1},
		{"a cut call", raceOp{id: "i", due: due, newDue: newDue, code: codes.DeadlineExceeded}, nil, moveCheck{other: 1}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := checkMoves([]raceOp{tc.move}, acked, tc.got)
			if len(m.problems) != tc.problems {
				t.Errorf("problems %q, want %d", m.problems, tc.problems)
			}
			m.problems = nil
			if fmt.Sprint(m) != fmt.Sprint(tc.want) {
				t.Errorf("checkMoves = %+v, want %+v", m, tc.want)
			}
		})
	}
}

// TestLiveTwice checks that two occurrences of one id are a problem,
// unless a copy without request id came after it fired, and that
// repeated deliveries of one occurrence, or a moved timer's two, are not.
func TestLiveTwice(t *testing.T) {
	got := []delivery{
		{id: "s1", deliveryID: "x", fired: t0}, {id: "s1", deliveryID: "x", fired: t0}, // one occurrence, twice
		{id: "s2", deliveryID: "y", fired: t0}, {id: "s2", deliveryID: "z", fired: t0}, // two live timers
		{id: "r1", deliveryID: "u", fired: t0}, {id: "r1", deliveryID: "v", fired: t0}, // moved: a new occurrence
	}
	moved := map[string]bool{"r1": true}
	for _, tc := range []struct {
		name        string
		recreatable map[string]time.Time
		problems    int
		recreated   int
	}{
		{"with request ids", nil, 1, 0},
		{"copies all answered before it fired", map[string]time.Time{"s2": t0.Add(-time.Millisecond)}, 1, 0},
		{"a copy answered after it fired", map[string]time.Time{"s2": t0.Add(time.Millisecond)}, 0, 1},
	} {
		p, recreated := liveTwice(got, moved, tc.recreatable)
		if len(p) != tc.problems || recreated != tc.recreated || (len(p) == 1 && !strings.HasPrefix(p[0], "s2 ")) {
			t.Errorf("%s: liveTwice = %q, %d recreated; want %d problems (s2), %d recreated", tc.name, p, recreated, tc.problems, tc.recreated)
		}
	}
}
