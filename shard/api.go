package shard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/timerd/timerd/store"
)

// Schedule creates timers, one Result per spec in the same order. It is
// idempotent: a spec whose id exists with the same spec succeeds (a
// retry) once the existing timer is durable; with a different spec it
// fails with ErrExists. A spec whose Req made a one-shot timer that has
// since been acked, within RetryWindow, succeeds without creating it
// again (a retry that came after the delivery). A bad spec fails only
// its own Result and touches no stored timer. Schedule returns once every created timer is durable,
// or ctx ends; it copies the payloads it keeps.
func (s *Shard) Schedule(ctx context.Context, specs []Spec) []Result {
	return s.Submit(specs).Wait(ctx)
}

// Submitted is a Schedule whose writes have been submitted; Wait waits
// until they are durable.
type Submitted struct {
	s       *Shard
	res     []Result
	commits []*store.Commit
}

// Wait returns the Results of the Schedule once every created timer is
// durable, or ctx ends (the items still waiting then fail with ctx's
// error). It is called once.
func (p *Submitted) Wait(ctx context.Context) []Result {
	if p.s == nil {
		return p.res
	}
	return p.s.wait(ctx, p.res, p.commits)
}

// Submit is Schedule without the wait: it applies specs in memory,
// submits their writes to the group commit and returns at once. A caller
// that schedules on many shards submits to all before waiting on any, so
// their writes share commit cycles. A timer that is due may fire before
// its write is durable; the caller is told it is scheduled only once it
// is, and a crash before then loses it (it may have been delivered).
func (s *Shard) Submit(specs []Spec) *Submitted {
	res := make([]Result, len(specs))
	commits := make([]*store.Commit, len(specs))
	s.mu.Lock()
	clockNow := s.clock.Now()
	if err := s.ownedLocked(clockNow); err != nil {
		s.mu.Unlock()
		return &Submitted{res: fillErr(res, err)}
	}
	if err := s.reserve(len(specs)); err != nil {
		s.mu.Unlock()
		return &Submitted{res: fillErr(res, err)}
	}
	now := clockNow.UnixMilli()
	var fresh []int // indexes of items whose writes this call makes
	for i := range specs {
		sp := &specs[i]
		if err := s.cfg.ValidateSpec(sp); err != nil {
			res[i].Err = err
			continue
		}
		due, err := s.cfg.ResolveDue(sp.Due, sp.Delay, clockNow)
		if err != nil {
			res[i].Err = err
			continue
		}
		key := store.Key(sp.Namespace, sp.ID)
		if t := s.timers.get(key); t != nil {
			if !sameSpec(s.timers, t, sp) {
				res[i].Err = fmt.Errorf("%w: namespace %q id %q", ErrExists, sp.Namespace, sp.ID)
				continue
			}
			res[i].Due = time.UnixMilli(t.rec.Due)
			if t.dirty {
				fresh = append(fresh, i) // created earlier in this batch
			} else {
				commits[i] = s.lastSub
			}
			continue
		}
		if g, ok := s.retriedLocked(key, sp.Req); ok {
			// Made, delivered and acked already. The ack's delete
			// follows the creation's in the shard's lane: once the last
			// submitted writes are durable, so is everything it answers for.
			res[i].Due = time.UnixMilli(g.due)
			commits[i] = s.lastSub
			continue
		}
		rec := store.Record{
			Namespace: sp.Namespace,
			ID:        sp.ID,
			Topic:     sp.Topic,
			Payload:   sp.Payload, // copied into the timer's blob
			Delay:     -1,
			Interval:  sp.Interval.Milliseconds(),
			Created:   now,
			Req:       sp.Req,
			ReqAt:     now,
		}
		if sp.Due.IsZero() {
			rec.Delay = delayMilli(sp.Delay)
		} else {
			rec.SpecDue = due
		}
		t := s.newTimerLocked(&rec)
		if err := s.occurLocked(t, due); err != nil {
			s.removeLocked(t)
			res[i].Err = err
			continue
		}
		delete(s.gone, key) // a new call: the timer replaces the tombstone
		res[i].Due = time.UnixMilli(due)
		fresh = append(fresh, i)
	}
	s.submitUnlock(commits, fresh, len(specs))
	return &Submitted{s: s, res: res, commits: commits}
}

