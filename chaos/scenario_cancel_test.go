package chaos

import (
	"context"
	"fmt"
	"maps"
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

// TestCancelRace runs the cancel-race scenario.
func TestCancelRace(t *testing.T) {
	runScenario(t, "TestCancelRace", cancelRace)
}

// raceOp is one Cancel or Reschedule and its answer.
type raceOp struct {
	id             string
	due, newDue    time.Time // newDue: a Reschedule's
	sent, answered time.Time
	code           codes.Code // the item's code, or the call's when it failed whole
	definite       bool       // an item answer, not a failed call
}

func cancelRace(t *testing.T, e *scenarioEnv) {
	ctx := e.ctx
	subs := subscribe(namespace, topic, maxInFlight, ackTimeout, e.conns)
	t.Cleanup(subs.stop)
	forgetful := startSubscriberProcess(t, e.nodes[e.rng.IntN(len(e.nodes))].grpcAddr, namespace, topic, forgetCredit, forgetAckTimeout, fromProcess)
	runStart := time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)

	// The timers to cancel and to move, scheduled 2s to 2.5s ahead.
	cfg := func(prefix string, n int) loadConfig {
		return loadConfig{timers: n, idPrefix: prefix, firstDue: raceFirstDue, spread: raceWindow, minBatch: 100, maxBatch: 500,
			leadMin: 2 * time.Second, leadMax: 2500 * time.Millisecond, retryFor: 2 * time.Second, callTimeout: time.Second, concurrency: 8}
	}
	cancels, moves := cfg("c", raceTimers), cfg("r", raceMoves)
	cancelLoad := newLoader(cancels, e.seed, namespace, topic, e.conns, runStart)
	moveLoad := newLoader(moves, e.seed, namespace, topic, e.conns, runStart)
	cancelBatches, moveBatches := planLoad(e.rng, cancels, len(e.conns)), planLoad(e.rng, moves, len(e.conns))
	var wg sync.WaitGroup
	wg.Go(func() { cancelLoad.run(ctx, cancelBatches) })
	wg.Go(func() { moveLoad.run(ctx, moveBatches) })

	// The races, each at its timer's due time plus a seeded offset, on a
	// seeded node.
	var mu sync.Mutex
	var cancelOps, moveOps []raceOp
	race := func(batches []batchPlan, l *loader, move bool) {
		for _, b := range batches {
			for _, tp := range b.timers {
				skew := time.Duration(e.rng.Int64N(int64((raceEarly+raceLate)/time.Millisecond)+1))*time.Millisecond - raceEarly
				node := e.rng.IntN(len(e.conns))
				due := l.due(tp)
				wg.Go(func() {
					if !sleepUntil(ctx, due.Add(skew)) {
						return
					}
					op := raceOp{id: tp.id, due: due}
					if move {
						op.newDue = due.Add(raceMoveBy)
					}
					sendRaceOp(ctx, e.conns[node], &op)
					mu.Lock()
					defer mu.Unlock()
					if move {
						moveOps = append(moveOps, op)
					} else {
						cancelOps = append(cancelOps, op)
					}
				})
			}
		}
	}
	race(cancelBatches, cancelLoad, false)
	race(moveBatches, moveLoad, true)

	// The retrying client.
	rc := newRetryClient(e, runStart)
	wg.Go(func() { rc.run(ctx) })
	t.Logf("run started: %d timers cancelled and %d moved from %v before to %v after their due times over %v; %d timers scheduled %d times at once by a retrying client",
		raceTimers, raceMoves, raceEarly, raceLate, raceWindow, retryTimers, retryCopies)
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatalf("the run did not end within %v", runTimeout)
	}

	// Every timer that must be delivered: the acknowledged timers of the
	// retrying client, those a Cancel found gone (NOT_FOUND), and the new
	// due times of those a Reschedule moved.
	rc.mu.Lock()
	expect := maps.Clone(rc.acked)
	attempted := maps.Clone(rc.attempted)
	indeterminate := maps.Clone(rc.indeterminate)
	rc.mu.Unlock()
	for _, l := range []*loader{cancelLoad, moveLoad} {
		l.res.mu.Lock()
		maps.Copy(attempted, l.res.attempted)
		maps.Copy(indeterminate, l.res.indeterminate)
		l.res.mu.Unlock()
	}
	cancelLoad.res.mu.Lock()
	for _, op := range cancelOps {
		if _, ok := cancelLoad.res.acked[op.id]; ok && op.definite && op.code == codes.NotFound {
			expect[op.id] = op.due
		}
	}
	cancelLoad.res.mu.Unlock()
	moveLoad.res.mu.Lock()
	for _, op := range moveOps {
		if _, ok := moveLoad.res.acked[op.id]; ok && op.definite && op.code == codes.OK {
			expect[op.id] = op.newDue
		}
	}
	moveLoad.res.mu.Unlock()
	deadline := runStart.Add(retryFirstDue + raceWindow + retryLate).Add(drainFor)
	for time.Now().Before(deadline) && missing(expect, subs.deliveries()) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(settleFor)
	forgetful.kill9()
	subs.stop()
	got := append(subs.deliveries(), forgetful.deliveries()...)

	// The rescheduled timers are judged apart: a delivery of one may
	// carry its old or its new due time.
	var plain, moved []delivery
	for _, d := range got {
		if d.id[0] == 'r' {
			moved = append(moved, d)
		} else {
			plain = append(plain, d)
		}
	}
	plainExpect := make(map[string]time.Time)
	for id, due := range expect {
		if id[0] != 'r' {
			plainExpect[id] = due
		}
	}
	for id := range attempted {
		if id[0] == 'r' {
			delete(attempted, id)
		}
	}
	v := judge(attempted, plainExpect, indeterminate, plain)
	v.Seed = e.seed
	v.Problems = append(v.Problems, e.exitedUnasked()...)
	cs := checkCancels(cancelOps, cancelLoad.res, got)
	mv := checkMoves(moveOps, moveLoad.res, moved)
	v.Lost += mv.lost
	v.Early += mv.early
	v.Corrupt += mv.corrupt
	v.Problems = append(v.Problems, cs.problems...)
	v.Problems = append(v.Problems, mv.problems...)
	rc.mu.Lock()
	twice, recreated := liveTwice(got, rc.recreatable)
	v.Problems = append(v.Problems, twice...)
	v.Problems = append(v.Problems, rc.problems...)
	cut, calls := rc.cut, rc.calls
	rc.mu.Unlock()
	v.Pass = v.Pass && mv.lost == 0 && mv.early == 0 && mv.corrupt == 0 && len(v.Problems) == 0

	figures := []string{
		fmt.Sprintf("cancels %s: OK before due %d, OK in flight %d (of them delivered %d, held unacked %d), NOT_FOUND %d, other %d; cancelled-fired %d, reported as both %d",
			itoa(len(cancelOps)), cs.okBefore, cs.okInFlight, cs.okDelivered, cs.okHeld, cs.notFound, cs.other, cs.cancelledFired, cs.both),
		fmt.Sprintf("reschedules %s: OK before due %d, OK in flight %d, NOT_FOUND %d, other %d; old occurrence sent after the move %d",
			itoa(len(moveOps)), mv.okBefore, mv.okInFlight, mv.notFound, mv.other, mv.oldAfter),
		fmt.Sprintf("retrying client: %s calls, %s cut mid-flight, %d timers made again by a copy without request id that came after they fired", itoa(calls), itoa(cut), recreated),
		fmt.Sprintf("cancels answered after the due time p10 %s p50 %s p90 %s, in p50 %s p99 %s",
			pct(answerSkew(cancelOps), 10), pct(answerSkew(cancelOps), 50), pct(answerSkew(cancelOps), 90), pct(took(cancelOps), 50), pct(took(cancelOps), 99)),
	}
	reportScenario(t, "cancel-race", v, figures)
}

