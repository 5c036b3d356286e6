package chaos

import (
	"cmp"
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// loadConfig shapes the timers a run schedules and how.
type loadConfig struct {
	timers int
	// idPrefix starts every timer id (and batch request id), so that the
	// loads of one run never share one; "t" when empty.
	idPrefix string
	// The due times are spread uniformly over [firstDue, firstDue+spread)
	// after the start of the run, to the millisecond.
	firstDue, spread time.Duration
	// A batch holds minBatch to maxBatch timers of neighbouring due times
	// and is sent between leadMin and leadMax before the earliest of them
	// (or at the start, if that is earlier), to a node drawn for it.
	minBatch, maxBatch int
	leadMin, leadMax   time.Duration
	// A batch's transient failures are retried, with backoff, for at most
	// retryFor after its first attempt; each call may take callTimeout.
	retryFor, callTimeout time.Duration
	// At most concurrency batches are in flight at once.
	concurrency int
}

// timerPlan is one timer of a run: its id and due time, an offset from
// the start of the run.
type timerPlan struct {
	id  string
	due time.Duration
}

// batchPlan is one Schedule call of a run, with its retries.
type batchPlan struct {
	index  int
	timers []timerPlan
	sendAt time.Duration // offset from the start of the run
	node   int           // the node of the first attempt; retries rotate
}

// planLoad draws the timers and batches of a run from rng.
func planLoad(rng *rand.Rand, cfg loadConfig, nodes int) []batchPlan {
	prefix := cmp.Or(cfg.idPrefix, "t")
	timers := make([]timerPlan, cfg.timers)
	for i := range timers {
		timers[i] = timerPlan{
			id:  fmt.Sprintf("%s%06d", prefix, i),
			due: cfg.firstDue + time.Duration(rng.Int64N(cfg.spread.Milliseconds()))*time.Millisecond,
		}
	}
	slices.SortStableFunc(timers, func(a, b timerPlan) int { return cmp.Compare(a.due, b.due) })
	var batches []batchPlan
	for len(timers) > 0 {
		n := min(cfg.minBatch+rng.IntN(cfg.maxBatch-cfg.minBatch+1), len(timers))
		lead := cfg.leadMin + time.Duration(rng.Int64N(int64(cfg.leadMax-cfg.leadMin)+1))
		batches = append(batches, batchPlan{
			index:  len(batches),
			timers: timers[:n:n],
			sendAt: max(0, timers[0].due-lead),
			node:   rng.IntN(nodes),
		})
		timers = timers[n:]
	}
	slices.SortStableFunc(batches, func(a, b batchPlan) int { return cmp.Compare(a.sendAt, b.sendAt) })
	return batches
}

// loadResult is what the client knows at the end of a run.
type loadResult struct {
	mu sync.Mutex
	// attempted holds the due time of every timer sent in at least one
	// request; acked those of the timers a Schedule answered OK, and
	// ackedAt when; indeterminate why the others are not known to exist:
	// a definitive failure, or retries that ended without an answer.
	attempted     map[string]time.Time
	acked         map[string]time.Time
	ackedAt       map[string]time.Time
	indeterminate map[string]string
	// calls counts Schedule calls; rpcErrors the calls that failed as a
	// whole, by code; itemRetries the items sent again, by the code that
	// made them; dueMismatch the OK items whose due time differs from the
	// one sent.
	calls       int
	rpcErrors   map[codes.Code]int
	itemRetries map[codes.Code]int
	dueMismatch []string
}

func newLoadResult() *loadResult {
	return &loadResult{
		attempted:     make(map[string]time.Time),
		acked:         make(map[string]time.Time),
		ackedAt:       make(map[string]time.Time),
		indeterminate: make(map[string]string),
		rpcErrors:     make(map[codes.Code]int),
		itemRetries:   make(map[codes.Code]int),
	}
}

// loader schedules the planned batches through the nodes' gRPC API as a
// careful client would: every call of a batch carries the same request
// id; a call that fails with UNAVAILABLE or DEADLINE_EXCEEDED is sent
// again, whole, to the next node; items answered UNAVAILABLE,
// DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED are sent again, alone, after a
// backoff; only an OK item counts as scheduled.
type loader struct {
	cfg     loadConfig
	seed    uint64
	ns      string
	topic   string
	clients []pb.TimerServiceClient
	start   time.Time // the start of the run; due times are offsets from it
	res     *loadResult
}

func newLoader(cfg loadConfig, seed uint64, ns, topic string, conns []*grpc.ClientConn, start time.Time) *loader {
	l := &loader{cfg: cfg, seed: seed, ns: ns, topic: topic, start: start, res: newLoadResult()}
	for _, c := range conns {
		l.clients = append(l.clients, pb.NewTimerServiceClient(c))
	}
	return l
}

// run sends every batch at its time and returns once each has an
// outcome, or ctx ends.
func (l *loader) run(ctx context.Context, batches []batchPlan) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, l.cfg.concurrency)
	for _, b := range batches {
		if !sleepUntil(ctx, l.start.Add(b.sendAt)) {
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
			defer func() { <-sem }()
			l.send(ctx, b)
		})
	}
	wg.Wait()
}

