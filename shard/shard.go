// Package shard owns one shard of timers while this node holds its lease:
// the timing wheel that says what is due, the timers' records and their
// durable copies in a store, and the delivery state machine (pending, in
// flight, redelivery with backoff, dead letters).
//
// A Shard is opened by acquiring its lease and loading its records, fires
// from one goroutine that sleeps until the next due time, and is closed by
// flushing its writes and releasing the lease. It knows no gRPC and no
// generated proto types: the server translates, implements the Dispatcher
// over subscriber streams and maps the package's errors to status codes.
//
// # Guarantees
//
//   - Durable: a call that returns success has its writes in the store
//     under the shard's epoch (through the node's group commit).
//   - Never early: a timer is dispatched only once the shard's clock has
//     reached its due time (rounded up to the millisecond).
//   - At least once: a delivery that is not acknowledged is redelivered
//     after a backoff, until MaxAttempts make it a dead letter. An
//     attempt in flight is not written to the store; a new owner after a
//     crash finds the timer pending with its due time passed and delivers
//     it again.
//   - Fenced: every write names the shard's Grant (epoch and lease token);
//     once a newer owner has acquired the shard, writes fail with ErrFenced
//     and the shard stops. The shard stops firing, and answers no call,
//     before its lease can have lapsed if it cannot renew it: an answer
//     from memory alone (not found, a retry found done, a Get) writes
//     nothing a fence could refuse.
//   - Never ahead of the store for long: a write that fails definitively
//     (fenced, or given up by the group commit while the store is down)
//     stops the shard, whose memory already holds it; the next owner, or
//     this node's supervisor reopening it, loads what the store has. A
//     call refused because the group commit's queue is full (wrapping
//     store.ErrOverloaded) changes nothing.
//
// # Invariants
//
// Under Shard.mu:
//   - every timer is in timers, found by its key (see table);
//   - a Pending or InFlight timer that is not waiting for a subscriber is
//     armed in the wheel exactly once: at rec.Next while pending, at its
//     ack deadline while in flight; a waiting or Dead timer is not armed;
//   - a timer is waiting for a subscriber if and only if the entry of its
//     current visit is in its topic's queue in waiting; a queue counts
//     those entries (live), holds no more stale ones than live ones, and
//     is dropped once none is live, so the queues hold at most twice the
//     waiting timers;
//   - a timer is in deadIdx if and only if it is Dead;
//   - a key is in timers or in gone, never in both; every key in gone has
//     an entry in goneQ with the same until.
//
// DeadLetters reads deadIdx under deadMu alone, so a page of dead letters
// does not hold up firing. That is safe because a timer's snapshot fields
// are not written while it is in deadIdx: they are set before it goes in
// (buryLocked, loadLocked) and changed only after it has come out
// (occurLocked, removeLocked).
package shard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/timerd/timerd/store"
	"github.com/timerd/timerd/wheel"
)

var (
	// ErrInvalidNamespace, ErrInvalidID, ErrInvalidTopic,
	// ErrInvalidPayload, ErrInvalidDue and ErrInvalidInterval report a bad
	// field of a request; the message names it.
	ErrInvalidNamespace = errors.New("invalid namespace")
	ErrInvalidID        = errors.New("invalid id")
	ErrInvalidTopic     = errors.New("invalid topic")
	ErrInvalidPayload   = errors.New("invalid payload")
	ErrInvalidDue       = errors.New("invalid due time")
	ErrInvalidInterval  = errors.New("invalid interval")
	// ErrInvalidDeliveryID reports an ack for an id no shard made.
	ErrInvalidDeliveryID = errors.New("invalid delivery id")
	// ErrExists reports a Schedule of an existing id with another spec.
	ErrExists = errors.New("timer exists with a different spec")
	// ErrNotFound reports an id the shard does not have.
	ErrNotFound = errors.New("timer not found")
	// ErrDead reports a Reschedule of a dead letter (replay it instead).
	ErrDead = errors.New("timer is a dead letter")
	// ErrNotDead reports a Replay of a timer that is not a dead letter.
	ErrNotDead = errors.New("timer is not a dead letter")
	// ErrFenced reports that a newer owner holds the shard: the write was
	// refused and the shard has stopped. It wraps store.ErrFenced.
	ErrFenced = fmt.Errorf("shard fenced by a newer owner: %w", store.ErrFenced)
	// ErrNotOwner reports a call to a shard that has stopped: closed,
	// fenced, or unable to renew its lease.
	ErrNotOwner = errors.New("shard not owned by this node")
	// ErrInvalidConfig is wrapped by Config.Validate errors.
	ErrInvalidConfig = errors.New("shard: invalid config")
)