// sendRaceOp sends op's Cancel (or Reschedule, when it has a new due time)
// of one timer and records its answer.
func sendRaceOp(ctx context.Context, conn *grpc.ClientConn, op *raceOp) {
	tc := pb.NewTimerServiceClient(conn)
	cctx, cancel := context.WithTimeout(ctx, raceCallTimeout)
	defer cancel()
	op.sent = time.Now()
	var results []*pb.ItemResult
	var err error
	if op.newDue.IsZero() {
		var resp *pb.CancelResponse
		resp, err = tc.Cancel(cctx, &pb.CancelRequest{Namespace: namespace, Ids: []string{op.id}})
		results = resp.GetResults()
	} else {
		var resp *pb.RescheduleResponse
		resp, err = tc.Reschedule(cctx, &pb.RescheduleRequest{Namespace: namespace, RequestId: "move-" + op.id,
			Items: []*pb.RescheduleItem{{Id: op.id, When: &pb.RescheduleItem_DueTime{DueTime: timestamppb.New(op.newDue)}}}})
		results = resp.GetResults()
	}
	op.answered = time.Now()
	if err != nil || len(results) != 1 {
		op.code = status.Code(err)
		return
	}
	op.code, op.definite = codes.Code(results[0].GetCode()), true
}

// answerSkew returns how long after its timer's due time each op was
// answered (negative: before).
func answerSkew(ops []raceOp) []time.Duration {
	out := make([]time.Duration, len(ops))
	for i, op := range ops {
		out[i] = op.answered.Sub(op.due)
	}
	return out
}

