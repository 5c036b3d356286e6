package client

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// SchedulerConfig configures a Scheduler. A zero field takes its default;
// DefaultSchedulerConfig returns them all.
type SchedulerConfig struct {
	// MaxBatch is the most timers in one batch, one ScheduleBatch call
	// (default 1000). It must not exceed the server's batch limit (default
	// 10000). Against a cluster a batch is split into one RPC per node
	// that owns some of its timers.
	MaxBatch int
	// MaxBatchBytes bounds the estimated encoded size of one batch (default
	// 2 MiB), to stay below gRPC's maximum message size (default 4 MiB on
	// the server). A batch is sent once it reaches either bound.
	MaxBatchBytes int
	// Linger is how long a batch waits for more timers after its first
	// before it is sent (default 5ms). A negative value sends a batch as
	// soon as its first timer is in.
	Linger time.Duration
	// MaxInFlight is the most batches under way at once (default 4).
	MaxInFlight int
	// MaxPending is the most timers added and not yet answered (default
	// 4 * MaxBatch * MaxInFlight); Add blocks while it is reached.
	MaxPending int
	// Timeout bounds each batch, its retries included (default 30s).
	Timeout time.Duration
}

// DefaultSchedulerConfig returns the defaults documented on
// SchedulerConfig.
func DefaultSchedulerConfig() SchedulerConfig {
	return SchedulerConfig{
		MaxBatch:      1000,
		MaxBatchBytes: 2 << 20,
		Linger:        5 * time.Millisecond,
		MaxInFlight:   4,
		MaxPending:    4 * 1000 * 4,
		Timeout:       30 * time.Second,
	}
}

// withDefaults returns c with its zero fields set to their defaults.
func (c SchedulerConfig) withDefaults() SchedulerConfig {
	d := DefaultSchedulerConfig()
	if c.MaxBatch == 0 {
		c.MaxBatch = d.MaxBatch
	}
	if c.MaxBatchBytes == 0 {
		c.MaxBatchBytes = d.MaxBatchBytes
	}
	if c.Linger == 0 {
		c.Linger = d.Linger
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = d.MaxInFlight
	}
	if c.MaxPending == 0 {
		c.MaxPending = 4 * c.MaxBatch * c.MaxInFlight
	}
	if c.Timeout == 0 {
		c.Timeout = d.Timeout
	}
	return c
}

// Validate reports the first invalid field of a config whose zero fields
// have been given their defaults. Errors wrap ErrInvalidConfig.
func (c SchedulerConfig) Validate() error {
	switch {
	case c.MaxBatch < 1 || c.MaxBatch > 1_000_000:
		return badConfig("SchedulerConfig.MaxBatch", "must be in [1, 1000000], got %d", c.MaxBatch)
	case c.MaxBatchBytes < 1<<10:
		return badConfig("SchedulerConfig.MaxBatchBytes", "must be >= 1 KiB, got %d", c.MaxBatchBytes)
	case c.Linger > time.Second:
		return badConfig("SchedulerConfig.Linger", "must be <= 1s, got %v", c.Linger)
	case c.MaxInFlight < 1 || c.MaxInFlight > 1024:
		return badConfig("SchedulerConfig.MaxInFlight", "must be in [1, 1024], got %d", c.MaxInFlight)
	case c.MaxPending < c.MaxBatch:
		return badConfig("SchedulerConfig.MaxPending", "must be >= MaxBatch (%d), got %d", c.MaxBatch, c.MaxPending)
	case c.Timeout <= 0:
		return badConfig("SchedulerConfig.Timeout", "must be > 0, got %v", c.Timeout)
	}
	return nil
}

// Scheduler schedules high volumes of timers asynchronously: Add puts a
// timer into the current batch and returns; the batch is sent as one
// ScheduleBatch call (with the client's routing and retries) once it holds
// MaxBatch timers or MaxBatchBytes, or Linger after its first timer, with
// at most MaxInFlight batches under way. Add blocks while MaxPending timers are
// unanswered. Each timer's outcome goes to the done function given to Add.
//
// Its methods may be called concurrently. Its goroutines are one that
// seals lingering batches and at most MaxInFlight senders; Close stops
// them all.
//
// Invariants, under mu: pending counts the timers added and not yet
// released by their sender; every sealed batch is either in queue or being
// sent by one of the running senders, and its seq is in queue or in
// sending; seq numbers grow in the order batches are sealed.
type Scheduler struct {
	c   *Client
	cfg SchedulerConfig

	ctx    context.Context // of the RPCs; cancelled when Close gives up
	cancel context.CancelFunc
	kick   chan struct{} // wakes the linger goroutine; capacity 1
	stop   chan struct{} // closed by Close to stop the linger goroutine
	wg     sync.WaitGroup

	mu       sync.Mutex
	cur      *batch   // filling; nil when empty
	queue    []*batch // sealed, waiting for a sender, oldest first
	sending  []uint64 // seq of the batches being sent
	running  int      // sender goroutines
	free     []*batch // recycled batches
	pending  int
	seq      uint64        // seq of the last sealed batch
	room     chan struct{} // closed when pending falls; nil without waiters
	progress chan struct{} // closed when a batch completes; nil without waiters
	closed   bool
	shut     chan struct{} // closed when Close has finished
	closeErr error
}