// Shard is one shard of timers owned by this node. Its methods may be
// called concurrently.
type Shard struct {
	cfg Config
	id  uint32
	// grant is the lease acquired by Open; every store call names it.
	grant store.Grant
	st    store.Store
	com   *store.Committer
	disp  Dispatcher
	clock Clock
	log   *slog.Logger

	kick     chan struct{} // cap 1: wake the loop early
	stop     chan struct{} // closed to stop the goroutines
	loopDone chan struct{}
	keepDone chan struct{}
	closeMu  sync.Mutex // serializes halt
	closed   bool       // guarded by closeMu: halt has run

	mu sync.Mutex
	// Invariants: see the package doc.
	wheel  *wheel.Wheel
	timers *table
	// waiting holds, per topic, due timers no subscriber could take, in
	// the order they came due. A timer cancelled or moved while it waits
	// leaves a stale entry behind, which draining skips and compaction
	// drops (see waitQueue).
	waiting map[topicKey]*waitQueue
	ready   map[topicKey]struct{} // topics Ready was called for
	// gone holds the tombstones of one-shot timers acked within
	// RetryWindow of the request that made them, by key, so that a retry
	// of that request is answered instead of applied again; goneQ lists
	// them in the order they may be forgotten (the order they were acked
	// in, since every tombstone lives for the same window). Tombstones
	// live in memory only: a new owner starts without them (see Ack).
	gone  map[string]goneMark
	goneQ []goneEntry
	// seq numbers the occurrences created under epoch.
	seq uint64
	// validUntil is when the lease may be about to lapse: nothing is
	// dispatched, and no call answered, at or after it. It comes from Clock.Now, so with the
	// system clock it carries a monotonic reading and a step of the wall
	// clock does not stretch it.
	validUntil time.Time
	// backlog holds due timers taken from the wheel but not yet handled,
	// served round-robin across namespaces (see fairQueue): it holds at
	// most maxBacklog, the rest staying due in the wheel, and a step
	// handles at most maxStepFires, so that a burst does not hold mu for
	// seconds, and a herd of one namespace does not hold up the others.
	// Entries whose timer is no longer queued (it was re-armed or removed
	// meanwhile) are skipped.
	// Invariant: backlog.len() <= maxBacklog.
	backlog fairQueue
	// perNS counts the timers of each namespace (dead letters included);
	// counted says they are reported to Config.Census (see census.go).
	perNS   map[string]int
	counted bool
	// stopErr is why the shard stopped; nil while running.
	stopErr  error
	inFlight int
	fired    []wheel.Timer // reused by step
	ids      idArena       // makes the ids of deliveries
	ops      []store.Op    // writes not yet submitted
	touched  []*timer      // timers whose writes are in ops
	// lastSub is the last submitted writes. The group commit makes a
	// shard's writes durable in the order they were submitted, so once
	// lastSub is, every write before it is: a call that depends on an
	// earlier write (a retry answered from memory) waits for lastSub,
	// and timers do not each keep the Commit of their last write.
	lastSub *store.Commit
	// steps counts the loop's steps; stepped is broadcast after each, so
	// settle can wait for a step that began after it was called.
	steps   uint64
	stepped sync.Cond

	// deadMu is taken under mu to change deadIdx; either of the two is
	// enough to read it.
	deadMu sync.Mutex
	// deadIdx orders the dead letters, for DeadLetters, Replay and
	// Stats. Invariant: it holds exactly the Dead timers (see the
	// package doc).
	deadIdx deadIndex
}

type topicKey struct{ namespace, topic string }

// goneMark is what a tombstone remembers of an acked timer.
type goneMark struct {
	req   uint64 // Record.Req of the timer
	due   int64  // due time of the acked occurrence, unix ms
	until int64  // when the tombstone may be forgotten, unix ms
}

// goneEntry is a tombstone in the order of forgetting.
type goneEntry struct {
	key   string
	until int64 // unix ms; the entry is stale unless gone[key].until matches
}

// waitQueue is one topic's due timers that no subscriber could take, in
// the order they came due: entries[head:]. A drain takes from the front
// by moving head, not the entries behind it, so draining a herd's queue
// a few timers at a time costs O(1) per timer, not the queue's length.
type waitQueue struct {
	entries []waitEntry
	// head is where the queue begins: entries before it went out.
	// Invariant: head <= len(entries)-head: once the drained prefix
	// outgrows the queue, the queue moves to the front, which costs
	// less than the drains that made the prefix.
	head int
	// live counts the entries whose timer still waits there.
	// Invariant: len(entries)-head-live <= live, and live > 0: a queue
	// is compacted once its stale entries outnumber the live ones, which
	// costs O(1) amortized per stale entry, and dropped once empty.
	live int
}

// waitEntry is one visit of a timer to a queue: its topic's in waiting,
// or the backlog. It names the timer's slot rather than point at it, so
// the queues of a herd hold nothing for the garbage collector to follow.
type waitEntry struct {
	slot  uint32 // the timer's slot in Shard.timers
	visit uint32 // the timer's visit when it was queued
}

// live returns e's timer if it still waits at e in its topic's queue: it
// has not been dispatched, cancelled or moved since, nor come back for a
// later visit, nor left its slot to another timer.
func (e waitEntry) live(tb *table) (*timer, bool) {
	t := tb.at(e.slot)
	return t, t.waiting && t.visit == e.visit
}

// due returns e's timer if it is still in the backlog at e: it has not
// been re-armed or removed since it came due.
func (e waitEntry) due(tb *table) (*timer, bool) {
	t := tb.at(e.slot)
	return t, t.queued && t.visit == e.visit
}

