package client

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
)

// Timer is what a client says about a timer to schedule. The zero values
// of the optional fields mean: the client's namespace, due at once, an
// empty payload, one-shot.
type Timer struct {
	// Namespace of the timer; empty means the client's namespace
	// (WithNamespace, default "default").
	Namespace string
	// ID of the timer, unique within its namespace (1 to 256 bytes).
	ID string
	// Topic the timer is delivered on.
	Topic string
	// Due is the absolute due time. When it is zero the timer is due Delay
	// after the call (on the client's clock); setting both is an error.
	Due time.Time
	// Delay is the due time relative to the call, used when Due is zero.
	// It is turned into an absolute due time before the first attempt.
	// Negative is an error; zero means at once.
	Delay time.Duration
	// Payload is handed back unchanged in every delivery (at most the
	// server's limit, default 64 KiB). It is not copied: do not change it
	// until the call that takes it has returned (for a Scheduler, until its
	// done function has been called).
	Payload []byte
	// Interval, when positive, makes the timer repeat: it is re-armed after
	// each acknowledged occurrence (at least the server's minimum, default
	// 1s).
	Interval time.Duration
}

// Result is the outcome of one item of a batch call.
type Result struct {
	// ID of the timer the item names.
	ID string
	// Due is the due time the server now stores for the timer (Schedule,
	// Reschedule, ReplayDeadLetters); zero when Err is set and for Cancel.
	Due time.Time
	// Err is nil on success; otherwise an *Error wrapping the sentinel for
	// the item's code (ErrExists, ErrNotFound, ErrInvalid, ErrDead, ...), or
	// the error of the RPC that carried the item when that failed as a
	// whole.
	Err error
	// Attempts is the number of RPCs that carried the item. A Cancel item
	// with Attempts > 1 that reports ErrNotFound may have been removed by
	// one of its own earlier attempts.
	Attempts int
}

// Move is a new due time for one timer, for RescheduleBatch.
type Move struct {
	// ID of the timer to move.
	ID string
	// Due is the new absolute due time. When it is zero the timer is due
	// Delay after the call (on the client's clock); setting both is an
	// error.
	Due time.Time
	// Delay is the new due time relative to the call, used when Due is
	// zero; resolved before the first attempt. Negative is an error.
	Delay time.Duration
}

// State is the lifecycle state of a stored timer.
type State int

// The states of a timer.
const (
	// StateUnknown is a state this client does not know.
	StateUnknown State = iota
	// StatePending waits for its due time, a subscriber or a redelivery.
	StatePending
	// StateInFlight has been delivered and waits for its ack.
	StateInFlight
	// StateDead is a dead letter: delivery failed the maximum number of
	// attempts.
	StateDead
)

// String returns "pending", "in-flight", "dead" or "unknown".
func (s State) String() string {
	switch s {
	case StatePending:
		return "pending"
	case StateInFlight:
		return "in-flight"
	case StateDead:
		return "dead"
	}
	return "unknown"
}

// TimerInfo is a stored timer as Get and ListDeadLetters return it.
type TimerInfo struct {
	// Namespace, ID, Topic, Payload and Interval are the timer's spec.
	Namespace, ID, Topic string
	Payload              []byte
	Interval             time.Duration
	// Due is the due time of the next occurrence (of the current one while
	// in flight or dead).
	Due time.Time
	// State is the timer's lifecycle state.
	State State
	// Attempts counts the deliveries of the current occurrence so far.
	Attempts uint32
	// Shard is the shard the timer lives on.
	Shard uint32
	// Created is when the timer was first scheduled.
	Created time.Time
}

// Schedule creates one timer and returns the due time the server stored
// for it. Scheduling an id that exists with the same spec succeeds and
// returns the existing due time; with another spec it fails with
// ErrExists. It is retried (see the package documentation); a retry
// carries the request id of the first attempt, so one that arrives after
// the timer fired and was acked does not create it again, while a new
// call of Schedule with the same timer does.
func (c *Client) Schedule(ctx context.Context, t Timer) (time.Time, error) {
	res, err := c.ScheduleBatch(ctx, []Timer{t})
	if err != nil {
		return time.Time{}, err
	}
	return res[0].Due, res[0].Err
}

