package chaos

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// The namespace and topic of the workload's timers.
const (
	namespace = "chaos"
	topic     = "chaos"
)

// workloadConfig shapes the timers a workload schedules and how. The
// zero value of each field takes its default.
type workloadConfig struct {
	// Timers is how many timers are scheduled (default 50,000).
	Timers int
	// The due times are spread uniformly over [FirstDue, FirstDue+Spread)
	// after the start of the workload, to the millisecond (default 1s
	// and 30s).
	FirstDue, Spread time.Duration
	// A batch holds MinBatch to MaxBatch timers of neighbouring due times
	// (default 100 to 500) and is sent between LeadMin and LeadMax before
	// the earliest of them (default 0.5s to 8s), or at the start if that
	// is earlier, to a node drawn for it.
	MinBatch, MaxBatch int
	LeadMin, LeadMax   time.Duration
	// FullRate sends every batch at once, as fast as Concurrency allows,
	// rather than ahead of its due times.
	FullRate bool
	// A batch's transient failures are retried, with backoff, for at most
	// RetryFor after its first attempt (default 20s); each call may take
	// CallTimeout (default 3s).
	RetryFor, CallTimeout time.Duration
	// At most Concurrency batches are in flight at once (default 32).
	Concurrency int
	// Reschedule and Cancel are the fractions (0 to 1) of the
	// acknowledged timers that are then moved to another due time, or
	// cancelled, before their due time. A timer due too soon after its
	// acknowledgement (within followUpMargin) is left alone.
	Reschedule, Cancel float64
}

func (c workloadConfig) withDefaults() workloadConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	dur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.Timers, 50_000)
	dur(&c.FirstDue, time.Second)
	dur(&c.Spread, 30*time.Second)
	def(&c.MinBatch, 100)
	def(&c.MaxBatch, 500)
	dur(&c.LeadMin, 500*time.Millisecond)
	dur(&c.LeadMax, 8*time.Second)
	dur(&c.RetryFor, 20*time.Second)
	dur(&c.CallTimeout, 3*time.Second)
	def(&c.Concurrency, 32)
	return c
}

// followUpMargin is how long before a timer's due time its Reschedule or
// Cancel is sent at the latest: the write lands before the timer fires.
const followUpMargin = time.Second

// timerPlan is one timer of a workload: its id and due time, an offset
// from the start of the workload.
type timerPlan struct {
	id  string
	due time.Duration
}

// batchPlan is one Schedule call of a workload, with its retries.
type batchPlan struct {
	index  int
	timers []timerPlan
	sendAt time.Duration // offset from the start of the workload
	node   int           // the node of the first attempt; retries rotate
}

// planLoad draws the timers and batches of a workload from rng.
func planLoad(rng *rand.Rand, cfg workloadConfig, nodes int) []batchPlan {
	timers := make([]timerPlan, cfg.Timers)
	for i := range timers {
		timers[i] = timerPlan{
			id:  fmt.Sprintf("t%07d", i),
			due: cfg.FirstDue + time.Duration(rng.Int64N(cfg.Spread.Milliseconds()))*time.Millisecond,
		}
	}
	slices.SortStableFunc(timers, func(a, b timerPlan) int { return cmp.Compare(a.due, b.due) })
	var batches []batchPlan
	for len(timers) > 0 {
		n := min(cfg.MinBatch+rng.IntN(cfg.MaxBatch-cfg.MinBatch+1), len(timers))
		lead := cfg.LeadMin + time.Duration(rng.Int64N(int64(cfg.LeadMax-cfg.LeadMin)+1))
		b := batchPlan{index: len(batches), timers: timers[:n:n], sendAt: max(0, timers[0].due-lead), node: rng.IntN(nodes)}
		if cfg.FullRate {
			b.sendAt = 0
		}
		batches = append(batches, b)
		timers = timers[n:]
	}
	slices.SortStableFunc(batches, func(a, b batchPlan) int { return cmp.Compare(a.sendAt, b.sendAt) })
	return batches
}