// took returns how long each op took to be answered.
func took(ops []raceOp) []time.Duration {
	out := make([]time.Duration, len(ops))
	for i, op := range ops {
		out[i] = op.answered.Sub(op.sent)
	}
	return out
}

// cancelCheck is what the Cancels' answers and the deliveries say.
type cancelCheck struct {
	okBefore, okInFlight, okDelivered, notFound, other int
	// okHeld counts the Cancels answered OK of timers a subscriber
	// process held unacked when the Cancel was sent: without the Cancel
	// they would be sent again.
	okHeld int
	// cancelledFired counts the timers whose Cancel was answered OK before
	// their due time and that were delivered all the same; both those
	// whose Cancel was answered OK and that were sent after the answer.
	cancelledFired, both int
	problems             []string
}

// checkCancels checks every Cancel against the deliveries.
func checkCancels(ops []raceOp, scheduled *loadResult, got []delivery) cancelCheck {
	var c cancelCheck
	byID := make(map[string][]delivery)
	for _, d := range got {
		byID[d.id] = append(byID[d.id], d)
	}
	scheduled.mu.Lock()
	defer scheduled.mu.Unlock()
	for _, op := range ops {
		_, acked := scheduled.acked[op.id]
		ackedAt := scheduled.ackedAt[op.id]
		ds := byID[op.id]
		switch {
		case !op.definite || (op.code != codes.OK && op.code != codes.NotFound):
			c.other++
		case op.code == codes.OK && op.answered.Before(op.due):
			c.okBefore++
			if len(ds) > 0 {
				c.cancelledFired++
				c.problems = append(c.problems, fmt.Sprintf("cancelled-fired: %s (due %s) cancelled OK %v before its due time, delivered %d times",
					op.id, op.due.Format(time.StampMilli), op.due.Sub(op.answered), len(ds)))
			}
		case op.code == codes.OK:
			c.okInFlight++
			if len(ds) > 0 {
				c.okDelivered++
			}
			if slices.ContainsFunc(ds, func(d delivery) bool { return d.node == fromProcess && d.received.Before(op.sent) }) {
				c.okHeld++
			}
			for _, d := range ds {
				if d.fired.After(op.answered) {
					c.both++
					c.problems = append(c.problems, fmt.Sprintf("reported as both: %s cancelled OK at %s, then sent at %s (attempt %d)",
						op.id, op.answered.Format(time.StampMicro), d.fired.Format(time.StampMicro), d.attempt))
					break
				}
			}
		default: // NOT_FOUND
			c.notFound++
			if acked && ackedAt.Before(op.sent) && op.answered.Before(op.due) {
				c.problems = append(c.problems, fmt.Sprintf("%s (due %s, scheduled OK before the Cancel was sent) answered NOT_FOUND before its due time",
					op.id, op.due.Format(time.StampMilli)))
			}
		}
	}
	return c
}

// moveCheck is what the Reschedules' answers and the deliveries say.
type moveCheck struct {
	okBefore, okInFlight, notFound, other int
	// lost: moved (OK) and never delivered at the new due time, or found
	// gone (NOT_FOUND) and never delivered; early: received before the
	// due time it carries; corrupt: carrying neither due time, or a
	// payload other than the scheduled one; oldAfter: the old occurrence
	// sent after the move was answered OK.
	lost, early, corrupt, oldAfter int
	problems                       []string
}