// Reschedule moves timers of namespace to new due times, one Result per
// move in the same order. A pending timer moves; one in flight goes back to
// pending at the new time with no attempts, and its delivery is
// superseded (a late ack for it is ignored). Moving a pending timer to the
// due time it already has changes nothing. A move whose Req is that of
// the timer's last Schedule or Reschedule is a retry of it and changes
// nothing either, whatever happened to the timer since: it succeeds with
// the timer's due time, and, if the one-shot timer has been acked within
// RetryWindow, with the due time it was delivered at. A dead letter
// fails with ErrDead and an unknown id with ErrNotFound.
func (s *Shard) Reschedule(ctx context.Context, namespace string, moves []Move) []Result {
	res := make([]Result, len(moves))
	commits := make([]*store.Commit, len(moves))
	s.mu.Lock()
	clockNow := s.clock.Now()
	if err := s.ownedLocked(clockNow); err != nil {
		s.mu.Unlock()
		return fillErr(res, err)
	}
	if err := s.reserve(len(moves)); err != nil {
		s.mu.Unlock()
		return fillErr(res, err)
	}
	now := clockNow.UnixMilli()
	var moved []int
	for i := range moves {
		m := &moves[i]
		t, err := s.lookupLocked(namespace, m.ID)
		if err != nil {
			if g, ok := s.retriedLocked(store.Key(namespace, m.ID), m.Req); ok && errors.Is(err, ErrNotFound) {
				// Moved, delivered and acked already; see Submit.
				res[i].Due = time.UnixMilli(g.due)
				commits[i] = s.lastSub
				continue
			}
			res[i].Err = err
			continue
		}
		due, err := s.cfg.ResolveDue(m.Due, m.Delay, clockNow)
		if err != nil {
			res[i].Err = err
			continue
		}
		switch {
		case m.Req != 0 && t.rec.Req == m.Req && !t.dirty:
			// A retry of the call that last moved (or made) t. Not one
			// if t is dirty: then an earlier item of this very call set
			// Req, and this one is the next move of the same id.
			res[i].Due = time.UnixMilli(t.rec.Due)
			commits[i] = s.lastSub
			continue
		case t.rec.State == store.Dead:
			res[i].Err = fmt.Errorf("%w: namespace %q id %q: replay it instead", ErrDead, namespace, m.ID)
			continue
		case !t.inFlight && !t.waiting && t.rec.Due == due && t.rec.Next == due:
			res[i].Due = time.UnixMilli(due)
			switch {
			case m.Req != 0 && t.rec.Req != m.Req:
				// Nothing moves, but a retry that finds the timer fired
				// must still know this call was applied.
				t.rec.Req, t.rec.ReqAt = m.Req, now
				s.putLocked(t)
				moved = append(moved, i)
			case t.dirty:
				moved = append(moved, i) // moved earlier in this batch
			default:
				commits[i] = s.lastSub
			}
			continue
		}
		oldReq, oldAt := t.rec.Req, t.rec.ReqAt
		if m.Req != 0 {
			t.rec.Req, t.rec.ReqAt = m.Req, now // written by occurLocked
		}
		if err := s.occurLocked(t, due); err != nil {
			// Past the wheel's horizon, which counts from the wheel's
			// time, not the clock's: t is left as it was.
			t.rec.Req, t.rec.ReqAt = oldReq, oldAt
			res[i].Err = err
			continue
		}
		res[i].Due = time.UnixMilli(due)
		moved = append(moved, i)
	}
	return s.submitAndWait(ctx, res, commits, moved, len(moves))
}