// workload schedules planned batches through the nodes' gRPC API as a
// careful client would, and records every item of every call in the
// ledger with its outcome: every call of a batch carries the same request
// id; a call that fails with UNAVAILABLE or DEADLINE_EXCEEDED is sent
// again, whole, to the next node; items answered UNAVAILABLE,
// DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED are sent again, alone, after a
// backoff. A seeded fraction of the acknowledged timers is then
// rescheduled or cancelled before its due time.
type workload struct {
	cfg     workloadConfig
	r       *run
	c       *testCluster
	batches []batchPlan
	// start is the start of the workload; due times are offsets from it,
	// to the millisecond, which is what the server keeps.
	start time.Time
	done  chan struct{}

	mu sync.Mutex
	// calls counts calls by kind; rpcErrors the calls that failed whole,
	// itemRetries the items sent again, by code; dueMismatch the OK items
	// whose due time differs from the one sent.
	calls       map[opKind]int
	rpcErrors   map[codes.Code]int
	itemRetries map[codes.Code]int
	dueMismatch []string
}

// newWorkload plans a workload on c from r's seed; begin sends it.
func newWorkload(r *run, c *testCluster, cfg workloadConfig) *workload {
	cfg = cfg.withDefaults()
	return &workload{cfg: cfg, r: r, c: c, batches: planLoad(r.rng, cfg, c.size()), done: make(chan struct{}),
		calls: make(map[opKind]int), rpcErrors: make(map[codes.Code]int), itemRetries: make(map[codes.Code]int)}
}

// begin starts sending the batches, at their times from now, and returns
// the start of the workload; wait waits for every batch's outcome.
func (w *workload) begin() time.Time {
	w.start = time.Now().Add(200 * time.Millisecond).Truncate(time.Millisecond)
	// The run's context ends before the test's cleanups run, which wait
	// for the sender to see it.
	w.r.t.Cleanup(func() { <-w.done })
	go func() {
		defer close(w.done)
		w.send(w.r.ctx)
	}()
	w.r.logf("workload: %s timers in %d batches due over %v from +%v (reschedule %.0f%%, cancel %.0f%%)",
		itoa(w.cfg.Timers), len(w.batches), w.cfg.Spread, w.cfg.FirstDue, 100*w.cfg.Reschedule, 100*w.cfg.Cancel)
	return w.start
}

// wait waits until every batch and its follow-ups have an outcome, and
// reports false if r's context ended first.
func (w *workload) wait() bool {
	select {
	case <-w.done:
		return true
	case <-w.r.ctx.Done():
		return false
	}
}

// lastDue is the latest due time the plan can give a timer, reschedules
// included.
func (w *workload) lastDue() time.Time {
	return w.start.Add(w.cfg.FirstDue + w.cfg.Spread + rescheduleLater)
}

// rescheduleLater bounds how much later a Reschedule moves a timer.
const rescheduleLater = 3 * time.Second

// send sends every batch at its time and returns once each has an
// outcome, or ctx ends.
func (w *workload) send(ctx context.Context) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, w.cfg.Concurrency)
	for _, b := range w.batches {
		if !sleepUntil(ctx, w.start.Add(b.sendAt)) {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			acked := w.schedule(ctx, b)
			<-sem
			w.followUp(ctx, b, acked)
		})
	}
	wg.Wait()
}

func (w *workload) due(t timerPlan) time.Time { return w.start.Add(t.due) }

// client returns the TimerService client of node i modulo the cluster's
// size.
func (w *workload) client(i int) pb.TimerServiceClient {
	return pb.NewTimerServiceClient(w.c.conn(i % w.c.size()))
}