// timer is a timer in memory, in its slot of the shard's table. Nothing
// in it is a pointer (see table).
type timer struct {
	rec record
	// The timer's blob, its strings and payload (see table.setBlob),
	// is blobLen bytes at off in the table's byte chunk number chunk.
	// It is not written again: a new reason makes a new blob.
	chunk, off, blobLen uint32
	// nsLen, keyLen, topicEnd and payloadEnd are the ends, in the blob,
	// of the namespace, the key, the topic and the payload.
	nsLen, keyLen, topicEnd, payloadEnd uint32
	slot                                uint32 // in Shard.timers
	hnext                               uint32 // next slot in the key's index chain, or noSlot
	// nsName and topicName number the interned namespace and topic in
	// the table's names, or are noSlot (see table).
	nsName, topicName uint32
	// handle is the timer's wheel entry; valid when armed.
	handle wheel.Handle
	armed  bool
	// inFlight: delivered, waiting for an ack until its wheel entry
	// fires at the ack deadline.
	inFlight bool
	// waiting: due, queued in Shard.waiting for a subscriber.
	waiting bool
	// queued: due, taken from the wheel and in Shard.backlog.
	queued bool
	// dirty: written by the call in progress, not yet submitted.
	dirty bool
	// attempts counts attempts of the occurrence sent so far, including
	// one in flight; rec.Attempts is what is stored.
	// Invariant: while in flight, rec.Attempts == attempts-1 and
	// rec.LastAttempt is the attempt before's (firing writes nothing).
	attempts uint32
	// visit counts the visits of the timer's slot to a queue (the
	// backlog or its topic's queue), so that a stale entry from an
	// earlier visit, or of an earlier timer of the slot, is told from the
	// current one. Invariant: it only grows (see table).
	visit uint32
	sent  int64 // unix ms of the last attempt
}

func (t *timer) state() State {
	switch {
	case t.rec.State == store.Dead:
		return Dead
	case t.inFlight:
		return InFlight
	}
	return Pending
}

// Open acquires the shard's lease, loads its records from the store and
// starts firing what is due, including what was in flight at the previous
// owner. It fails with store.ErrLeaseHeld while another owner holds the
// lease.
func Open(ctx context.Context, cfg Config) (*Shard, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.ClockDrift == 0 {
		cfg.ClockDrift = ClockDriftFor(cfg.LeaseTTL)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	start := cfg.Clock.Now()
	grant, err := cfg.Store.Acquire(ctx, cfg.ID, cfg.Owner, cfg.LeaseTTL)
	if err != nil {
		return nil, fmt.Errorf("shard %d: acquire: %w", cfg.ID, err)
	}
	w, err := wheel.New(wheel.Config{Tick: cfg.Tick, Start: start.UnixMilli()})
	if err != nil {
		return nil, fmt.Errorf("shard %d: %w", cfg.ID, err)
	}
	s := &Shard{
		cfg:        cfg,
		id:         cfg.ID,
		grant:      grant,
		st:         cfg.Store,
		com:        cfg.Committer,
		disp:       cfg.Dispatcher,
		clock:      cfg.Clock,
		log:        cfg.Logger.With("shard", cfg.ID, "epoch", grant.Epoch),
		kick:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		loopDone:   make(chan struct{}),
		keepDone:   make(chan struct{}),
		wheel:      w,
		gone:       make(map[string]goneMark),
		waiting:    make(map[topicKey]*waitQueue),
		ready:      make(map[topicKey]struct{}),
		perNS:      make(map[string]int),
		validUntil: start.Add(cfg.LeaseTTL - cfg.ClockDrift),
	}
	s.stepped.L = &s.mu
	s.timers = newTable(&s.deadMu)
	// The keeper runs from the start: the lease counts from Acquire, and
	// loading a big shard can take a good part of its TTL.
	go s.keepLease(s.clock.NewAlarm(cfg.LeaseTTL / 3))
	began := time.Now()
	err = cfg.Store.Load(ctx, cfg.ID, grant, func(page []store.Record) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for i := range page {
			s.loadLocked(&page[i])
		}
		return nil
	})
	if err == nil {
		err = s.Err() // the keeper lost the lease during the load
	}
	if err != nil {
		close(s.stop)
		<-s.keepDone
		s.releaseLease()
		return nil, fmt.Errorf("shard %d: load: %w", cfg.ID, err)
	}
	s.log.Debug("shard loaded", "timers", s.timers.len(), "dead", s.deadIdx.len(), "took", time.Since(began))
	s.mu.Lock()
	s.startCountingLocked()
	until := s.validUntil
	s.mu.Unlock()
	// This line and the loop's "shard stopped firing" bound, in the log,
	// when this process may dispatch the shard under this epoch: from
	// here until the earlier of the stop and the lease's validity then.
	s.log.Debug("shard firing", "owner", cfg.Owner, "valid_until", until)
	go s.run(s.clock.NewAlarm(idleWait))
	return s, nil
}

func (s *Shard) loadLocked(rec *store.Record) {
	if old := s.timers.get(store.Key(rec.Namespace, rec.ID)); old != nil {
		s.removeLocked(old) // a scan may repeat a key
	}
	t := s.newTimerLocked(rec)
	t.attempts = rec.Attempts
	t.sent = rec.LastAttempt
	if rec.State == store.Dead {
		s.addDeadLocked(t)
		return
	}
	if err := s.armLocked(t, rec.Next); err != nil {
		// Only a clock that jumped back decades could put a stored due
		// time past the wheel's horizon. Keep the timer as a dead letter
		// (listed, replayable, cancellable) rather than refuse the whole
		// shard or keep it pending with nothing to fire it.
		s.log.Error("stored timer not armed", "namespace", rec.Namespace, "id", rec.ID, "next", rec.Next, "err", err)
		s.buryLocked(t, fmt.Sprintf("stored due time not armed: %v", err))
	}
}

// ID returns the shard's number.
func (s *Shard) ID() uint32 { return s.id }