// ScheduleBatch creates timers in one RPC per node that owns some of them
// (one RPC against a single node) and returns one Result per timer in the
// same order; each item succeeds or fails on its own. It is retried: a
// whole RPC on a transient failure, otherwise only the items that failed
// transiently, each retry sent where the client's shard map then says.
// The error is non-nil only when an RPC failed as a whole (after
// retries); the items it carried then hold the same error, and those of
// the other nodes their own results. An empty batch sends nothing. The
// server limits a batch to its batch limit (default 10000 timers) and
// gRPC's message size (default 4 MiB); a Scheduler splits larger volumes.
func (c *Client) ScheduleBatch(ctx context.Context, timers []Timer) ([]Result, error) {
	res := make([]Result, len(timers))
	if len(timers) == 0 {
		return res, nil
	}
	var buf specBuf
	buf.reset(len(timers))
	idx := make([]int, 0, len(timers))
	now := time.Now()
	for i := range timers {
		t := &timers[i]
		res[i].ID = t.ID
		due, err := resolve(t.Due, t.Delay, now)
		if err != "" {
			res[i].Err = invalidItem(opSchedule, c.ns(t.Namespace), t.ID, err)
			buf.specs = append(buf.specs, nil)
			continue
		}
		buf.add(c.ns(t.Namespace), t, due)
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return res, nil
	}
	err := c.scheduleSpecs(ctx, &buf, res, idx)
	return res, err
}

// scheduleSpecs sends the specs of buf listed in idx (indexes into res and
// buf.specs) with retries, filling res. It is one logical call: every
// attempt carries the same request id, so that the server answers a retry
// that arrives after a timer fired and was acked without creating it
// again.
func (c *Client) scheduleSpecs(ctx context.Context, buf *specBuf, res []Result, idx []int) error {
	nsOf := func(i int) string { return buf.specs[i].GetNamespace() }
	rid := newRequestID()
	return c.runBatch(ctx, opSchedule, res, idx, true, nsOf, func(ctx context.Context, k *conn, idx []int) ([]*timerdv1.ItemResult, error) {
		req := &timerdv1.ScheduleRequest{Timers: buf.specs, RequestId: rid}
		if len(idx) != len(buf.specs) {
			req.Timers = make([]*timerdv1.TimerSpec, len(idx))
			for j, i := range idx {
				req.Timers[j] = buf.specs[i]
			}
		}
		resp, err := k.timers.Schedule(ctx, req)
		return resp.GetResults(), err
	})
}

// Reschedule moves the timer id of namespace (empty: the client's) to the
// absolute due time due and returns the due time the server stored. A
// dead letter fails with ErrDead, an unknown id with ErrNotFound, and a
// zero due with ErrInvalid (RescheduleIn with 0 means now). It is
// retried with the request id of the first attempt, so a retry that
// arrives after the moved timer fired changes nothing (no second
// occurrence with a new delivery id).
func (c *Client) Reschedule(ctx context.Context, namespace, id string, due time.Time) (time.Time, error) {
	if due.IsZero() {
		return time.Time{}, invalidItem(opReschedule, c.ns(namespace), id, "zero due time")
	}
	return c.rescheduleOne(ctx, namespace, Move{ID: id, Due: due})
}

// RescheduleIn moves the timer id of namespace (empty: the client's) to
// delay from now, resolved on the client's clock before the first
// attempt, and returns the due time the server stored. Otherwise it is
// Reschedule.
func (c *Client) RescheduleIn(ctx context.Context, namespace, id string, delay time.Duration) (time.Time, error) {
	return c.rescheduleOne(ctx, namespace, Move{ID: id, Delay: delay})
}

func (c *Client) rescheduleOne(ctx context.Context, namespace string, m Move) (time.Time, error) {
	res, err := c.RescheduleBatch(ctx, namespace, []Move{m})
	if err != nil {
		return time.Time{}, err
	}
	return res[0].Due, res[0].Err
}

// RescheduleBatch moves timers of namespace (empty: the client's) in one
// RPC per owning node and returns one Result per move in the same order.
// Retries and the error are as for ScheduleBatch.
func (c *Client) RescheduleBatch(ctx context.Context, namespace string, moves []Move) ([]Result, error) {
	ns := c.ns(namespace)
	res := make([]Result, len(moves))
	items := make([]*timerdv1.RescheduleItem, len(moves))
	slab := make([]timerdv1.RescheduleItem, len(moves))
	whens := make([]timerdv1.RescheduleItem_DueTime, len(moves))
	stamps := make([]timestamppb.Timestamp, len(moves))
	idx := make([]int, 0, len(moves))
	now := time.Now()
	for i := range moves {
		m := &moves[i]
		res[i].ID = m.ID
		due, err := resolve(m.Due, m.Delay, now)
		if err != "" {
			res[i].Err = invalidItem(opReschedule, ns, m.ID, err)
			continue
		}
		setStamp(&stamps[i], due)
		whens[i].DueTime = &stamps[i]
		slab[i].Id = m.ID
		slab[i].When = &whens[i]
		items[i] = &slab[i]
		idx = append(idx, i)
	}
	if len(idx) == 0 {
		return res, nil
	}
	nsOf := func(int) string { return ns }
	rid := newRequestID() // the same on every attempt; see scheduleSpecs
	err := c.runBatch(ctx, opReschedule, res, idx, true, nsOf, func(ctx context.Context, k *conn, idx []int) ([]*timerdv1.ItemResult, error) {
		req := &timerdv1.RescheduleRequest{Namespace: ns, Items: items, RequestId: rid}
		if len(idx) != len(items) {
			req.Items = make([]*timerdv1.RescheduleItem, len(idx))
			for j, i := range idx {
				req.Items[j] = items[i]
			}
		}
		resp, err := k.timers.Reschedule(ctx, req)
		return resp.GetResults(), err
	})
	return res, err
}