// batch is one ScheduleBatch call in the making.
type batch struct {
	seq      uint64
	deadline time.Time // when it is sealed if it is not full by then
	bytes    int       // estimated encoded size
	buf      specBuf
	res      []Result
	done     []func(Result)
	idx      []int
}

// NewScheduler returns a Scheduler sending through c, configured by cfg
// (zero fields take their defaults). Close it before closing c.
func (c *Client) NewScheduler(cfg SchedulerConfig) (*Scheduler, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scheduler{
		c:      c,
		cfg:    cfg,
		ctx:    ctx,
		cancel: cancel,
		kick:   make(chan struct{}, 1),
		stop:   make(chan struct{}),
		shut:   make(chan struct{}),
	}
	s.wg.Add(1)
	go s.lingerLoop()
	return s, nil
}

// Add queues t to be scheduled and returns. done, unless nil, is called
// once with t's Result (its Err as for ScheduleBatch) from one of the
// Scheduler's goroutines; it must not block, and must not call the
// Scheduler's methods. A Delay is resolved when Add is called. t.Payload
// is not copied: leave it unchanged until done is called.
//
// Add blocks while MaxPending timers are unanswered, until there is room
// or ctx ends (then it returns ctx.Err()). It fails without calling done
// for a timer with both a due time and a delay or a negative delay
// (ErrInvalid) and on a closed Scheduler (ErrClosed).
func (s *Scheduler) Add(ctx context.Context, t Timer, done func(Result)) error {
	now := time.Now()
	ns := s.c.ns(t.Namespace)
	due, why := resolve(t.Due, t.Delay, now)
	if why != "" {
		return invalidItem(opSchedule, ns, t.ID, why)
	}
	size := len(ns) + len(t.ID) + len(t.Topic) + len(t.Payload) + 48
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return closedErr(opSchedule)
		}
		if s.pending < s.cfg.MaxPending {
			break
		}
		if err := s.waitLocked(ctx, &s.room); err != nil {
			return err
		}
	}
	s.pending++
	b := s.cur
	if b != nil && b.bytes+size > s.cfg.MaxBatchBytes {
		s.sealLocked()
		b = nil
	}
	fresh := b == nil
	if fresh {
		b = s.newBatchLocked()
		b.deadline = now.Add(max(s.cfg.Linger, 0))
		s.cur = b
	}
	b.buf.add(ns, &t, due)
	b.res = append(b.res, Result{ID: t.ID})
	b.done = append(b.done, done)
	b.bytes += size
	if len(b.res) >= s.cfg.MaxBatch || b.bytes >= s.cfg.MaxBatchBytes {
		s.sealLocked()
		fresh = false
	}
	s.mu.Unlock()
	if fresh {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	return nil
}

// Schedule adds t and waits for its outcome: the due time the server
// stored, or the item's error. If ctx ends first it returns ctx.Err() and
// the outcome is unknown (the timer may still be scheduled).
func (s *Scheduler) Schedule(ctx context.Context, t Timer) (time.Time, error) {
	ch := resultChans.Get().(chan Result)
	if err := s.Add(ctx, t, func(r Result) { ch <- r }); err != nil {
		resultChans.Put(ch)
		return time.Time{}, err
	}
	select {
	case r := <-ch:
		resultChans.Put(ch)
		return r.Due, r.Err
	case <-ctx.Done():
		return time.Time{}, ctx.Err() // ch is left to the collector: its send is still to come
	}
}

// resultChans recycles the channels of Scheduler.Schedule.
var resultChans = sync.Pool{New: func() any { return make(chan Result, 1) }}

// Flush sends the current batch at once and waits until every timer added
// before Flush was called has been answered (its done function has
// returned), or ctx ends (then it returns ctx.Err()).
func (s *Scheduler) Flush(ctx context.Context) error {
	s.mu.Lock()
	if s.cur != nil {
		s.sealLocked()
	}
	target := s.seq
	for s.oldestLocked() <= target {
		if err := s.waitLocked(ctx, &s.progress); err != nil {
			return err
		}
	}
	s.mu.Unlock()
	return nil
}

// Close refuses further Adds (blocked ones return ErrClosed), flushes what
// was added, and stops the Scheduler's goroutines. If ctx ends before the
// flush is done, the RPCs still under way are cancelled, their timers'
// done functions get errors wrapping the context's error, and Close returns
// ctx.Err() once the goroutines have stopped. It is safe to call Close more
// than once; later calls wait for the first (within their ctx) and return
// what it returned.
func (s *Scheduler) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		select {
		case <-s.shut:
			return s.closeErr
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	s.closed = true
	wakeLocked(&s.room)
	s.mu.Unlock()

	err := s.Flush(ctx)
	if err != nil {
		s.cancel() // abandon the RPCs under way; their items fail at once
		_ = s.Flush(context.Background())
	}
	close(s.stop)
	s.wg.Wait()
	s.cancel()
	s.closeErr = err
	close(s.shut)
	return err
}