// Epoch returns the epoch the shard was acquired under.
func (s *Shard) Epoch() uint64 { return s.grant.Epoch }

// Grant returns the lease the shard was acquired under.
func (s *Shard) Grant() store.Grant { return s.grant }

// Done is closed when the shard has stopped, by Close or because it lost
// its lease; Err then says why.
func (s *Shard) Done() <-chan struct{} { return s.loopDone }

// Err returns why the shard stopped: nil while running, ErrNotOwner
// wrapping the cause once stopped.
func (s *Shard) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopErr
}

// Stats is a snapshot of the shard's timers.
type Stats struct {
	Timers   int // all timers, dead ones included
	InFlight int
	Dead     int
}

// Stats returns counts of the shard's timers.
func (s *Shard) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Timers: s.timers.len(), InFlight: s.inFlight, Dead: s.deadIdx.len()}
}

// Close stops firing, waits until the shard's writes are durable and
// releases the lease, so the next owner can acquire the shard at once.
// Deliveries in flight are not waited for: the next owner delivers them
// again. Close is safe to call twice; it returns the error that stopped
// the shard, if it stopped for another reason first.
func (s *Shard) Close(ctx context.Context) error {
	last, ok, prior := s.halt("closed")
	if !ok {
		return nil
	}
	if prior != nil {
		return prior
	}
	var err error
	if last != nil {
		if werr := last.Wait(ctx); werr != nil {
			err = fmt.Errorf("shard %d: flush: %w", s.id, werr)
		}
	}
	s.releaseLease()
	return err
}

// crash stops the shard's goroutines without flushing or releasing the
// lease, as a process that died would.
func (s *Shard) crash() { s.halt("crashed") }

// Abandon stops the shard as a crash of its process would: it stops
// firing and taking calls, and neither waits for its writes in the group
// commit nor releases its lease, which the next owner waits out. It is
// for fault injection (a node's tests kill it in-process); a node that
// hands a shard over calls Close. Abandon and Close may each be called
// after the other; the second does nothing.
func (s *Shard) Abandon() { s.crash() }

// halt stops the shard's goroutines, once: ok is false if it had already
// been halted. Unless the shard had stopped already (prior says why), it
// records that it stopped because it was closed or crashed (why). last is
// the shard's last submitted writes.
func (s *Shard) halt(why string) (last *store.Commit, ok bool, prior error) {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil, false, nil
	}
	s.closed = true
	s.mu.Lock()
	prior, last = s.stopErr, s.lastSub
	if prior == nil {
		s.stopErr = fmt.Errorf("%w: shard %d %s", ErrNotOwner, s.id, why)
	}
	s.stopCountingLocked() // its next owner counts its timers
	s.mu.Unlock()
	close(s.stop)
	<-s.loopDone
	<-s.keepDone
	return last, true, prior
}

func (s *Shard) releaseLease() {
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.OpTimeout)
	defer cancel()
	if err := s.st.Release(ctx, s.id, s.grant); err != nil {
		s.log.Warn("lease release failed; it will lapse", "err", err)
	}
}

// ownedLocked returns why the shard may not answer a call now: the error
// that stopped it, or ErrNotOwner while its lease may have lapsed (its
// keeper has not confirmed the lease for LeaseTTL less ClockDrift: the
// process was paused, or the store is out of reach), until the keeper
// renews it or finds it lost. A write the shard would make then is
// fenced if another owner has the shard, but an answer from memory alone
// is not: a retry found done, an id not found, a Get. Answered by an
// owner that lost the shard while it was paused, those would tell the
// caller what it last knew, not what is; a Cancel told "not found" for a
// timer its new owner holds would leave it to fire. So every call waits
// for the lease, as firing does.
func (s *Shard) ownedLocked(now time.Time) error {
	if s.stopErr != nil {
		return s.stopErr
	}
	if !now.Before(s.validUntil) {
		return fmt.Errorf("%w: shard %d: its lease may have lapsed (confirmed until %v, now %v)",
			ErrNotOwner, s.id, s.validUntil.Format(time.RFC3339Nano), now.Format(time.RFC3339Nano))
	}
	return nil
}

// loseLocked stops the shard because it no longer owns it.
func (s *Shard) loseLocked(cause error) {
	if s.stopErr != nil {
		return
	}
	s.stopErr = fmt.Errorf("%w: shard %d: %w", ErrNotOwner, s.id, cause)
	s.log.Error("shard lost", "err", cause)
	s.kickLoop()
}

func (s *Shard) kickLoop() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// run is the shard's firing loop: it sleeps until the next due time (or a
// kick), then fires what is due.
func (s *Shard) run(t Alarm) {
	defer close(s.loopDone)
	defer func() {
		// Wake a settle that waits for a step that will not come.
		s.mu.Lock()
		s.stepped.Broadcast()
		s.mu.Unlock()
	}()
	defer t.Stop()
	defer func() {
		// Logged once the loop, which alone dispatches, has stopped:
		// valid_until is the lease the shard last confirmed, past which
		// it dispatched nothing even if it stopped later (a paused
		// process learns it lost the lease only when it runs again).
		s.mu.Lock()
		until, why := s.validUntil, s.stopErr
		s.mu.Unlock()
		s.log.Debug("shard stopped firing", "valid_until", until, "err", why)
	}()
	var turns chan struct{} // nil: the shard does not take turns
	if s.cfg.Turns != nil {
		turns = s.cfg.Turns.c
	}
	held := false // a turn is held for the next step
	for {
		budget := maxStepFires
		if turns != nil {
			budget = lightFires
			if held {
				budget = turnFires
			}
		}
		s.mu.Lock()
		wait, busy, ok := s.stepLocked(budget)
		s.mu.Unlock()
		if held {
			<-turns
			held = false
		}
		if !ok {
			return
		}
		// With more due work than the step handled, the loop goes on at
		// once, or, taking turns, as soon as it has one: wait is then
		// when the next timer that is not part of that work comes due.
		var take chan struct{}
		if busy {
			if turns == nil {
				wait = 0
			}
			take = turns
		}
		t.Reset(wait)
		select {
		case <-s.stop:
			return
		case <-s.kick:
		case <-t.C():
		case take <- struct{}{}:
			held = true
		}
	}
}