// Cancel deletes timers of namespace whatever their state, one error per
// id in the same order: nil when deleted, ErrNotFound when there was no
// such timer.
func (s *Shard) Cancel(ctx context.Context, namespace string, ids []string) []error {
	res := make([]Result, len(ids))
	commits := make([]*store.Commit, len(ids))
	s.mu.Lock()
	if err := s.ownedLocked(s.clock.Now()); err != nil {
		s.mu.Unlock()
		return errs(fillErr(res, err))
	}
	if err := s.reserve(len(ids)); err != nil {
		s.mu.Unlock()
		return errs(fillErr(res, err))
	}
	var gone []int
	for i, id := range ids {
		t, err := s.lookupLocked(namespace, id)
		if err != nil {
			res[i].Err = err
			continue
		}
		s.deleteLocked(s.timers.key(t))
		s.removeLocked(t)
		gone = append(gone, i)
	}
	return errs(s.submitAndWait(ctx, res, commits, gone, len(ids)))
}

// Get returns a snapshot of a timer.
func (s *Shard) Get(namespace, id string) (Timer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.ownedLocked(s.clock.Now()); err != nil {
		return Timer{}, err
	}
	t, err := s.lookupLocked(namespace, id)
	if err != nil {
		return Timer{}, err
	}
	return s.snapshotLocked(t), nil
}

// Ack acknowledges deliveries: a one-shot timer is deleted, a repeating
// one re-armed for the first due time + n * interval (n >= 1) after now.
// A one-shot timer acked within RetryWindow of the request (with a Req)
// that made or moved it leaves a tombstone for the rest of the window.
// Ids of other shards, unknown ids, superseded occurrences and dead
// letters are ignored, so acks may be repeated. An ack covers every
// attempt of its occurrence, also one being waited for in backoff. The
// returned Commit (nil when nothing was written) reports when the acks
// are durable; until then a crash may deliver those timers again. A
// stopped shard applies nothing and returns its ErrNotOwner.
func (s *Shard) Ack(ids []DeliveryID) (*store.Commit, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopErr; err != nil {
		return nil, err
	}
	now := s.clock.Now().UnixMilli()
	for i := range ids {
		t := s.occurrenceLocked(&ids[i])
		if t == nil || t.rec.State == store.Dead {
			continue
		}
		if s.cfg.Events != nil {
			s.cfg.Events.Acked(s.timers.namespace(t))
		}
		if t.rec.Interval <= 0 {
			s.deleteLocked(s.timers.key(t))
			s.tombstoneLocked(t, now)
			s.removeLocked(t)
			continue
		}
		n := int64(1)
		if now >= t.rec.Due {
			n = (now-t.rec.Due)/t.rec.Interval + 1
		}
		if err := s.occurLocked(t, t.rec.Due+n*t.rec.Interval); err != nil {
			// Past the wheel's horizon (~139 years): nothing more to fire.
			s.deleteLocked(s.timers.key(t))
			s.removeLocked(t)
		}
	}
	c := s.submitLocked()
	if c != nil {
		s.kickLoop()
	}
	return c, nil
}

// Attempt names one delivery attempt: the occurrence and its attempt
// number (Delivery.Attempt).
type Attempt struct {
	ID     DeliveryID
	Number uint32
	// Unsent says the attempt never left the dispatcher: its subscriber
	// went away before sending it, or its send failed, so no consumer
	// can have seen it.
	Unsent bool
}

// Return gives back delivery attempts whose subscriber went away unacked:
// each occurrence still in flight under that very attempt goes back to
// pending and is delivered again at once, without waiting for its ack
// timeout or a backoff. An attempt that was sent counts (it is written
// down) and one that was the last allowed makes a dead letter, so a
// payload that crashes its consumers cannot loop for ever. An Unsent one
// does not count: the timer is as it was before it was dispatched, with
// the attempts it had, so streams that come and go without sending
// cannot make a dead letter of a timer no one saw. Other attempts are
// ignored: an attempt that timed out already and was redelivered
// elsewhere is not this subscriber's to give back.
func (s *Shard) Return(attempts []Attempt) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopErr != nil {
		return
	}
	now := s.clock.Now().UnixMilli()
	unsent := false
	for i := range attempts {
		a := &attempts[i]
		t := s.occurrenceLocked(&a.ID)
		if t == nil || !t.inFlight || t.attempts != a.Number {
			continue
		}
		if !a.Unsent {
			s.timeoutLocked(t, now, 0)
			continue
		}
		// Dispatching wrote nothing, so the record still says what the
		// timer was before: pending at rec.Next (passed, so it fires at
		// once) with the attempts before this one.
		s.landLocked(t)
		t.attempts, t.sent = t.rec.Attempts, t.rec.LastAttempt
		_ = s.armLocked(t, t.rec.Next) // it was armed there before it fired
		unsent = true
	}
	if s.submitLocked() != nil || unsent {
		s.kickLoop()
	}
}

