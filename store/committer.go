package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// CommitterConfig configures a Committer. The zero value is not valid; start
// from DefaultCommitterConfig.
type CommitterConfig struct {
	// Linger is how long a cycle waits after its first write for more to
	// arrive. Default 0: batching comes from the round trip itself, since
	// everything submitted while one cycle is in flight rides the next.
	Linger time.Duration
	// Lanes is how many cycles may be in the store at once (default 2).
	// A shard always uses the same lane, so its writes stay in order.
	// Over a partitioned store (see Partitioner) every partition has
	// Lanes lanes of its own.
	Lanes int
	// MaxBatchOps caps the writes of one shard in one Batch (default
	// 4096): a submission with more is cut into pieces of at most
	// MaxBatchOps, and a cycle carries at most one batch of each shard, so
	// a big submission takes one piece per cycle while the other shards
	// of its lane ride every cycle. It bounds how long one script holds a
	// Redis server's only thread.
	MaxBatchOps int
	// MaxCycleOps caps the writes of one cycle, that is of one round
	// trip (default 16384, at least MaxBatchOps); batches that do not fit
	// wait for the next cycle. It bounds the largest round trip the
	// Committer sends, which CommitTimeout (and a Redis client's socket
	// timeouts) must cover.
	MaxCycleOps int
	// MaxQueueOps caps the writes a lane holds, queued or in a cycle not
	// yet finished, plus those reserved (default 262144, at least
	// MaxCycleOps); over a partitioned store, a lane of each partition. Reserve fails with ErrOverloaded beyond it, so while
	// the store is slow or unreachable callers are refused at once
	// instead of queuing without bound. Submit itself never refuses: its
	// writes are already applied in the caller's memory.
	MaxQueueOps int
	// CommitTimeout bounds one Store.Commit round trip (default 10s).
	CommitTimeout time.Duration
	// GiveUpAfter bounds how long a lane retries a store that keeps
	// failing (default 10s). Once its round trips have failed for that
	// long in a row, counted across cycles from the first failed attempt,
	// a cycle is given up after its own next failed attempt: its writers'
	// Commits fail with ErrUnavailable (the writes may or may not have
	// been applied), and the lane goes on with the next cycle. A writer
	// therefore learns its outcome within about GiveUpAfter plus two
	// CommitTimeouts of submitting.
	GiveUpAfter time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a cycle
	// whose round trip failed (defaults 5ms and 1s). Every write is
	// idempotent, so a retried round trip that had been applied changes
	// nothing.
	RetryMin, RetryMax time.Duration
	// Logger receives failed round trips. Default: discard.
	Logger *slog.Logger
	// OnCommit, if set, is called from the Committer's goroutine after
	// every cycle, durable or given up, for metrics, before the cycle's
	// writers learn its outcome: a writer woken by its Commit finds its
	// cycle counted. It must not block.
	OnCommit func(CommitStats)
}

// CommitStats describes one commit cycle.
type CommitStats struct {
	Batches int           // shard batches in the cycle
	Ops     int           // writes in the cycle
	Latency time.Duration // from the cycle's start to its outcome, retries included
	Retries int           // failed round trips before the last one
	// Err is nil when the cycle is durable; it wraps ErrUnavailable when
	// the cycle was given up.
	Err error
}

// DefaultCommitterConfig returns the defaults documented on CommitterConfig.
func DefaultCommitterConfig() CommitterConfig {
	return CommitterConfig{
		Lanes:         2,
		MaxBatchOps:   4096,
		MaxCycleOps:   16384,
		MaxQueueOps:   262144,
		CommitTimeout: 10 * time.Second,
		GiveUpAfter:   10 * time.Second,
		RetryMin:      5 * time.Millisecond,
		RetryMax:      time.Second,
	}
}