// settle returns once the loop has completed a step that began after the
// call, so that it has seen the clock as it was when settle was called. It
// returns at once if the shard has stopped.
func (s *Shard) settle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	// Steps run whole under mu, so none is in progress now.
	target := s.steps + 1
	s.kickLoop()
	for s.steps < target && s.stopErr == nil {
		s.stepped.Wait()
		if s.steps < target {
			s.kickLoop()
		}
	}
}

// idleWait is how long the loop sleeps with nothing armed; a kick ends it.
const idleWait = time.Hour

// maxStepFires bounds the due timers one step handles; the loop takes the
// rest after releasing mu, so calls interleave with a burst.
const maxStepFires = 4096

// refillEvery is how many due timers a step hands out between looks at
// the clock: each look checks the lease and, once the clock has moved to
// a new millisecond (the wheel's finest tick), takes what came due since
// from the wheel, so a timer due while a step hands out a herd waits for
// at most this many deliveries after its millisecond begins. A look costs
// one clock read; the wheel is advanced at most once a millisecond, since
// a second advance within the same millisecond finds nothing new due.
const refillEvery = 32

// maxBacklog bounds the due timers a shard holds taken from its wheel and
// not yet handled. A step takes from the wheel what the backlog has room
// for: about maxStepFires once a herd drains, so a step's work stays
// bounded, and the herd's first maxBacklog timers share turns with other
// namespaces' timers due in the same tick.
const maxBacklog = 4 * maxStepFires

// stepLocked handles at most budget due timers and returns how long to
// sleep, leaving out work that is due already: busy says there is some
// (due timers not yet handled, or waiting ones a subscriber can take
// now). ok is false once the shard has stopped.
func (s *Shard) stepLocked(budget int) (wait time.Duration, busy, ok bool) {
	s.steps++
	defer s.stepped.Broadcast()
	if s.stopErr != nil {
		return 0, false, false
	}
	if s.commitFailedLocked() {
		return 0, false, false
	}
	now := s.clock.Now()
	if !now.Before(s.validUntil) {
		// The lease may be about to lapse: fire nothing until the
		// keeper renews it (and kicks) or gives up.
		return idleWait, false, true
	}
	nowMs := now.UnixMilli()
	// A take from the wheel is at most four steps' worth, as maxBacklog
	// is of a step without turns, so a light step stays light.
	take := 4 * budget
	// Timers that waited for a subscriber get at most half the step:
	// the other half is for the timers coming due, which would otherwise
	// wait while a herd's subscriber takes its backlog as fast as it acks.
	drains := budget - budget/2
	for tk := range s.ready {
		if drains <= 0 {
			break
		}
		delete(s.ready, tk)
		sent := s.drainLocked(tk, nowMs, drains)
		drains -= sent
		budget -= sent
	}
	// Lapsed tombstones take at most a quarter of a step: firing on time
	// comes first, and they are only deleted a little later.
	budget -= s.forgetLocked(nowMs, budget/4)
	if budget > 0 {
		s.takeDueLocked(nowMs, take)
	}
	for budget > 0 {
		e, ok := s.backlog.pop()
		if !ok {
			break
		}
		t, due := e.due(s.timers)
		if !due {
			continue // re-armed or removed since it came due
		}
		t.queued = false
		budget--
		if t.inFlight {
			s.timeoutLocked(t, nowMs, s.cfg.backoff(t.attempts))
		} else {
			s.deliverLocked(t, nowMs)
		}
		if budget%refillEvery == 0 {
			now = s.clock.Now()
			if !now.Before(s.validUntil) {
				break
			}
			// What came due while this step handed out a herd joins its
			// namespace's turn now, not a whole step later. The backlog
			// still holds at least maxBacklog-maxStepFires timers taken
			// at the step's start, so only a new millisecond needs the
			// wheel.
			if ms := now.UnixMilli(); ms != nowMs {
				nowMs = ms
				s.takeDueLocked(nowMs, take)
			}
		}
	}
	s.submitLocked()
	busy = s.backlog.len() > 0 || len(s.ready) > 0
	if next, ok := s.wheel.Next(); ok && next <= nowMs {
		busy = true // leftovers of a herd, or timers not taken yet
	}
	wait = min(s.validUntil.Sub(now), idleWait)
	if next, ok := s.wheel.Upcoming(); ok {
		wait = min(wait, time.Duration(next-nowMs)*time.Millisecond)
	}
	if len(s.goneQ) > 0 {
		wait = min(wait, time.Duration(s.goneQ[0].until-nowMs)*time.Millisecond)
	}
	return max(wait, 0), busy, true
}