// retryPause sleeps before attempt (100ms doubling to 1s, drawn from [d/2,
// d]) and reports false if ctx ended.
func retryPause(ctx context.Context, rng *rand.Rand, attempt int) bool {
	d := min(100*time.Millisecond<<min(attempt-1, 4), time.Second)
	return sleepUntil(ctx, time.Now().Add(d/2+time.Duration(rng.Int64N(int64(d/2)+1))))
}

// schedule schedules one batch, with its retries, records each item's
// outcome in the ledger and returns the timers acknowledged.
func (w *workload) schedule(ctx context.Context, b batchPlan) []timerPlan {
	rng := rand.New(rand.NewPCG(w.r.seed, uint64(b.index)))
	reqID := fmt.Sprintf("chaos-%d-%d", w.r.seed, b.index)
	pending := b.timers
	var acked []timerPlan
	began := time.Now()
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt > 0 && (time.Since(began) > w.cfg.RetryFor || !retryPause(ctx, rng, attempt)) {
			break
		}
		req := &pb.ScheduleRequest{RequestId: reqID, Timers: make([]*pb.TimerSpec, len(pending))}
		for i, t := range pending {
			req.Timers[i] = &pb.TimerSpec{
				Namespace: namespace, Id: t.id, Topic: topic, Payload: []byte(t.id),
				When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(w.due(t))},
			}
		}
		sent := time.Now()
		callCtx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
		resp, err := w.client(b.node+attempt).Schedule(callCtx, req)
		cancel()
		answered := time.Now()
		ops := make([]op, len(pending))
		for i, t := range pending {
			ops[i] = op{kind: opSchedule, id: t.id, due: w.due(t), sent: sent, answered: answered}
		}
		if err == nil && len(resp.GetResults()) != len(pending) {
			err = status.Errorf(codes.Internal, "%d results for %d items", len(resp.GetResults()), len(pending))
		}
		if err != nil {
			code := status.Code(err)
			for i := range ops {
				ops[i].outcome, ops[i].code = callOutcome(code), code
			}
			w.r.ledger.recordAll(ops)
			w.count(opSchedule, code, false)
			if code == codes.Unavailable || code == codes.DeadlineExceeded {
				continue // some items may have been applied: send them all again
			}
			break
		}
		w.count(opSchedule, codes.OK, false)
		var next []timerPlan
		for i, res := range resp.GetResults() {
			t := pending[i]
			code := codes.Code(res.GetCode())
			ops[i].outcome, ops[i].code = itemOutcome(code), code
			switch code {
			case codes.OK:
				if res.GetDueTime() != nil && !res.GetDueTime().AsTime().Equal(w.due(t)) {
					w.mu.Lock()
					w.dueMismatch = append(w.dueMismatch, fmt.Sprintf("%s: sent due %v, answered %v",
						t.id, w.due(t).Format(time.StampMilli), res.GetDueTime().AsTime().Local().Format(time.StampMilli)))
					w.mu.Unlock()
				}
				acked = append(acked, t)
			case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
				w.count(opSchedule, code, true)
				next = append(next, t)
			}
		}
		w.r.ledger.recordAll(ops)
		pending = next
	}
	return acked
}