// Cancel removes timers of namespace (empty: the client's), whatever their
// state, and returns one Result per id in the same order. An unknown id
// fails its item with ErrNotFound. It is retried, so an ErrNotFound item
// with Attempts > 1 may be one that an earlier attempt of this call
// removed; either way the timer is gone. The error is as for
// ScheduleBatch. No ids sends nothing.
func (c *Client) Cancel(ctx context.Context, namespace string, ids ...string) ([]Result, error) {
	ns := c.ns(namespace)
	res := make([]Result, len(ids))
	if len(ids) == 0 {
		return res, nil
	}
	idx := make([]int, len(ids))
	for i, id := range ids {
		res[i].ID = id
		idx[i] = i
	}
	nsOf := func(int) string { return ns }
	err := c.runBatch(ctx, opCancel, res, idx, true, nsOf, func(ctx context.Context, k *conn, idx []int) ([]*timerdv1.ItemResult, error) {
		req := &timerdv1.CancelRequest{Namespace: ns, Ids: ids}
		if len(idx) != len(ids) {
			req.Ids = make([]string, len(idx))
			for j, i := range idx {
				req.Ids[j] = ids[i]
			}
		}
		resp, err := k.timers.Cancel(ctx, req)
		return resp.GetResults(), err
	})
	return res, err
}

// Get returns the timer id of namespace (empty: the client's), asking the
// node that owns it. A timer that does not exist gives an error wrapping
// ErrNotFound whose gRPC status (status.FromError) is the server's
// NOT_FOUND. It is retried.
func (c *Client) Get(ctx context.Context, namespace, id string) (TimerInfo, error) {
	ns := c.ns(namespace)
	var resp *timerdv1.GetResponse
	err := c.do(ctx, opGet, ns, id, &[2]string{ns, id}, func(ctx context.Context, k *conn) (err error) {
		resp, err = k.timers.Get(ctx, &timerdv1.GetRequest{Namespace: ns, Id: id})
		return err
	})
	if err != nil {
		return TimerInfo{}, err
	}
	if resp.GetTimer() == nil {
		return TimerInfo{}, &Error{Op: opGet, Namespace: ns, ID: id, Code: codes.Internal, Message: "answer without a timer", kind: ErrInternal}
	}
	return timerInfo(resp.GetTimer()), nil
}

// do runs one unary RPC with the client's retries, on the node that owns
// the timer key names (namespace and id), or on the home node when key is
// nil. Each attempt asks the current view where to go; an UNAVAILABLE
// answer makes the next attempt wait for a fresh shard map.
func (c *Client) do(ctx context.Context, op, ns, id string, key *[2]string, call func(context.Context, *conn) error) error {
	if c.closed.Load() {
		return closedErr(op)
	}
	c.topo.awaitFirst(ctx)
	for attempt := 1; ; attempt++ {
		k := c.topo.pick(key)
		if k == nil {
			return closedErr(op)
		}
		err := call(ctx, k)
		k.release()
		if err == nil {
			return nil
		}
		var refreshed <-chan struct{}
		if status.Code(err) == codes.Unavailable {
			refreshed = c.topo.refresh()
		}
		if attempt >= c.cfg.retry.MaxAttempts || !c.retryableRPC(ctx, err) {
			return c.rpcError(ctx, op, ns, id, err)
		}
		d := c.cfg.retry.backoff(attempt)
		c.cfg.logger.LogAttrs(ctx, slog.LevelDebug, "timerd call failed; retrying",
			slog.String("op", op), slog.String("node", k.addr), slog.Int("attempt", attempt), slog.Duration("backoff", d), slog.Any("err", err))
		if !sleep(ctx, d) || !c.topo.await(ctx, refreshed) {
			return c.rpcError(ctx, op, ns, id, err)
		}
	}
}