// takeDueLocked moves timers due at now (unix ms) from the wheel to the
// backlog, at most limit, and no more than the backlog has room for. The
// rest stay due in the wheel rather than cost one step a whole herd, and
// the wheel gives the ticks that came due since the last call a share of
// every call, so their timers join their namespace's turn without waiting
// for a herd to drain.
func (s *Shard) takeDueLocked(now int64, limit int) {
	take := min(maxBacklog-s.backlog.len(), limit)
	if take <= 0 {
		return
	}
	// Take what fits in s.fired first. If that fills it, a herd came due:
	// make room for the rest in one allocation and take it. Growing by
	// appends would copy and fault in several times the memory while the
	// other namespaces' timers wait, and a shard that never sees a herd
	// keeps a small s.fired.
	first := min(take, max(cap(s.fired), 64))
	s.fired = s.wheel.AdvanceLimit(now, s.fired[:0], first)
	if len(s.fired) == first && first < take {
		s.fired = slices.Grow(s.fired, take-first)
		s.fired = s.wheel.AdvanceLimit(now, s.fired, take-first)
	}
	for _, f := range s.fired {
		t := s.timers.at(uint32(f.Value))
		t.armed, t.queued = false, true
		t.visit++
		s.backlog.push(waitEntry{slot: t.slot, visit: t.visit}, s.timers.namespace(t))
	}
}

// commitFailedLocked stops the shard, and reports true, if its last
// submitted writes failed (fenced, given up by the group commit, or cut
// short by its Close). The shard's memory then holds writes the store may
// not have; serving on could later lose or resurrect a timer, so it stops
// like a shard that lost its lease, and its next owner loads what the
// store has. The group commit fails every later write of an epoch after
// one of its writes failed, so the last write's outcome covers them all.
func (s *Shard) commitFailedLocked() bool {
	c := s.lastSub
	if c == nil {
		return false
	}
	select {
	case <-c.Done():
		if err := c.Err(); err != nil {
			s.loseLocked(err)
			return true
		}
	default:
	}
	return false
}

// deliverLocked hands a due timer to the dispatcher, or queues it for its
// topic when no subscriber can take it.
func (s *Shard) deliverLocked(t *timer, now int64) {
	tk := topicKey{s.timers.namespace(t), s.timers.topic(t)}
	q := s.waiting[tk]
	if q == nil && s.dispatchLocked(t, now, false) {
		return
	}
	if q == nil {
		q = &waitQueue{}
		s.waiting[tk] = q
	}
	t.waiting = true
	t.visit++
	q.entries = append(q.entries, waitEntry{slot: t.slot, visit: t.visit})
	q.live++
}

// drainLocked dispatches a topic's waiting timers in order until one is
// refused or limit have gone out, and returns how many went out. A topic
// with timers left after limit stays ready.
func (s *Shard) drainLocked(tk topicKey, now int64, limit int) int {
	q := s.waiting[tk]
	if q == nil {
		return 0
	}
	i, sent := q.head, 0
	for ; i < len(q.entries); i++ {
		t, live := q.entries[i].live(s.timers)
		if !live {
			continue // cancelled, rescheduled or acked while waiting
		}
		if sent == limit {
			s.ready[tk] = struct{}{}
			break
		}
		t.waiting = false
		if !s.dispatchLocked(t, now, true) {
			t.waiting = true
			break
		}
		q.live--
		sent++
	}
	q.head = i
	s.tidyLocked(tk, q)
	return sent
}

// unwaitLocked ends t's wait for a subscriber when it is cancelled or
// moved: its entry stays in the queue, stale, until it is drained or the
// queue is compacted.
func (s *Shard) unwaitLocked(t *timer) {
	if !t.waiting {
		return
	}
	t.waiting = false
	tk := topicKey{s.timers.namespace(t), s.timers.topic(t)}
	if q := s.waiting[tk]; q != nil {
		q.live--
		s.tidyLocked(tk, q)
	}
}

// tidyLocked restores the invariants of tk's queue q after entries left
// it or went stale: it drops a queue with no live entry, compacts one
// whose stale entries outnumber the live ones, and moves one whose
// drained prefix outgrew it to the front of its array.
func (s *Shard) tidyLocked(tk topicKey, q *waitQueue) {
	n := len(q.entries) - q.head
	switch {
	case q.live == 0:
		delete(s.waiting, tk)
		return
	case n-q.live > q.live:
		kept := q.entries[:0]
		for _, e := range q.entries[q.head:] {
			if _, live := e.live(s.timers); live {
				kept = append(kept, e)
			}
		}
		q.entries = kept
	case q.head > n:
		q.entries = q.entries[:copy(q.entries, q.entries[q.head:])]
	default:
		return
	}
	q.head = 0
	if cap(q.entries) > 4*len(q.entries) {
		q.entries = slices.Clone(q.entries) // and the array of a burst
	}
}