// oldestLocked returns the seq of the oldest batch not yet completed, or
// seq+1 when all are.
func (s *Scheduler) oldestLocked() uint64 {
	oldest := s.seq + 1
	if len(s.queue) > 0 {
		oldest = s.queue[0].seq
	}
	for _, q := range s.sending {
		oldest = min(oldest, q)
	}
	return oldest
}

// newBatchLocked returns an empty batch, recycled when one is free.
func (s *Scheduler) newBatchLocked() *batch {
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free = s.free[:n-1]
		return b
	}
	b := &batch{
		res:  make([]Result, 0, s.cfg.MaxBatch),
		done: make([]func(Result), 0, s.cfg.MaxBatch),
		idx:  make([]int, 0, s.cfg.MaxBatch),
	}
	b.buf.reset(s.cfg.MaxBatch)
	return b
}

// sealLocked closes the current batch to further timers and hands it to a
// sender: a new one while fewer than MaxInFlight run, otherwise the queue.
func (s *Scheduler) sealLocked() {
	b := s.cur
	s.cur = nil
	s.seq++
	b.seq = s.seq
	if s.running < s.cfg.MaxInFlight {
		s.running++
		s.sending = append(s.sending, b.seq)
		s.wg.Add(1)
		go s.sender(b)
		return
	}
	s.queue = append(s.queue, b)
}

// sender sends b, then every batch it finds queued, and exits when the
// queue is empty.
func (s *Scheduler) sender(b *batch) {
	defer s.wg.Done()
	for b != nil {
		s.send(b)
		s.mu.Lock()
		if i := slices.Index(s.sending, b.seq); i >= 0 {
			s.sending = slices.Delete(s.sending, i, i+1)
		}
		s.recycleLocked(b)
		wakeLocked(&s.progress)
		b = nil
		if len(s.queue) > 0 {
			b = s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			s.sending = append(s.sending, b.seq)
		} else {
			s.running--
		}
		s.mu.Unlock()
	}
}

// send makes b's RPC, releases its room and calls its done functions.
func (s *Scheduler) send(b *batch) {
	n := len(b.res)
	b.idx = b.idx[:0]
	for i := range n {
		b.idx = append(b.idx, i)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.Timeout)
	err := s.c.scheduleSpecs(ctx, &b.buf, b.res, b.idx)
	cancel()

	s.mu.Lock()
	s.pending -= n
	wakeLocked(&s.room)
	s.mu.Unlock()

	failed, dropped := 0, error(nil)
	for i, f := range b.done {
		if f != nil {
			f(b.res[i])
		} else if e := b.res[i].Err; e != nil {
			failed++
			dropped = e
		}
	}
	if err == nil {
		err = dropped
	}
	if failed > 0 {
		s.c.cfg.logger.LogAttrs(s.ctx, slog.LevelWarn, "timerd scheduler: timers without a done function failed",
			slog.Int("failed", failed), slog.Int("batch", n), slog.Any("err", err))
	}
}

// recycleLocked keeps b for reuse, dropping its references to the caller's
// data, unless enough batches are kept already.
func (s *Scheduler) recycleLocked(b *batch) {
	if len(s.free) > s.cfg.MaxInFlight+1 {
		return
	}
	clear(b.res)
	clear(b.done)
	b.res, b.done, b.bytes = b.res[:0], b.done[:0], 0
	b.buf.reset(s.cfg.MaxBatch)
	s.free = append(s.free, b)
}

// lingerLoop seals the current batch when its linger time is up.
func (s *Scheduler) lingerLoop() {
	defer s.wg.Done()
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-s.kick:
		case <-t.C:
		case <-s.stop:
			return
		}
		wait := time.Duration(-1)
		s.mu.Lock()
		if b := s.cur; b != nil {
			if d := time.Until(b.deadline); d > 0 {
				wait = d
			} else {
				s.sealLocked()
			}
		}
		s.mu.Unlock()
		if wait >= 0 {
			t.Reset(wait)
		}
	}
}

// waitLocked waits, with s.mu released, until *signal (made here when
// nil) is closed or ctx ends. It returns with s.mu held, or with ctx's
// error and s.mu released.
func (s *Scheduler) waitLocked(ctx context.Context, signal *chan struct{}) error {
	if *signal == nil {
		*signal = make(chan struct{})
	}
	ch := *signal
	s.mu.Unlock()
	select {
	case <-ch:
		s.mu.Lock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// wakeLocked wakes every waitLocked on *signal. s.mu must be held.
func wakeLocked(signal *chan struct{}) {
	if *signal != nil {
		close(*signal)
		*signal = nil
	}
}