// runBatch sends the items of res listed in idx (ascending indexes) to
// the nodes that own them: item i is the timer nsOf(i)/res[i].ID, and the
// items of each node go in one call, the calls to different nodes
// concurrently. call sends the items idx to the node k and must return
// one ItemResult per index, in order. With retry, the items of a call
// that failed transiently as a whole and the items whose own code is
// transient are sent again, within the retry policy, wherever the
// current view then routes them: when any came back UNAVAILABLE, a view
// made from a fresh shard map. It fills res and returns the error of a
// call that failed as a whole, whose items hold it too; nil when no call
// did.
func (c *Client) runBatch(ctx context.Context, op string, res []Result, idx []int, retry bool,
	nsOf func(int) string, call func(context.Context, *conn, []int) ([]*timerdv1.ItemResult, error)) error {
	closed := func(idx []int) error {
		err := closedErr(op)
		for _, i := range idx {
			res[i].Err = err
		}
		return err
	}
	if c.closed.Load() {
		return closed(idx)
	}
	maxAttempts := 1
	if retry {
		maxAttempts = c.cfg.retry.MaxAttempts
	}
	c.topo.awaitFirst(ctx)
	key := func(i int) (string, string) { return nsOf(i), res[i].ID }
	// lost are the calls of an attempt that failed as a whole and whose
	// items are sent again.
	type lost struct {
		err error
		idx []int
	}
	var failed error
	for attempt := 1; ; attempt++ {
		parts := c.topo.split(idx, key)
		if parts == nil {
			return closed(idx)
		}
		for _, i := range idx {
			res[i].Attempts++
		}
		items := make([][]*timerdv1.ItemResult, len(parts))
		errs := make([]error, len(parts))
		send := func(p int) {
			items[p], errs[p] = call(ctx, parts[p].k, parts[p].idx)
			parts[p].k.release()
		}
		if len(parts) == 1 {
			send(0)
		} else {
			var wg sync.WaitGroup
			for p := range parts {
				wg.Go(func() { send(p) })
			}
			wg.Wait()
		}
		var (
			again  []int
			losses []lost
			moved  bool
		)
		for p, pt := range parts {
			err, final := errs[p], attempt >= maxAttempts
			if err == nil && len(items[p]) != len(pt.idx) {
				err = &Error{Op: op, Code: codes.Internal, kind: ErrInternal,
					Message: fmt.Sprintf("%s answered %d results for %d items", pt.k.addr, len(items[p]), len(pt.idx))}
				final = true // a broken answer is not retried
			}
			if err != nil {
				moved = moved || status.Code(err) == codes.Unavailable
				if !final && c.retryableRPC(ctx, err) {
					c.cfg.logger.LogAttrs(ctx, slog.LevelDebug, "timerd batch failed; retrying",
						slog.String("op", op), slog.String("node", pt.k.addr), slog.Int("items", len(pt.idx)), slog.Int("attempt", attempt), slog.Any("err", err))
					again = append(again, pt.idx...)
					losses = append(losses, lost{err, pt.idx})
					continue
				}
				err = c.rpcError(ctx, op, "", "", err)
				for _, i := range pt.idx {
					res[i].Err = err
					res[i].Due = time.Time{}
				}
				failed = err
				continue
			}
			for j, it := range items[p] {
				i := pt.idx[j]
				code := codes.Code(it.GetCode())
				if code == codes.OK {
					res[i].Err = nil
					res[i].Due = toTime(it.GetDueTime())
					continue
				}
				res[i].Due = time.Time{}
				res[i].Err = itemError(op, nsOf(i), res[i].ID, code, it.GetMessage())
				moved = moved || code == codes.Unavailable
				if !final && transient(code) {
					again = append(again, i)
				}
			}
		}
		var refreshed <-chan struct{}
		if moved {
			refreshed = c.topo.refresh() // for the retries, and for the calls to come
		}
		if len(again) == 0 {
			return failed
		}
		if len(parts) > 1 {
			slices.Sort(again) // each node's items in request order
		}
		if !sleep(ctx, c.cfg.retry.backoff(attempt)) || !c.topo.await(ctx, refreshed) {
			// The caller gave up: its context's error joins the items'.
			for _, i := range again {
				if e, ok := res[i].Err.(*Error); ok {
					e.ctxErr = ctx.Err()
				}
			}
			for _, l := range losses {
				err := c.rpcError(ctx, op, "", "", l.err)
				for _, i := range l.idx {
					res[i].Err = err
				}
				failed = err
			}
			return failed
		}
		idx = again
	}
}