// dispatchLocked offers t's next attempt to the dispatcher; waited says
// it comes from its topic's waiting queue.
func (s *Shard) dispatchLocked(t *timer, now int64, waited bool) bool {
	d := Delivery{
		ID:        s.ids.id(s.deliveryID(t)),
		Namespace: s.timers.namespace(t),
		TimerID:   s.timers.id(t),
		Topic:     s.timers.topic(t),
		Payload:   s.timers.payload(t),
		Due:       time.UnixMilli(t.rec.Due),
		Fired:     s.clock.Now(),
		Attempt:   t.attempts + 1,
		Shard:     s.id,
		Epoch:     s.grant.Epoch,
		Waited:    waited,
	}
	ackTimeout, ok := s.disp.Dispatch(d)
	if !ok {
		return false
	}
	if ackTimeout <= 0 {
		ackTimeout = s.cfg.AckTimeout
	}
	// A deadline in whole milliseconds, at least one ahead, well inside
	// the wheel's horizon.
	ackTimeout = min(max(ackTimeout, time.Millisecond), maxAckTimeout)
	t.attempts++
	t.sent = now
	t.inFlight = true
	s.inFlight++
	if err := s.armLocked(t, now+ackTimeout.Milliseconds()); err != nil {
		// Ack timeouts are short, so only a wheel left a whole horizon
		// behind the clock (the clock jumped while the shard could not
		// fire) refuses the deadline. In flight with no deadline, a lost
		// ack would never be redelivered: keep the timer as a dead letter.
		s.buryLocked(t, fmt.Sprintf("ack deadline not armed: %v", err))
	}
	return true
}

// maxAckTimeout caps what a Dispatcher may ask for.
const maxAckTimeout = 24 * time.Hour

func (s *Shard) deliveryID(t *timer) DeliveryID {
	return DeliveryID{Shard: s.id, Namespace: s.timers.namespace(t), TimerID: s.timers.id(t), OccEpoch: t.rec.OccEpoch, OccSeq: t.rec.OccSeq}
}

// timeoutLocked ends an attempt that was not acked, because its deadline
// passed or its subscriber went away: the attempt is written down and the
// timer is delivered again after backoff, or becomes a dead letter once it
// has had MaxAttempts.
func (s *Shard) timeoutLocked(t *timer, now int64, backoff time.Duration) {
	s.landLocked(t)
	if t.attempts >= s.cfg.MaxAttempts {
		s.buryLocked(t, fmt.Sprintf("not acknowledged after %d attempts", t.attempts))
		return
	}
	next := max(now+backoff.Milliseconds(), t.rec.Due)
	if err := s.armLocked(t, next); err != nil {
		// A backoff past the wheel's horizon (BackoffMax allows it), or
		// a wheel left that far behind the clock: the timer cannot be
		// delivered again, so it is kept as a dead letter.
		s.buryLocked(t, fmt.Sprintf("redelivery after %d attempts not armed: %v", t.attempts, err))
		return
	}
	t.rec.Attempts = t.attempts
	t.rec.LastAttempt = t.sent
	t.rec.Next = next
	s.putLocked(t)
}

// buryLocked makes t a dead letter for reason and writes it: it leaves
// the wheel and any attempt in flight, keeps its attempts, and waits for a
// replay or a cancel. t is not waiting for a subscriber.
func (s *Shard) buryLocked(t *timer, reason string) {
	s.disarmLocked(t)
	s.landLocked(t)
	t.rec.Attempts = t.attempts
	t.rec.LastAttempt = t.sent
	t.rec.State = store.Dead
	t.rec.Next = t.rec.Due
	s.timers.setReason(t, reason)
	s.addDeadLocked(t)
	s.putLocked(t)
	if s.cfg.Events != nil {
		s.cfg.Events.DeadLettered(s.timers.namespace(t))
	}
}

// keepLease renews the lease every LeaseTTL/3. A failed renewal is
// retried sooner; the loop stops firing once the last confirmed lease may
// be about to lapse, and the shard stops when the store says another
// owner has it.
//
// Its alarm is made by the caller, so that the first renewal is due
// LeaseTTL/3 after acquire however late the goroutine starts.
func (s *Shard) keepLease(t Alarm) {
	defer close(s.keepDone)
	every := s.cfg.LeaseTTL / 3
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C():
		}
		start := s.clock.Now()
		ctx, cancel := context.WithTimeout(context.Background(), s.cfg.OpTimeout)
		err := s.st.Renew(ctx, s.id, s.grant, s.cfg.LeaseTTL)
		cancel()
		s.mu.Lock()
		if s.commitFailedLocked() {
			// Found here too: an idle loop may not step for an hour.
			s.mu.Unlock()
			return
		}
		switch {
		case err == nil:
			s.validUntil = start.Add(s.cfg.LeaseTTL - s.cfg.ClockDrift)
			s.kickLoop()
		case errors.Is(err, store.ErrFenced), errors.Is(err, store.ErrClosed):
			s.loseLocked(err)
			s.mu.Unlock()
			return
		default:
			s.log.Warn("lease renewal failed; retrying", "err", err)
		}
		s.mu.Unlock()
		if err == nil {
			t.Reset(every)
		} else {
			t.Reset(every / 4)
		}
	}
}

// keepGoneLocked remembers the tombstone g of key until g.until.
func (s *Shard) keepGoneLocked(key string, g goneMark) {
	s.gone[key] = g
	s.goneQ = append(s.goneQ, goneEntry{key: key, until: g.until})
}

// tombstoneLocked leaves a tombstone in memory for a one-shot timer that
// was just acked (and removed), if the request that made it may still be
// retried: it had a request id and came less than RetryWindow ago. The
// tombstone writes nothing: the ack deletes the record as it would
// without one, so a short timer's ack costs one write, not a put now and
// a delete when the window ends.
func (s *Shard) tombstoneLocked(t *timer, now int64) {
	until := t.rec.ReqAt + s.cfg.RetryWindow.Milliseconds()
	if t.rec.Req == 0 || now >= until {
		return
	}
	// A copy of the key: the tombstone outlives the timer, whose blob
	// holds its payload too.
	s.keepGoneLocked(strings.Clone(s.timers.key(t)), goneMark{req: t.rec.Req, due: t.rec.Due, until: until})
}