// checkMoves checks every Reschedule against the deliveries of the timers
// it moved.
func checkMoves(ops []raceOp, scheduled *loadResult, got []delivery) moveCheck {
	var m moveCheck
	byID := make(map[string][]delivery)
	for _, d := range got {
		byID[d.id] = append(byID[d.id], d)
	}
	scheduled.mu.Lock()
	defer scheduled.mu.Unlock()
	for _, op := range ops {
		_, acked := scheduled.acked[op.id]
		ds := byID[op.id]
		for _, d := range ds {
			switch {
			case !d.due.Equal(op.due) && !d.due.Equal(op.newDue) || !d.payloadOK:
				m.corrupt++
				m.problems = append(m.problems, fmt.Sprintf("corrupt: %s delivered with due %s, scheduled %s, moved to %s, payload as sent: %v",
					op.id, d.due.Format(time.StampMilli), op.due.Format(time.StampMilli), op.newDue.Format(time.StampMilli), d.payloadOK))
			case d.received.Before(d.due):
				m.early++
				m.problems = append(m.problems, fmt.Sprintf("early: %s received %v before its due time %s", op.id, d.due.Sub(d.received), d.due.Format(time.StampMilli)))
			}
		}
		has := func(due time.Time) bool {
			return slices.ContainsFunc(ds, func(d delivery) bool { return d.due.Equal(due) })
		}
		switch {
		case !op.definite || (op.code != codes.OK && op.code != codes.NotFound):
			m.other++
		case op.code == codes.OK:
			if op.answered.Before(op.due) {
				m.okBefore++
			} else {
				m.okInFlight++
			}
			if acked && !has(op.newDue) {
				m.lost++
				m.problems = append(m.problems, fmt.Sprintf("lost: %s moved OK to %s, never delivered at it", op.id, op.newDue.Format(time.StampMilli)))
			}
			for _, d := range ds {
				if d.due.Equal(op.due) && d.fired.After(op.answered) {
					m.oldAfter++
					m.problems = append(m.problems, fmt.Sprintf("%s moved OK at %s, its old occurrence then sent at %s",
						op.id, op.answered.Format(time.StampMicro), d.fired.Format(time.StampMicro)))
					break
				}
			}
		default: // NOT_FOUND: it fired and was acknowledged
			m.notFound++
			if acked && !has(op.due) {
				m.lost++
				m.problems = append(m.problems, fmt.Sprintf("lost: %s answered NOT_FOUND to its move, never delivered", op.id))
			}
			if has(op.newDue) {
				m.problems = append(m.problems, fmt.Sprintf("%s answered NOT_FOUND to its move, delivered at the new due time all the same", op.id))
			}
		}
	}
	return m
}