// Validate reports the first invalid field.
func (c CommitterConfig) Validate() error {
	switch {
	case c.Linger < 0:
		return fmt.Errorf("%w: Linger must be >= 0, got %v", ErrInvalidConfig, c.Linger)
	case c.Lanes < 1 || c.Lanes > 64:
		return fmt.Errorf("%w: Lanes must be in [1, 64], got %d", ErrInvalidConfig, c.Lanes)
	case c.MaxBatchOps < 1:
		return fmt.Errorf("%w: MaxBatchOps must be >= 1, got %d", ErrInvalidConfig, c.MaxBatchOps)
	case c.MaxCycleOps < c.MaxBatchOps:
		return fmt.Errorf("%w: MaxCycleOps must be >= MaxBatchOps=%d, got %d", ErrInvalidConfig, c.MaxBatchOps, c.MaxCycleOps)
	case c.MaxQueueOps < c.MaxCycleOps:
		return fmt.Errorf("%w: MaxQueueOps must be >= MaxCycleOps=%d, got %d", ErrInvalidConfig, c.MaxCycleOps, c.MaxQueueOps)
	case c.CommitTimeout <= 0:
		return fmt.Errorf("%w: CommitTimeout must be > 0, got %v", ErrInvalidConfig, c.CommitTimeout)
	case c.GiveUpAfter <= 0:
		return fmt.Errorf("%w: GiveUpAfter must be > 0, got %v", ErrInvalidConfig, c.GiveUpAfter)
	case c.RetryMin <= 0:
		return fmt.Errorf("%w: RetryMin must be > 0, got %v", ErrInvalidConfig, c.RetryMin)
	case c.RetryMax < c.RetryMin:
		return fmt.Errorf("%w: RetryMax must be >= RetryMin, got %v", ErrInvalidConfig, c.RetryMax)
	}
	return nil
}

// Commit is the outcome of the writes submitted to one shard batch of one
// cycle. Every submitter whose writes joined that batch shares it.
type Commit struct {
	done chan struct{}
	// err is written once, before done is closed.
	err error
}

// Done is closed when the outcome is known.
func (c *Commit) Done() <-chan struct{} { return c.done }

// Err returns the outcome once Done is closed: nil when durable, wrapping
// ErrFenced when the store refused the shard's Grant, wrapping
// ErrUnavailable when the store kept failing and the Committer gave the
// writes up, or wrapping ErrClosed when the Committer closed before it
// knew. In the last two cases the writes may or may not have been applied,
// and the shard's later writes under the same Grant fail alike (see
// Committer).
func (c *Commit) Err() error {
	<-c.done
	return c.err
}

// Wait blocks until the outcome is known or ctx ends. When ctx ends first
// the writes may still become durable later.
func (c *Commit) Wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *Commit) finish(err error) {
	c.err = err
	close(c.done)
}

// Partitioner is implemented by a Store whose shards live on several
// servers that answer independently, such as the masters of a Redis
// Cluster. Over such a store the Committer gives each partition lanes of
// its own, so that every cycle goes to one server only and a slow server
// holds up the cycles of its own shards, not those of every shard.
type Partitioner interface {
	// Partitioned reports whether the store spreads shards over several
	// servers. When it is false the Committer routes as over a Store
	// without partitions.
	Partitioned() bool
	// Partition returns the partition (>= 0) that holds shard now. It is
	// called on the submitter's goroutine and must not block: it answers
	// from what the store last learned of its layout. A stale answer
	// costs only speed, since a cycle may span servers.
	Partition(shard uint32) int
}

// maxPartitions bounds the partitions that get lanes of their own; more
// share them.
const maxPartitions = 64