// due is the absolute due time of t.
func (l *loader) due(t timerPlan) time.Time { return l.start.Add(t.due) }

// send schedules one batch, with its retries, and records each timer's
// outcome.
func (l *loader) send(ctx context.Context, b batchPlan) {
	rng := rand.New(rand.NewPCG(l.seed, uint64(b.index)))
	reqID := fmt.Sprintf("chaos-%s-%d-%d", cmp.Or(l.cfg.idPrefix, "t"), l.seed, b.index)
	l.res.mu.Lock()
	for _, t := range b.timers {
		l.res.attempted[t.id] = l.due(t)
	}
	l.res.mu.Unlock()

	pending := b.timers
	why := make(map[string]string, len(pending)) // the last outcome of each pending timer
	began := time.Now()
	for attempt := 0; len(pending) > 0; attempt++ {
		if attempt > 0 {
			if time.Since(began) > l.cfg.retryFor {
				break
			}
			// Backoff: 100ms doubling to 1s, drawn from [d/2, d].
			d := min(100*time.Millisecond<<min(attempt-1, 4), time.Second)
			if !sleepUntil(ctx, time.Now().Add(d/2+time.Duration(rng.Int64N(int64(d/2)+1)))) {
				break
			}
		}
		node := (b.node + attempt) % len(l.clients)
		req := &pb.ScheduleRequest{RequestId: reqID, Timers: make([]*pb.TimerSpec, len(pending))}
		for i, t := range pending {
			req.Timers[i] = &pb.TimerSpec{
				Namespace: l.ns, Id: t.id, Topic: l.topic, Payload: []byte(t.id),
				When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(l.due(t))},
			}
		}
		callCtx, cancel := context.WithTimeout(ctx, l.cfg.callTimeout)
		resp, err := l.clients[node].Schedule(callCtx, req)
		cancel()
		l.res.mu.Lock()
		l.res.calls++
		l.res.mu.Unlock()
		if err != nil {
			code := status.Code(err)
			l.res.mu.Lock()
			l.res.rpcErrors[code]++
			l.res.mu.Unlock()
			for _, t := range pending {
				why[t.id] = fmt.Sprintf("call failed: %v", err)
			}
			if code == codes.Unavailable || code == codes.DeadlineExceeded {
				continue // some items may have been applied: send them all again
			}
			break
		}
		if len(resp.GetResults()) != len(pending) {
			for _, t := range pending {
				why[t.id] = fmt.Sprintf("%d results for %d items", len(resp.GetResults()), len(pending))
			}
			break
		}
		now := time.Now()
		var next []timerPlan
		l.res.mu.Lock()
		for i, r := range resp.GetResults() {
			t := pending[i]
			switch code := codes.Code(r.GetCode()); code {
			case codes.OK:
				due := l.due(t)
				if r.GetDueTime() != nil && !r.GetDueTime().AsTime().Equal(due) {
					l.res.dueMismatch = append(l.res.dueMismatch, fmt.Sprintf("%s: sent due %v, answered %v",
						t.id, due.Format(time.StampMilli), r.GetDueTime().AsTime().Local().Format(time.StampMilli)))
				}
				l.res.acked[t.id] = due
				l.res.ackedAt[t.id] = now
				delete(why, t.id)
			case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
				l.res.itemRetries[code]++
				why[t.id] = fmt.Sprintf("item %v: %s", code, r.GetMessage())
				next = append(next, t)
			default:
				l.res.indeterminate[t.id] = fmt.Sprintf("item failed: %v: %s", code, r.GetMessage())
				delete(why, t.id)
			}
		}
		l.res.mu.Unlock()
		pending = next
	}
	l.res.mu.Lock()
	defer l.res.mu.Unlock()
	for _, t := range pending {
		l.res.indeterminate[t.id] = fmt.Sprintf("gave up after %v: %s", time.Since(began).Round(time.Millisecond), why[t.id])
	}
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
