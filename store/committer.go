package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
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
	Lanes int
	// MaxBatchOps caps the writes of one shard in one Batch (default
	// 4096); more are cut into further batches of the same cycle, which
	// the store applies in order. It bounds how long one script holds a
	// Redis server's only thread.
	MaxBatchOps int
	// CommitTimeout bounds one Store.Commit round trip (default 10s).
	CommitTimeout time.Duration
	// RetryMin and RetryMax bound the backoff between attempts of a cycle
	// whose round trip failed (defaults 5ms and 1s). A cycle is retried
	// until it succeeds or the Committer closes: every write is
	// idempotent, and a shard that cannot reach its store loses its lease,
	// which fences what is still queued.
	RetryMin, RetryMax time.Duration
	// Logger receives failed round trips. Default: discard.
	Logger *slog.Logger
	// OnCommit, if set, is called from the Committer's goroutine after
	// every cycle, for metrics. It must not block.
	OnCommit func(CommitStats)
}

// CommitStats describes one commit cycle.
type CommitStats struct {
	Batches int           // shard batches in the cycle
	Ops     int           // writes in the cycle
	Latency time.Duration // from the cycle's start to durable, retries included
	Retries int           // failed round trips before the one that succeeded
}

// DefaultCommitterConfig returns the defaults documented on CommitterConfig.
func DefaultCommitterConfig() CommitterConfig {
	return CommitterConfig{
		Lanes:         2,
		MaxBatchOps:   4096,
		CommitTimeout: 10 * time.Second,
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
	case c.CommitTimeout <= 0:
		return fmt.Errorf("%w: CommitTimeout must be > 0, got %v", ErrInvalidConfig, c.CommitTimeout)
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
// ErrFenced when the store refused the shard's Grant, or wrapping ErrClosed
// when the Committer closed before it knew (the writes may or may not have
// been applied).
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
// Submit may be called concurrently from many goroutines; Close may be
// called concurrently with Submit and more than once.
type Committer struct {
	st    Store
	cfg   CommitterConfig
	log   *slog.Logger
	lanes []*lane
	quit  chan struct{} // closed by Close
	wg    sync.WaitGroup
	once  sync.Once
}

// lane commits the writes of the shards routed to it, one cycle at a time.
type lane struct {
	c    *Committer
	wake chan struct{} // cap 1: something was submitted

	mu sync.Mutex
	// queue holds the batches of the next cycle in submission order.
	// Invariant: open[shard] is the index in queue of that shard's batch
	// still taking writes, whose Grant is the one it was opened with.
	queue   []pendingBatch
	open    map[uint32]int
	closing bool
	// abandoned is set when a cycle was given up at Close: later cycles
	// are failed with it rather than committed, since committing them
	// could apply a shard's later writes without its earlier ones.
	abandoned error
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
	for range cfg.Lanes {
		l := &lane{c: c, wake: make(chan struct{}, 1), open: make(map[uint32]int)}
		c.lanes = append(c.lanes, l)
		c.wg.Add(1)
		go l.run()
	}
	return c, nil
}

// Submit queues ops, made under g, for shard's next batch and returns the
// Commit that reports their outcome. The Committer takes ownership of
// ops. Ops submitted for one shard reach the store in submission order.
func (c *Committer) Submit(shard uint32, g Grant, ops []Op) *Commit {
	l := c.lanes[shard%uint32(len(c.lanes))]
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		cm := &Commit{done: make(chan struct{})}
		cm.finish(ErrClosed)
		return cm
	}
	i, ok := l.open[shard]
	if ok {
		b := &l.queue[i]
		ok = b.Grant == g && (len(b.Ops) == 0 || len(b.Ops)+len(ops) <= c.cfg.MaxBatchOps)
	}
	if !ok {
		l.queue = append(l.queue, pendingBatch{
			Batch:  Batch{Shard: shard, Grant: g},
			commit: &Commit{done: make(chan struct{})},
		})
		i = len(l.queue) - 1
		l.open[shard] = i
	}
	b := &l.queue[i]
	if b.Ops == nil {
		b.Ops = ops
	} else {
		b.Ops = append(b.Ops, ops...)
	}
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return b.commit
}

// Close commits what was submitted before it, fails later submissions with
// ErrClosed and stops the Committer's goroutines. After Close a round trip
// that fails is not retried: its cycle, and every later cycle of its lane,
// fail with ErrClosed (their outcome unknown). Close is safe to call twice.
func (c *Committer) Close() error {
	c.once.Do(func() {
		for _, l := range c.lanes {
			l.mu.Lock()
			l.closing = true
			l.mu.Unlock()
		}
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
		// Double buffering: the queue takes the spare array while the
		// cycle is committed, and the cycle's array becomes the spare.
		l.mu.Lock()
		cycle := l.queue
		l.queue = spare[:0]
		clear(l.open)
		closing := l.closing
		l.mu.Unlock()
		switch {
		case len(cycle) == 0:
		case l.abandoned != nil:
			for i := range cycle {
				cycle[i].commit.finish(l.abandoned)
			}
		default:
			l.abandoned = c.commit(cycle)
		}
		clear(cycle) // drop references to the ops
		spare = cycle
		if closing {
			l.mu.Lock()
			empty := len(l.queue) == 0
			l.mu.Unlock()
			if empty {
				return
			}
		}
	}
}

// commit makes one cycle durable, retrying failed round trips. It returns
// the error it gave the cycle's writers if it gave the cycle up (only
// once Close has been called).
func (c *Committer) commit(cycle []pendingBatch) error {
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
		ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CommitTimeout)
		err := c.st.Commit(ctx, batches)
		cancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrClosed) || c.closing() {
			c.log.Error("group commit abandoned", "batches", len(batches), "ops", ops, "err", err)
			err = fmt.Errorf("%w: outcome of the commit unknown: %w", ErrClosed, err)
			for i := range cycle {
				cycle[i].commit.finish(err)
			}
			return err
		}
		retries++
		c.log.Warn("group commit failed; retrying", "batches", len(batches), "ops", ops, "retry", retries, "backoff", backoff, "err", err)
		select {
		case <-time.After(backoff):
		case <-c.quit:
		}
		backoff = min(2*backoff, c.cfg.RetryMax)
	}
	for i := range cycle {
		cycle[i].commit.finish(batches[i].Err)
	}
	if c.cfg.OnCommit != nil {
		c.cfg.OnCommit(CommitStats{Batches: len(batches), Ops: ops, Latency: time.Since(start), Retries: retries})
	}
	return nil
}

func (c *Committer) closing() bool {
	select {
	case <-c.quit:
		return true
	default:
		return false
	}
}