// Committer is the group commit: it coalesces the writes that shards
// submit concurrently into one Store.Commit per cycle, carrying many
// shards' pending writes in one round trip, and answers each submitter
// once its writes are durable.
//
// Shards are split over Lanes; each lane runs one cycle at a time, so a
// shard's writes reach the store in the order they were submitted, while
// the lanes' cycles overlap: one lane's round trip is in the store while
// another gathers and encodes its next cycle, which keeps a store with one
// thread (Redis) busy.
//
// Over a partitioned store (see Partitioner) each partition has Lanes
// lanes, started when a shard of the partition first writes, and a shard
// rides a lane of its partition. A shard whose partition changes (a
// resharding) moves to the new partition's lanes only once it holds no
// writes (reserved, queued or in a cycle) in its old lane, so its writes
// still reach the store in order.
//
// A cycle is bounded: at most one batch (MaxBatchOps writes) of each shard
// and MaxCycleOps writes in all, so no submission, however big, holds its
// lane for more than one bounded round trip at a time. A round trip that
// fails is retried until the lane's store has failed for GiveUpAfter; the
// cycle is then given up (ErrUnavailable) and the lane moves on.
//
// Invariant: the writes of a shard under one Grant that the store applied
// are a prefix of those submitted. Once a cycle is given up, a later batch
// of any shard it carried, under the same Grant, is failed unsent with the
// same error: applying it without the earlier one could, say, leave a
// cancelled timer in the store. The shard must acquire a new Grant (reopen,
// reloading what the store has) to write again.
//
// Submit, Reserve and Unreserve may be called concurrently from many
// goroutines; Close may be called concurrently with them and more than
// once.
type Committer struct {
	st   Store
	cfg  CommitterConfig
	log  *slog.Logger
	part Partitioner   // nil unless st is partitioned
	quit chan struct{} // closed by Close
	wg   sync.WaitGroup
	once sync.Once

	// mu guards lanes, routes and shut. Without a Partitioner lanes is
	// fixed once NewCommitter returns and read without mu.
	mu sync.Mutex
	// lanes[p*Lanes+i] is lane i of partition p.
	lanes []*lane
	// routes pins each shard that holds writes in a lane to that lane
	// (with a Partitioner only). Invariant: routes[shard].n is the writes
	// reserved, queued or in a cycle for shard; a route with none is
	// removed.
	routes map[uint32]*route
	// shut is set by Close: lanes added after it start closed.
	shut bool

	// refused counts the Reserve calls that failed with ErrOverloaded.
	refused atomic.Uint64
	// fenced counts the shard batches the store refused with ErrFenced.
	fenced atomic.Uint64
}

// route is the lane of a shard that holds writes in it.
type route struct {
	l *lane
	n int // writes: see Committer.routes
}

// lane commits the writes of the shards routed to it, one cycle at a time.
type lane struct {
	c    *Committer
	id   int
	wake chan struct{} // cap 1: something was submitted

	// load is the writes the lane holds (queued, or in a cycle not yet
	// finished) plus those reserved; held is the same without the
	// reservations. Both count ops. Reserve checks load against
	// MaxQueueOps without taking mu.
	load, held atomic.Int64

	mu sync.Mutex
	// queue holds the batches of the next cycles in submission order.
	// Invariant: open[shard] is the index in queue of that shard's last
	// batch, the one still taking writes; queued is the writes in queue;
	// split is set when some shard has more than one batch in queue.
	queue   []pendingBatch
	open    map[uint32]int
	queued  int
	split   bool
	closing bool

	// The fields below are owned by run.
	//
	// abandoned is set when a cycle was given up at Close: later cycles
	// are failed with it rather than committed, since committing them
	// could apply a shard's later writes without its earlier ones.
	abandoned error
	// failed holds, per shard, the Grant and error of its last cycle
	// given up (see Committer).
	failed map[uint32]failure
	// downSince is when the lane's first failed round trip in a row
	// began; zero while the store answers.
	downSince time.Time
	// seen is the shards of the cycle being taken (takeLocked).
	seen map[uint32]struct{}
}

// failure is a cycle given up for a shard's Grant.
type failure struct {
	grant Grant
	err   error
}

type pendingBatch struct {
	Batch
	commit *Commit
}

// NewCommitter starts a Committer over st. Close stops it.
func NewCommitter(st Store, cfg CommitterConfig) (*Committer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Committer{st: st, cfg: cfg, log: log, quit: make(chan struct{})}
	if p, ok := st.(Partitioner); ok && p.Partitioned() {
		c.part = p
		c.routes = make(map[uint32]*route)
	}
	c.mu.Lock()
	c.addLanesLocked(0)
	c.mu.Unlock()
	return c, nil
}

// addLanesLocked adds the lanes of every partition up to p and starts
// them, or, after Close, leaves them closed.
func (c *Committer) addLanesLocked(p int) {
	for len(c.lanes) < (p+1)*c.cfg.Lanes {
		l := &lane{
			c: c, id: len(c.lanes), wake: make(chan struct{}, 1),
			open:    make(map[uint32]int),
			failed:  make(map[uint32]failure),
			seen:    make(map[uint32]struct{}),
			closing: c.shut,
		}
		c.lanes = append(c.lanes, l)
		if !c.shut {
			c.wg.Add(1)
			go l.run()
		}
	}
}