// Ready tells the shard that a subscriber of namespace and topic can take
// deliveries (it connected, or has credit again). Timers of the topic that
// came due while none could take them are then dispatched in order. It
// does not block.
func (s *Shard) Ready(namespace, topic string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	tk := topicKey{namespace, topic}
	if s.waiting[tk] == nil {
		return
	}
	s.ready[tk] = struct{}{}
	s.kickLoop()
}

// DeadLetters returns up to limit dead letters of namespace (and of topic,
// when not empty) with ids greater than after, in id order, and whether
// there are more. A limit below 1 is taken as 1. A stopped shard returns
// its ErrNotOwner. A page costs O(log n + limit) for n dead letters, and
// holds the shard's mutex only to check that the shard runs, not while it
// is read: firing goes on meanwhile.
func (s *Shard) DeadLetters(namespace, topic, after string, limit int) ([]Timer, bool, error) {
	if err := s.Err(); err != nil {
		return nil, false, err
	}
	limit = max(limit, 1)
	s.deadMu.Lock()
	defer s.deadMu.Unlock()
	set := s.deadIdx.set(namespace, topic)
	if set == nil {
		return []Timer{}, false, nil
	}
	hits := set.appendAfter(make([]*timer, 0, min(limit, set.len)+1), after, limit+1)
	more := len(hits) > limit
	if more {
		hits = hits[:limit]
	}
	out := make([]Timer, len(hits))
	for i, t := range hits {
		// Under deadMu, t is in deadIdx: its snapshot fields hold still.
		out[i] = s.snapshotLocked(t)
	}
	return out, more, nil
}

// Replay makes dead letters of namespace pending again with no attempts,
// due at due (or delay from now when due is zero), each with a new
// delivery id. With ids it returns one Result per id in the same order:
// ErrNotFound for an unknown id or one whose topic differs from a
// non-empty topic, ErrNotDead for a timer that is not a dead letter. With
// no ids it replays every dead letter of namespace (and topic), in pages
// of at most replayPage, each durable before the next is made. It returns
// how many were replayed (durably), and an error when the call failed as
// a whole (a bad due time, a stopped shard, a full group commit or, with
// no ids, a page whose writes did not become durable: the pages before it
// stay replayed, or a due time the wheel could not hold for some); with
// ids, that error is also in every Result. A dead letter that cannot be
// armed stays one.
func (s *Shard) Replay(ctx context.Context, namespace string, ids []string, topic string, due time.Time, delay time.Duration) ([]Result, int, error) {
	s.mu.Lock()
	now := s.clock.Now()
	if err := s.ownedLocked(now); err != nil {
		s.mu.Unlock()
		return fillErr(make([]Result, len(ids)), err), 0, err
	}
	at, err := s.cfg.ResolveDue(due, delay, now)
	if err != nil {
		s.mu.Unlock()
		return fillErr(make([]Result, len(ids)), err), 0, err
	}
	if len(ids) == 0 {
		n, err := s.replayAllUnlock(ctx, namespace, topic, at)
		return []Result{}, n, err
	}
	if err := s.reserve(len(ids)); err != nil {
		s.mu.Unlock()
		return fillErr(make([]Result, len(ids)), err), 0, err
	}
	res := make([]Result, len(ids))
	commits := make([]*store.Commit, len(ids))
	var targets []*timer
	var replayed []int
	for i, id := range ids {
		t, err := s.lookupLocked(namespace, id)
		switch {
		case err != nil:
			res[i].Err = err
		case topic != "" && s.timers.topic(t) != topic:
			res[i].Err = fmt.Errorf("%w: namespace %q id %q has another topic", ErrNotFound, namespace, id)
		case t.rec.State != store.Dead:
			res[i].Err = fmt.Errorf("%w: namespace %q id %q is %v", ErrNotDead, namespace, id, t.state())
		default:
			targets = append(targets, t)
			replayed = append(replayed, i)
			res[i].Due = time.UnixMilli(at)
		}
	}
	// ResolveDue checked at against the clock, but the wheel's horizon
	// counts from where the wheel is: one left far behind the clock (a
	// shard that could not fire while the clock jumped) refuses it. A
	// timer it refuses stays a dead letter.
	for j, t := range targets {
		if err := s.occurLocked(t, at); err != nil {
			res[replayed[j]] = Result{Err: err}
		}
	}
	res = s.submitAndWait(ctx, res, commits, replayed, len(ids))
	n := 0
	for _, i := range replayed {
		if res[i].Err == nil {
			n++
		}
	}
	return res, n, nil
}