// liveTwice names, as problems, the timers with more than one occurrence
// (delivery id) among the deliveries of timers never moved: scheduled
// once, however often the request was sent, they are one live timer each.
// The exception is a timer recreatable after it first fired: a copy sent
// without a request id that reached the server after the first
// occurrence may have been acknowledged creates the timer anew, as the
// contract says; liveTwice counts those apart.
func liveTwice(got []delivery, recreatable map[string]time.Time) (problems []string, recreated int) {
	occurrences := make(map[string]map[string]bool)
	firstFired := make(map[string]time.Time)
	for _, d := range got {
		if d.id[0] == 'r' {
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
// does: each request sent retryCopies times at once to different nodes
// (half of them with one request id, half with none), one in three also
// cut mid-flight and sent again until answered, and one in three sent
// again with its request id retryLate after its due time.
type retryClient struct {
	e     *scenarioEnv
	start time.Time
	plan  []retryPlan

	mu            sync.Mutex
	attempted     map[string]time.Time
	acked         map[string]time.Time
	indeterminate map[string]string
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

func newRetryClient(e *scenarioEnv, start time.Time) *retryClient {
	rc := &retryClient{e: e, start: start, attempted: make(map[string]time.Time), acked: make(map[string]time.Time),
		indeterminate: make(map[string]string), recreatable: make(map[string]time.Time)}
	for i := range retryTimers {
		p := retryPlan{
			id:  fmt.Sprintf("s%06d", i),
			due: start.Add(retryFirstDue + time.Duration(e.rng.Int64N(raceWindow.Milliseconds()))*time.Millisecond),
		}
		if i%2 == 0 {
			p.reqID = fmt.Sprintf("retry-%d-%d", e.seed, i)
		}
		p.cutFirst = i%3 == 1
		p.cutAfter = time.Duration(e.rng.Int64N(3000)) * time.Microsecond
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
		rc.mu.Lock()
		rc.attempted[p.id] = p.due
		rc.mu.Unlock()
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var copies sync.WaitGroup
			for c := range retryCopies {
				copies.Go(func() { rc.send(ctx, p, (i+c)%len(rc.e.conns), p.cutFirst && c == 0) })
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
		wg.Go(func() { rc.send(ctx, p, i%len(rc.e.conns), false) })
	}
	wg.Wait()
}

// send sends p's Schedule to node until it is answered (a cut call first
// cut after p.cutAfter), and records the answer.
func (rc *retryClient) send(ctx context.Context, p retryPlan, node int, cut bool) {
	tc := pb.NewTimerServiceClient(rc.e.conns[node])
	req := &pb.ScheduleRequest{Namespace: namespace, RequestId: p.reqID, Timers: []*pb.TimerSpec{{Id: p.id, Topic: topic,
		Payload: []byte(p.id), When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(p.due)}}}}
	var last string
	for attempt := 0; attempt < 10 && ctx.Err() == nil; attempt++ {
		timeout := raceCallTimeout
		if cut && attempt == 0 {
			timeout = p.cutAfter
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := tc.Schedule(cctx, req)
		cancel()
		rc.mu.Lock()
		rc.calls++
		if cut && attempt == 0 {
			rc.cut++
		}
		if p.reqID == "" {
			rc.recreatable[p.id] = later(rc.recreatable[p.id], time.Now())
		}
		rc.mu.Unlock()
		code := status.Code(err)
		if err == nil && len(resp.GetResults()) == 1 {
			code = codes.Code(resp.GetResults()[0].GetCode())
		}
		last = fmt.Sprintf("%v", code)
		switch code {
		case codes.OK:
			rc.mu.Lock()
			rc.acked[p.id] = p.due
			delete(rc.indeterminate, p.id)
			rc.mu.Unlock()
			return
		case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.ResourceExhausted:
			sleepUntil(ctx, time.Now().Add(50*time.Millisecond))
			continue
		}
		rc.mu.Lock()
		rc.problems = append(rc.problems, fmt.Sprintf("%s: a copy of its Schedule answered %v", p.id, code))
		rc.mu.Unlock()
		return
	}
	rc.mu.Lock()
	if _, ok := rc.acked[p.id]; !ok {
		rc.indeterminate[p.id] = "no answer: " + last
	}
	rc.mu.Unlock()
}

// TestCheckCancels checks, on made-up answers and deliveries, what counts
// as cancelled-fired and as reported as both.
func TestCheckCancels(t *testing.T) {
	due := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	off := func(n int) time.Time { return due.Add(time.Duration(n) * time.Millisecond) }
	scheduled := newLoadResult()
	for _, id := range []string{"a", "b", "c", "d", "e", "f"} {
		scheduled.acked[id], scheduled.ackedAt[id] = due, off(-2000)
	}
	op := func(id string, sent, answered int, code codes.Code) raceOp {
		return raceOp{id: id, due: due, sent: off(sent), answered: off(answered), code: code, definite: true}
	}
	ops := []raceOp{
		op("a", -20, -10, codes.OK),       // cancelled before due, delivered: cancelled-fired
		op("b", -5, 5, codes.OK),          // in flight, sent before the answer: fine
		op("c", 2, 6, codes.OK),           // in flight, sent again after the answer: both
		op("d", -30, -25, codes.NotFound), // scheduled, not found before due
		op("e", 10, 12, codes.NotFound),   // fired and acked: fine
		{id: "f", due: due, sent: off(0), answered: off(5000), code: codes.DeadlineExceeded},
	}
	got := []delivery{
		{id: "a", fired: off(0), received: off(1)},
		{id: "b", fired: off(1), received: off(2), node: fromProcess},
		{id: "c", fired: off(1), received: off(2), attempt: 1},
		{id: "c", fired: off(7), received: off(8), attempt: 2},
		{id: "e", fired: off(0), received: off(1)},
		{id: "f", fired: off(4000), received: off(4001)},
	}
	c := checkCancels(ops, scheduled, got)
	want := cancelCheck{okBefore: 1, okInFlight: 2, okDelivered: 2, okHeld: 0, notFound: 2, other: 1, cancelledFired: 1, both: 1}
	probs := c.problems
	c.problems = nil
	if fmt.Sprint(c) != fmt.Sprint(want) {
		t.Errorf("checkCancels = %+v, want %+v", c, want)
	}
	if len(probs) != 3 || !strings.HasPrefix(probs[0], "cancelled-fired: a ") || !strings.HasPrefix(probs[1], "reported as both: c ") ||
		!strings.HasPrefix(probs[2], "d ") {
		t.Errorf("problems = %q, want a cancelled-fired, c reported as both, d not found before due", probs)
	}
}

// TestCheckMoves checks, on made-up answers and deliveries, the checks of
// the rescheduled timers.
func TestCheckMoves(t *testing.T) {
	due := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	newDue := due.Add(raceMoveBy)
	off := func(n int) time.Time { return due.Add(time.Duration(n) * time.Millisecond) }
	scheduled := newLoadResult()
	op := func(id string, answered int, code codes.Code) raceOp {
		scheduled.acked[id] = due
		return raceOp{id: id, due: due, newDue: newDue, sent: off(answered - 2), answered: off(answered), code: code, definite: true}
	}
	at := func(id string, due time.Time, fired, received int) delivery {
		return delivery{id: id, due: due, fired: off(fired), received: off(received), payloadOK: true}
	}
	tests := []struct {
		name string
		op   raceOp
		got  []delivery
		want moveCheck // without problems
	}{
		{"moved before due", op("a", -5, codes.OK), []delivery{at("a", newDue, 1500, 1501)}, moveCheck{okBefore: 1}},
		{"moved in flight", op("b", 3, codes.OK), []delivery{at("b", due, 1, 2), at("b", newDue, 1500, 1501)}, moveCheck{okInFlight: 1}},
		{"never at the new due time", op("c", -5, codes.OK), nil, moveCheck{okBefore: 1, lost: 1}},
		{"old occurrence after the move", op("d", 3, codes.OK), []delivery{at("d", due, 4, 5), at("d", newDue, 1500, 1501)},
			moveCheck{okInFlight: 1, oldAfter: 1}},
		{"early at the new due time", op("e", -5, codes.OK), []delivery{at("e", newDue, 1400, 1401)}, moveCheck{okBefore: 1, early: 1}},
		{"another due time", op("f", -5, codes.OK), []delivery{at("f", newDue, 1500, 1501), at("f", off(700), 700, 701)},
			moveCheck{okBefore: 1, corrupt: 1}},
		{"not found, delivered", op("g", 5, codes.NotFound), []delivery{at("g", due, 0, 1)}, moveCheck{notFound: 1}},
		{"not found, never delivered", op("h", 5, codes.NotFound), nil, moveCheck{notFound: 1, lost: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := checkMoves([]raceOp{tt.op}, scheduled, tt.got)
			bad := m.lost + m.early + m.corrupt + m.oldAfter
			if len(m.problems) != bad {
				t.Errorf("%d problems %q for %d failures", len(m.problems), m.problems, bad)
			}
			m.problems = nil
			if fmt.Sprint(m) != fmt.Sprint(tt.want) {
				t.Errorf("checkMoves = %+v, want %+v", m, tt.want)
			}
		})
	}
}

// TestLiveTwice checks that two occurrences of one id are a problem and
// repeated deliveries of one occurrence are not.
func TestLiveTwice(t *testing.T) {
	got := []delivery{
		{id: "s1", deliveryID: "x"}, {id: "s1", deliveryID: "x"}, // one occurrence, twice
		{id: "s2", deliveryID: "y"}, {id: "s2", deliveryID: "z"}, // two live timers
		{id: "r1", deliveryID: "u"}, {id: "r1", deliveryID: "v"}, // moved: a new occurrence
	}
	if p, _ := liveTwice(got, nil); len(p) != 1 || !strings.HasPrefix(p[0], "s2 ") {
		t.Errorf("liveTwice = %q, want s2 alone", p)
	}
	fired := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for i := range got {
		got[i].fired = fired
	}
	for _, tt := range []struct {
		name        string
		lastAnswer  time.Time
		wantProblem bool
	}{
		{"copies all answered before it fired", fired.Add(-time.Millisecond), true},
		{"a copy answered after it fired", fired.Add(time.Millisecond), false},
	} {
		p, recreated := liveTwice(got, map[string]time.Time{"s2": tt.lastAnswer})
		if (len(p) == 1) != tt.wantProblem || (recreated == 1) == tt.wantProblem {
			t.Errorf("%s: liveTwice = %q, %d recreated, want a problem: %v", tt.name, p, recreated, tt.wantProblem)
		}
	}
}