// followUp reschedules and cancels the seeded fraction of a batch's
// acknowledged timers, halfway between now and the earliest of their due
// times, and records each item's outcome.
func (w *workload) followUp(ctx context.Context, b batchPlan, acked []timerPlan) {
	if w.cfg.Reschedule == 0 && w.cfg.Cancel == 0 {
		return
	}
	rng := rand.New(rand.NewPCG(w.r.seed, uint64(b.index)|1<<63))
	now := time.Now()
	var move, cancel []timerPlan
	for _, t := range acked {
		x := rng.Float64()
		if w.due(t).Sub(now) < 2*followUpMargin {
			continue
		}
		switch {
		case x < w.cfg.Reschedule:
			move = append(move, t)
		case x < w.cfg.Reschedule+w.cfg.Cancel:
			cancel = append(cancel, t)
		}
	}
	if len(move)+len(cancel) == 0 {
		return
	}
	earliest := slices.MinFunc(append(move, cancel...), func(a, b timerPlan) int { return cmp.Compare(a.due, b.due) })
	if !sleepUntil(ctx, now.Add(w.due(earliest).Add(-followUpMargin).Sub(now)/2)) {
		return
	}
	if len(move) > 0 {
		items := make([]*pb.RescheduleItem, len(move))
		ops := make([]op, len(move))
		for i, t := range move {
			// Anywhere from 1s earlier (but not before the margin) to
			// rescheduleLater later.
			due := w.due(t).Add(time.Duration(rng.Int64N(int64(time.Second+rescheduleLater)/1e6))*time.Millisecond - time.Second)
			if soonest := time.Now().Add(followUpMargin); due.Before(soonest) {
				due = soonest
			}
			due = due.Truncate(time.Millisecond)
			items[i] = &pb.RescheduleItem{Id: t.id, When: &pb.RescheduleItem_DueTime{DueTime: timestamppb.New(due)}}
			ops[i] = op{kind: opReschedule, id: t.id, due: due}
		}
		w.call(ctx, b, opReschedule, ops, func(ctx context.Context, c pb.TimerServiceClient) ([]*pb.ItemResult, error) {
			resp, err := c.Reschedule(ctx, &pb.RescheduleRequest{Namespace: namespace, Items: items,
				RequestId: fmt.Sprintf("chaos-%d-%d-r", w.r.seed, b.index)})
			return resp.GetResults(), err
		})
	}
	if len(cancel) > 0 {
		ids := make([]string, len(cancel))
		ops := make([]op, len(cancel))
		for i, t := range cancel {
			ids[i] = t.id
			ops[i] = op{kind: opCancel, id: t.id}
		}
		w.call(ctx, b, opCancel, ops, func(ctx context.Context, c pb.TimerServiceClient) ([]*pb.ItemResult, error) {
			resp, err := c.Cancel(ctx, &pb.CancelRequest{Namespace: namespace, Ids: ids})
			return resp.GetResults(), err
		})
	}
}

// call sends one Reschedule or Cancel, once, and records each item's
// outcome from the call's error or its item results.
func (w *workload) call(ctx context.Context, b batchPlan, kind opKind, ops []op,
	do func(context.Context, pb.TimerServiceClient) ([]*pb.ItemResult, error)) {
	sent := time.Now()
	callCtx, cancel := context.WithTimeout(ctx, w.cfg.CallTimeout)
	results, err := do(callCtx, w.client(b.node))
	cancel()
	answered := time.Now()
	if err == nil && len(results) != len(ops) {
		err = status.Errorf(codes.Internal, "%d results for %d items", len(results), len(ops))
	}
	code := status.Code(err)
	w.count(kind, code, false)
	for i := range ops {
		ops[i].sent, ops[i].answered = sent, answered
		if err != nil {
			ops[i].outcome, ops[i].code = callOutcome(code), code
			continue
		}
		c := codes.Code(results[i].GetCode())
		ops[i].outcome, ops[i].code = itemOutcome(c), c
	}
	w.r.ledger.recordAll(ops)
}

// count counts a call of kind that ended with code (item: an item sent
// again for code).
func (w *workload) count(kind opKind, code codes.Code, item bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case item:
		w.itemRetries[code]++
	case code != codes.OK:
		w.calls[kind]++
		w.rpcErrors[code]++
	default:
		w.calls[kind]++
	}
}

// check adds a problem to v for every due time answered differently from
// the one sent, and logs the client's counts.
func (w *workload) check(v *verdict) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, m := range w.dueMismatch {
		v.problem("due time answered differently: %s", m)
	}
	w.r.logf("client: calls %v; calls failed whole: %s; items sent again: %s", w.calls, codeCounts(w.rpcErrors), codeCounts(w.itemRetries))
}

// sleepUntil sleeps until t and reports true, or returns false as soon as
// ctx ends.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