// replayPage bounds the dead letters one page of a Replay of a whole
// namespace makes pending. Each page is its own submission, durable before
// the next is made, so the call holds the shard's lock, its share of the
// group commit's queue and its lane for a bounded time however many dead
// letters there are.
const replayPage = 1000

// replayAllUnlock is Replay with no ids: it replays the dead letters of
// namespace (and topic) due at at, a page at a time, and returns how many
// it made durably pending. It is called with s.mu held and returns with it
// released.
func (s *Shard) replayAllUnlock(ctx context.Context, namespace, topic string, at int64) (int, error) {
	var keys []string
	if set := s.deadIdx.set(namespace, topic); set != nil {
		keys = make([]string, 0, set.len)
		for _, t := range set.appendAfter(make([]*timer, 0, set.len), "", set.len) {
			keys = append(keys, s.timers.key(t))
		}
	}
	s.mu.Unlock()
	n := 0
	var armErr error // the last refusal of the wheel, if any
	for len(keys) > 0 {
		page := keys[:min(len(keys), replayPage)]
		keys = keys[len(page):]
		s.mu.Lock()
		if err := s.stopErr; err != nil {
			s.mu.Unlock()
			return n, err
		}
		if err := s.reserve(len(page)); err != nil {
			s.mu.Unlock()
			return n, err
		}
		made := 0
		for _, key := range page {
			// Cancelled, replayed or rescheduled since the keys were
			// listed: no longer this call's.
			if t := s.timers.get(key); t != nil && t.rec.State == store.Dead && (topic == "" || s.timers.topic(t) == topic) {
				// ResolveDue checked at against the clock, but the
				// wheel's horizon counts from where the wheel is: a
				// timer it refuses stays a dead letter.
				if err := s.occurLocked(t, at); err != nil {
					armErr = err
					continue
				}
				made++
			}
		}
		c := s.submitLocked()
		s.com.Unreserve(s.id, len(page))
		s.mu.Unlock()
		if c == nil {
			continue
		}
		s.kickLoop()
		if err := s.waitOne(ctx, c); err != nil {
			return n, err
		}
		n += made
	}
	return n, armErr
}

// lookupLocked finds a timer, checking the namespace and id first.
func (s *Shard) lookupLocked(namespace, id string) (*timer, error) {
	if err := ValidNamespace(namespace); err != nil {
		return nil, fmt.Errorf("namespace: %w", err)
	}
	if err := ValidID(id); err != nil {
		return nil, fmt.Errorf("id: %w", err)
	}
	t := s.timers.get(store.Key(namespace, id))
	if t == nil {
		return nil, fmt.Errorf("%w: namespace %q id %q", ErrNotFound, namespace, id)
	}
	return t, nil
}

// occurrenceLocked finds the timer whose current occurrence id names.
func (s *Shard) occurrenceLocked(id *DeliveryID) *timer {
	if id.Shard != s.id {
		return nil
	}
	t := s.timers.get(store.Key(id.Namespace, id.TimerID))
	if t == nil || t.rec.OccEpoch != id.OccEpoch || t.rec.OccSeq != id.OccSeq {
		return nil
	}
	return t
}