// route returns shard's lane and counts n more writes held there for it
// (see Committer.routes). Without a Partitioner it is a fixed function of
// the shard.
func (c *Committer) route(shard uint32, n int) *lane {
	if c.part == nil {
		return c.lanes[shard%uint32(len(c.lanes))]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.routes[shard]
	if r == nil {
		r = &route{l: c.partitionLaneLocked(shard)}
		c.routes[shard] = r
	}
	r.n += n
	return r.l
}

// partitionLaneLocked returns the lane of shard in the partition that
// holds it now, adding the partition's lanes if it has none yet.
func (c *Committer) partitionLaneLocked(shard uint32) *lane {
	p := c.part.Partition(shard) % maxPartitions
	c.addLanesLocked(p)
	return c.lanes[p*c.cfg.Lanes+int(shard%uint32(c.cfg.Lanes))]
}

// unroute counts n writes of shard as no longer held in its lane, which
// it returns.
func (c *Committer) unroute(shard uint32, n int) *lane {
	if c.part == nil {
		return c.lanes[shard%uint32(len(c.lanes))]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.routes[shard]
	if r == nil {
		// Nothing held: an Unreserve of no writes.
		return c.partitionLaneLocked(shard)
	}
	r.n -= n
	if r.n <= 0 {
		delete(c.routes, shard)
	}
	return r.l
}

// Submit queues ops, made under g, for shard's next batches and returns
// the Commit that reports their outcome: it is done once every one of
// them is. The Committer takes ownership of ops. Ops submitted for one
// shard reach the store in submission order; more than MaxBatchOps are
// cut into pieces that ride successive cycles.
func (c *Committer) Submit(shard uint32, g Grant, ops []Op) *Commit {
	n := len(ops)
	l := c.route(shard, n)
	l.mu.Lock()
	if l.closing {
		l.mu.Unlock()
		// Not under l.mu: Close takes c.mu, then each l.mu.
		c.unroute(shard, n)
		cm := &Commit{done: make(chan struct{})}
		cm.finish(ErrClosed)
		return cm
	}
	defer l.mu.Unlock()
	i, had := l.open[shard]
	var b *pendingBatch
	if had && l.queue[i].Grant == g {
		b = &l.queue[i]
	}
	for {
		if b == nil || (len(ops) > 0 && len(b.Ops) >= c.cfg.MaxBatchOps) {
			b = l.appendLocked(shard, g, had)
			had = true
		}
		k := min(len(ops), c.cfg.MaxBatchOps-len(b.Ops))
		switch {
		case b.Ops != nil:
			b.Ops = append(b.Ops, ops[:k]...)
		case k == len(ops):
			b.Ops = ops
		default:
			// A piece: capped, so that appending to it copies rather
			// than overwrite the next piece.
			b.Ops = ops[:k:k]
		}
		ops = ops[k:]
		if len(ops) == 0 {
			break
		}
	}
	l.queued += n
	l.held.Add(int64(n))
	l.load.Add(int64(n))
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return b.commit
}

// appendLocked opens a new batch for shard at the end of the queue; had
// says whether the shard has a batch in the queue already.
func (l *lane) appendLocked(shard uint32, g Grant, had bool) *pendingBatch {
	if had {
		l.split = true
	}
	l.queue = append(l.queue, pendingBatch{
		Batch:  Batch{Shard: shard, Grant: g},
		commit: &Commit{done: make(chan struct{})},
	})
	i := len(l.queue) - 1
	l.open[shard] = i
	return &l.queue[i]
}

// Reserve claims room for ops writes of shard in its lane, or fails at once
// with ErrOverloaded when the lane holds MaxQueueOps writes already
// (queued, in flight and reserved). A caller that applies writes in memory
// before it submits them reserves first, so that a refusal leaves it
// unchanged, and gives the room back with Unreserve once it has submitted
// them (Submit counts them itself) or given up.
func (c *Committer) Reserve(shard uint32, ops int) error {
	l := c.route(shard, ops)
	if l.load.Add(int64(ops)) <= int64(c.cfg.MaxQueueOps) {
		return nil
	}
	l.load.Add(-int64(ops))
	c.unroute(shard, ops)
	c.refused.Add(1)
	return fmt.Errorf("%w: lane %d of the group commit holds %d writes; %d more would pass its limit of %d",
		ErrOverloaded, l.id, l.held.Load(), ops, c.cfg.MaxQueueOps)
}

// Unreserve gives back room that Reserve claimed.
func (c *Committer) Unreserve(shard uint32, ops int) {
	c.unroute(shard, ops).load.Add(-int64(ops))
}

// QueueStats is a snapshot of what the Committer holds.
type QueueStats struct {
	// Ops is the writes submitted and not yet finished (durable, fenced
	// or given up), over all lanes.
	Ops int
	// Refused counts the Reserve calls refused with ErrOverloaded since
	// the Committer started.
	Refused uint64
	// Fenced counts the shard batches the store refused with ErrFenced
	// since the Committer started: writes of a shard whose epoch had moved
	// on, from an owner that had not yet learnt it lost the shard.
	Fenced uint64
}

// Queue returns a snapshot of what the Committer holds.
func (c *Committer) Queue() QueueStats {
	var st QueueStats
	c.mu.Lock()
	for _, l := range c.lanes {
		st.Ops += int(l.held.Load())
	}
	c.mu.Unlock()
	st.Refused = c.refused.Load()
	st.Fenced = c.fenced.Load()
	return st
}

// Close commits what was submitted before it, fails later submissions with
// ErrClosed and stops the Committer's goroutines. After Close a round trip
// that fails is not retried: its cycle, and every later cycle of its lane,
// fail with ErrClosed (their outcome unknown). Close is safe to call twice.
func (c *Committer) Close() error {
	c.once.Do(func() {
		c.mu.Lock()
		c.shut = true
		for _, l := range c.lanes {
			l.mu.Lock()
			l.closing = true
			l.mu.Unlock()
		}
		c.mu.Unlock()
		close(c.quit)
	})
	c.wg.Wait()
	return nil
}

func (l *lane) run() {
	c := l.c
	defer c.wg.Done()
	var spare []pendingBatch
	for {
		select {
		case <-l.wake:
		case <-c.quit:
			// Drain what was submitted before Close.
		}
		if c.cfg.Linger > 0 {
			select {
			case <-time.After(c.cfg.Linger):
			case <-c.quit:
			}
		}
		l.mu.Lock()
		cycle, _ := l.takeLocked(spare[:0])
		more := len(l.queue) > 0
		closing := l.closing
		l.mu.Unlock()
		switch {
		case len(cycle) == 0:
		case l.abandoned != nil:
			for i := range cycle {
				l.done(&cycle[i], l.abandoned)
			}
		default:
			l.abandoned = l.commit(cycle)
		}
		clear(cycle) // drop references to the ops
		spare = cycle
		switch {
		case more:
			// What did not fit is the next cycle, whether or not more
			// is submitted.
			select {
			case l.wake <- struct{}{}:
			default:
			}
		case closing:
			return
		}
	}
}

// takeLocked moves the next cycle from the queue to cycle, which it
// returns with the number of writes it holds. In the common case the
// whole queue fits and the arrays are swapped (double buffering: the
// queue takes cycle's array while the cycle is committed). Otherwise it
// takes, in queue order, each shard's first batch while the cycle has
// room; the rest stay queued, in order.
func (l *lane) takeLocked(cycle []pendingBatch) ([]pendingBatch, int) {
	maxOps := l.c.cfg.MaxCycleOps
	if !l.split && l.queued <= maxOps {
		taken, ops := l.queue, l.queued
		l.queue = cycle
		l.queued = 0
		clear(l.open)
		return taken, ops
	}
	clear(l.seen)
	rest := l.queue[:0] // compacted in place: it never passes the reads
	ops := 0
	for _, b := range l.queue {
		_, dup := l.seen[b.Shard]
		// A shard that did not get in keeps its later batches out too.
		l.seen[b.Shard] = struct{}{}
		if dup || (len(cycle) > 0 && ops+len(b.Ops) > maxOps) {
			rest = append(rest, b)
			continue
		}
		cycle = append(cycle, b)
		ops += len(b.Ops)
	}
	clear(l.queue[len(rest):])
	l.queue = rest
	clear(l.open)
	l.queued, l.split = 0, false
	for i := range rest {
		if _, had := l.open[rest[i].Shard]; had {
			l.split = true
		}
		l.open[rest[i].Shard] = i
		l.queued += len(rest[i].Ops)
	}
	return cycle, ops
}

// commit makes one cycle durable, retrying failed round trips, or gives it
// up (see Committer). It returns the error it gave the cycle's writers if
// it gave the cycle up because the Committer is closing.
func (l *lane) commit(cycle []pendingBatch) error {
	c := l.c
	if len(l.failed) > 0 {
		cycle = l.dropFailed(cycle)
		if len(cycle) == 0 {
			return nil
		}
	}
	batches := make([]Batch, len(cycle))
	ops := 0
	for i := range cycle {
		batches[i] = cycle[i].Batch
		ops += len(cycle[i].Ops)
	}
	start := time.Now()
	backoff := c.cfg.RetryMin
	retries := 0
	for {
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CommitTimeout)
		err := c.st.Commit(ctx, batches)
		cancel()
		if err == nil {
			l.downSince = time.Time{}
			break
		}
		if l.downSince.IsZero() {
			l.downSince = began
		}
		if errors.Is(err, ErrClosed) || c.closing() {
			c.log.Error("group commit abandoned", "batches", len(batches), "ops", ops, "err", err)
			err = fmt.Errorf("%w: outcome of the commit unknown: %w", ErrClosed, err)
			for i := range cycle {
				l.done(&cycle[i], err)
			}
			return err
		}
		down := time.Since(l.downSince)
		if down >= c.cfg.GiveUpAfter {
			c.log.Error("group commit given up", "batches", len(batches), "ops", ops, "retries", retries, "down", down, "err", err)
			err = fmt.Errorf("%w: the store has failed for %v; outcome of the commit unknown: %w",
				ErrUnavailable, down.Round(time.Millisecond), err)
			if c.cfg.OnCommit != nil {
				c.cfg.OnCommit(CommitStats{Batches: len(batches), Ops: ops, Latency: time.Since(start), Retries: retries, Err: err})
			}
			for i := range cycle {
				l.failed[cycle[i].Shard] = failure{cycle[i].Grant, err}
				l.done(&cycle[i], err)
			}
			return nil
		}
		retries++
		wait := min(backoff, c.cfg.GiveUpAfter-down)
		c.log.Warn("group commit failed; retrying", "batches", len(batches), "ops", ops, "retry", retries, "backoff", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-c.quit:
		}
		t.Stop()
		backoff = min(2*backoff, c.cfg.RetryMax)
	}
	if c.cfg.OnCommit != nil {
		c.cfg.OnCommit(CommitStats{Batches: len(batches), Ops: ops, Latency: time.Since(start), Retries: retries})
	}
	for i := range cycle {
		l.done(&cycle[i], batches[i].Err)
	}
	return nil
}

// done ends b with err: its writes leave the lane's counts first, so that
// a submitter woken by its Commit finds the room they took free again
// (a shard replaying page after page reserves its next page at once).
func (l *lane) done(b *pendingBatch, err error) {
	n := int64(len(b.Ops))
	l.held.Add(-n)
	l.load.Add(-n)
	l.c.unroute(b.Shard, len(b.Ops))
	if errors.Is(err, ErrFenced) {
		l.c.fenced.Add(1)
	}
	b.commit.finish(err)
}

// dropFailed fails, unsent, the batches of cycle whose shard had a cycle
// given up under the same Grant, and returns the others. A shard that
// comes back under another Grant is forgotten.
func (l *lane) dropFailed(cycle []pendingBatch) []pendingBatch {
	keep := cycle[:0]
	for _, b := range cycle {
		f, ok := l.failed[b.Shard]
		switch {
		case !ok:
		case f.grant == b.Grant:
			l.done(&b, f.err)
			continue
		default:
			delete(l.failed, b.Shard)
		}
		keep = append(keep, b)
	}
	clear(cycle[len(keep):])
	return keep
}

func (c *Committer) closing() bool {
	select {
	case <-c.quit:
		return true
	default:
		return false
	}
}