// retriedLocked returns the tombstone of key if req (non-zero) is a retry
// of the request that made the timer it remembers.
func (s *Shard) retriedLocked(key string, req uint64) (goneMark, bool) {
	g, ok := s.gone[key]
	return g, ok && req != 0 && g.req == req
}

// forgetLocked drops at most limit tombstones whose time has come and
// returns how many it dropped.
func (s *Shard) forgetLocked(now int64, limit int) int {
	n, i := 0, 0
	for ; i < len(s.goneQ) && n < limit && s.goneQ[i].until <= now; i++ {
		e := s.goneQ[i]
		if g, ok := s.gone[e.key]; !ok || g.until != e.until {
			continue // the id was scheduled again, or acked again since
		}
		delete(s.gone, e.key)
		n++
	}
	if i > 0 {
		clear(s.goneQ[:i])
		s.goneQ = s.goneQ[i:]
		if len(s.goneQ) == 0 {
			s.goneQ = nil
		}
	}
	return n
}

// newTimerLocked adds a timer for rec, whose key the shard does not
// hold, to the table, unarmed. It does not retain rec.
func (s *Shard) newTimerLocked(rec *store.Record) *timer {
	t := s.timers.add(rec)
	s.countLocked(s.timers.namespace(t), 1)
	return t
}

// removeLocked forgets t entirely.
func (s *Shard) removeLocked(t *timer) {
	s.disarmLocked(t)
	s.landLocked(t)
	s.unwaitLocked(t)
	s.dropDeadLocked(t)
	s.countLocked(s.timers.namespace(t), -1)
	s.timers.remove(t)
}

// armLocked puts t in the wheel at due (unix ms), in place of the entry
// it had, and takes it out of the backlog. If the wheel refuses due
// (past its horizon), t is left as it was.
func (s *Shard) armLocked(t *timer, due int64) error {
	h, err := s.wheel.Add(due, uint64(t.slot))
	if err != nil {
		return fmt.Errorf("due_time: %w: %w", ErrInvalidDue, err)
	}
	s.disarmLocked(t)
	t.handle, t.armed = h, true
	return nil
}

// disarmLocked takes t out of the wheel and out of the backlog.
func (s *Shard) disarmLocked(t *timer) {
	if t.armed {
		s.wheel.Cancel(t.handle)
		t.armed = false
	}
	t.queued = false
}

// landLocked ends t's attempt in flight, if any.
func (s *Shard) landLocked(t *timer) {
	if t.inFlight {
		t.inFlight = false
		s.inFlight--
	}
}

// occurLocked starts a new occurrence of t, due at due (unix ms), and
// writes it: a new delivery id, no attempts, pending, armed. It is how
// Schedule, Reschedule, an ack of a repeating timer and Replay all move a
// timer on. If the wheel refuses due, t is left as it was (armed, in
// flight, waiting or dead) and unwritten.
func (s *Shard) occurLocked(t *timer, due int64) error {
	if err := s.armLocked(t, due); err != nil {
		return err
	}
	s.landLocked(t)
	s.unwaitLocked(t)
	s.dropDeadLocked(t) // before t's record changes
	s.seq++
	t.rec.OccEpoch, t.rec.OccSeq = s.grant.Epoch, s.seq
	t.rec.Due, t.rec.Next = due, due
	t.rec.State = store.Pending
	t.rec.Attempts, t.attempts = 0, 0
	t.rec.LastAttempt, t.sent = 0, 0
	s.timers.setReason(t, "")
	s.putLocked(t)
	return nil
}

// addDeadLocked records that t, whose record is final, is a dead letter.
func (s *Shard) addDeadLocked(t *timer) {
	s.deadMu.Lock()
	s.deadIdx.insert(t, s.timers.namespace(t), s.timers.topic(t), s.timers.id(t))
	s.deadMu.Unlock()
}

// dropDeadLocked records that t is no longer a dead letter, if it was one,
// before its record changes.
func (s *Shard) dropDeadLocked(t *timer) {
	if t.rec.State != store.Dead {
		return
	}
	s.deadMu.Lock()
	s.deadIdx.remove(s.timers.namespace(t), s.timers.topic(t), s.timers.id(t))
	s.deadMu.Unlock()
}

func (s *Shard) putLocked(t *timer) {
	rec := s.timers.record(t)
	s.ops = append(s.ops, store.Op{Key: s.timers.key(t), Value: rec.AppendBinary(nil)})
	if !t.dirty {
		t.dirty = true
		s.touched = append(s.touched, t)
	}
}

func (s *Shard) deleteLocked(key string) {
	s.ops = append(s.ops, store.Op{Key: key})
}

// submitLocked hands the writes made since the last call to the group
// commit and returns the Commit that reports their durability (nil if
// there were none).
func (s *Shard) submitLocked() *store.Commit {
	if len(s.ops) == 0 {
		return nil
	}
	c := s.com.Submit(s.id, s.grant, s.ops)
	s.ops = nil
	s.lastSub = c
	for _, t := range s.touched {
		t.dirty = false
	}
	clear(s.touched)
	s.touched = s.touched[:0]
	return c
}