// newRequestID returns a fresh request id for one logical Schedule or
// Reschedule call: 128 random bits in hex. math/rand/v2's generator is
// seeded from the operating system per process, so ids of different
// clients do not collide either.
func newRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// resolve returns the absolute due time of due or delay at now, or why
// they are invalid.
func resolve(due time.Time, delay time.Duration, now time.Time) (time.Time, string) {
	switch {
	case !due.IsZero() && delay != 0:
		return time.Time{}, "both a due time and a delay are set"
	case delay < 0:
		return time.Time{}, fmt.Sprintf("negative delay %v", delay)
	case due.IsZero():
		return now.Add(delay), ""
	}
	return due, ""
}

// specBuf holds the request messages of a batch of timers in a few
// allocations, so a batch of n timers costs O(1) allocations rather than
// O(n). Its slabs are sized once by reset and never grow, because specs
// points into them.
type specBuf struct {
	specs     []*timerdv1.TimerSpec // one per item; nil for an item not sent
	msgs      []timerdv1.TimerSpec
	whens     []timerdv1.TimerSpec_DueTime
	stamps    []timestamppb.Timestamp
	intervals []durationpb.Duration
}

// reset empties b and makes room for n timers, reusing its slabs when they
// are large enough.
func (b *specBuf) reset(n int) {
	if cap(b.msgs) < n {
		b.specs = make([]*timerdv1.TimerSpec, 0, n)
		b.msgs = make([]timerdv1.TimerSpec, 0, n)
		b.whens = make([]timerdv1.TimerSpec_DueTime, 0, n)
		b.stamps = make([]timestamppb.Timestamp, 0, n)
		b.intervals = make([]durationpb.Duration, 0, n)
		return
	}
	clear(b.specs[:cap(b.specs)])
	for i := range b.msgs { // drop references to the caller's ids and payloads
		m := &b.msgs[i]
		m.Namespace, m.Id, m.Topic, m.Payload = "", "", "", nil
	}
	b.specs = b.specs[:0]
	b.msgs, b.whens, b.stamps, b.intervals = b.msgs[:0], b.whens[:0], b.stamps[:0], b.intervals[:0]
}

// add appends the spec of t in namespace ns, due at due. The caller has
// made room for it with reset.
func (b *specBuf) add(ns string, t *Timer, due time.Time) {
	n := len(b.msgs)
	b.msgs, b.whens, b.stamps = b.msgs[:n+1], b.whens[:n+1], b.stamps[:n+1]
	st := &b.stamps[n]
	setStamp(st, due)
	w := &b.whens[n]
	w.DueTime = st
	m := &b.msgs[n]
	m.Namespace, m.Id, m.Topic, m.Payload, m.When, m.Interval = ns, t.ID, t.Topic, t.Payload, w, nil
	if t.Interval != 0 {
		k := len(b.intervals)
		b.intervals = b.intervals[:k+1]
		iv := &b.intervals[k]
		iv.Seconds, iv.Nanos = int64(t.Interval/time.Second), int32(t.Interval%time.Second)
		m.Interval = iv
	}
	b.specs = append(b.specs, m)
}

// newStamp returns t as a Timestamp.
func newStamp(t time.Time) *timestamppb.Timestamp {
	ts := new(timestamppb.Timestamp)
	setStamp(ts, t)
	return ts
}

// setStamp sets ts to t.
func setStamp(ts *timestamppb.Timestamp, t time.Time) {
	ts.Seconds, ts.Nanos = t.Unix(), int32(t.Nanosecond())
}

// toTime returns ts as a time.Time; the zero time for nil.
func toTime(ts *timestamppb.Timestamp) time.Time {
	if ts == nil {
		return time.Time{}
	}
	return ts.AsTime()
}

// toDuration returns d as a time.Duration; zero for nil.
func toDuration(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return d.AsDuration()
}

func timerInfo(t *timerdv1.Timer) TimerInfo {
	sp := t.GetSpec()
	info := TimerInfo{
		Namespace: sp.GetNamespace(),
		ID:        sp.GetId(),
		Topic:     sp.GetTopic(),
		Payload:   sp.GetPayload(),
		Interval:  toDuration(sp.GetInterval()),
		Due:       toTime(sp.GetDueTime()),
		Attempts:  t.GetAttempts(),
		Shard:     t.GetShard(),
		Created:   toTime(t.GetCreatedTime()),
	}
	switch t.GetState() {
	case timerdv1.TimerState_TIMER_STATE_PENDING:
		info.State = StatePending
	case timerdv1.TimerState_TIMER_STATE_IN_FLIGHT:
		info.State = StateInFlight
	case timerdv1.TimerState_TIMER_STATE_DEAD:
		info.State = StateDead
	}
	return info
}