func (s *Shard) snapshotLocked(t *timer) Timer {
	tm := Timer{
		Spec: Spec{
			Namespace: s.timers.namespace(t),
			ID:        s.timers.id(t),
			Topic:     s.timers.topic(t),
			Due:       time.UnixMilli(t.rec.Due),
			Payload:   s.timers.payload(t),
			Interval:  time.Duration(t.rec.Interval) * time.Millisecond,
		},
		State:    t.state(),
		Attempts: t.attempts,
		Shard:    s.id,
		Created:  time.UnixMilli(t.rec.Created),
		Reason:   s.timers.reason(t),
	}
	if t.rec.Delay >= 0 {
		tm.Delay = time.Duration(t.rec.Delay) * time.Millisecond
	}
	if t.sent != 0 {
		tm.LastAttempt = time.UnixMilli(t.sent)
	}
	return tm
}

// submitAndWait is the end of every batch call: it submits the writes the
// call made under mu, releases mu, wakes the loop if anything was written,
// and waits until each item's writes are durable. written lists the items
// whose writes were just made; commits already holds, for the others, the
// Commit of an earlier write they depend on (an idempotent retry);
// reserved is the room the call reserved (see reserve), given back once
// its writes are submitted. It is called with s.mu held and returns with
// it released.
func (s *Shard) submitAndWait(ctx context.Context, res []Result, commits []*store.Commit, written []int, reserved int) []Result {
	s.submitUnlock(commits, written, reserved)
	return s.wait(ctx, res, commits)
}

// submitUnlock is submitAndWait without the wait.
func (s *Shard) submitUnlock(commits []*store.Commit, written []int, reserved int) {
	c := s.submitLocked()
	s.com.Unreserve(s.id, reserved)
	for _, i := range written {
		commits[i] = c
	}
	s.mu.Unlock()
	if c != nil {
		s.kickLoop()
	}
}

// wait waits for each item's Commit and records failures in its Result.
func (s *Shard) wait(ctx context.Context, res []Result, commits []*store.Commit) []Result {
	var last *store.Commit
	var lastErr error
	for i, c := range commits {
		if c == nil || res[i].Err != nil {
			continue
		}
		if c != last {
			last, lastErr = c, s.waitOne(ctx, c)
		}
		if lastErr != nil {
			res[i] = Result{Err: lastErr}
		}
	}
	return res
}

// reserve claims room in the group commit for the n writes a call may
// make, before the call changes anything, so that a call refused because
// the commit's queue is full (the store slow or unreachable) fails whole
// and leaves the shard as it was. The error wraps store.ErrOverloaded.
// submitUnlock gives the room back. Callers hold s.mu, so that the room
// is the shard's while it applies the call.
func (s *Shard) reserve(n int) error {
	if err := s.com.Reserve(s.id, n); err != nil {
		return fmt.Errorf("shard %d: %w", s.id, err)
	}
	return nil
}

// waitOne waits for c. A commit that failed (fenced, given up, or cut
// short by the committer's Close) stops the shard: its memory already
// holds the writes the store may not have, so it must not serve on; the
// next owner (this node's supervisor, reopening it) loads what the store
// has. An error of the store's outage wraps store.ErrUnavailable.
func (s *Shard) waitOne(ctx context.Context, c *store.Commit) error {
	if err := c.Wait(ctx); err != nil {
		select {
		case <-c.Done():
		default:
			return err // ctx ended first: the outcome is still to come
		}
	}
	err := c.Err()
	if err == nil {
		return nil
	}
	s.mu.Lock()
	s.loseLocked(err)
	s.mu.Unlock()
	switch {
	case errors.Is(err, store.ErrFenced):
		return fmt.Errorf("shard %d: %w", s.id, ErrFenced)
	case errors.Is(err, store.ErrClosed):
		return fmt.Errorf("%w: shard %d: %w", ErrNotOwner, s.id, err)
	}
	return fmt.Errorf("shard %d: writes not durable; the shard stopped to reload: %w", s.id, err)
}

func fillErr(res []Result, err error) []Result {
	for i := range res {
		res[i].Err = err
	}
	return res
}

func errs(res []Result) []error {
	out := make([]error, len(res))
	for i := range res {
		out[i] = res[i].Err
	}
	return out
}
