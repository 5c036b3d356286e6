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
// ErrFenced when the store refused the shard's epoch, or ErrClosed when the
// Committer closed before the writes could be made durable.
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
// submit concurrently into one Store.Commit per cycle, carrying every
// shard's pending writes in one round trip, and answers each submitter
// once its writes are durable. One cycle runs at a time, so writes reach
// the store in the order they were submitted.
//
// Submit may be called concurrently from many goroutines; Close may be
// called concurrently with Submit and more than once.
type Committer struct {
	st   Store
	cfg  CommitterConfig
	log  *slog.Logger
	wake chan struct{} // cap 1: something was submitted
	quit chan struct{} // closed by Close
	done chan struct{} // closed when run returns

	mu sync.Mutex
	// queue holds the batches of the next cycle in submission order.
	// Invariant: open[shard] is the index in queue of that shard's batch
	// still taking writes, which has fewer than MaxBatchOps ops.
	queue   []pendingBatch
	open    map[uint32]int
	closing bool
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
	c := &Committer{
		st:   st,
		cfg:  cfg,
		log:  log,
		wake: make(chan struct{}, 1),
		quit: make(chan struct{}),
		done: make(chan struct{}),
		open: make(map[uint32]int),
	}
	go c.run()
	return c, nil
}

// Submit queues ops, made under epoch, for shard's next batch and returns
// the Commit that reports their outcome. The Committer takes ownership of
// ops. Ops submitted for one shard reach the store in submission order.
func (c *Committer) Submit(shard uint32, epoch uint64, ops []Op) *Commit {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		cm := &Commit{done: make(chan struct{})}
		cm.finish(ErrClosed)
		return cm
	}
	i, ok := c.open[shard]
	if ok && (c.queue[i].Epoch != epoch || len(c.queue[i].Ops)+len(ops) > c.cfg.MaxBatchOps) && len(c.queue[i].Ops) > 0 {
		ok = false
	}
	if !ok {
		c.queue = append(c.queue, pendingBatch{
			Batch:  Batch{Shard: shard, Epoch: epoch},
			commit: &Commit{done: make(chan struct{})},
		})
		i = len(c.queue) - 1
		c.open[shard] = i
	}
	b := &c.queue[i]
	if b.Ops == nil {
		b.Ops = ops
	} else {
		b.Ops = append(b.Ops, ops...)
	}
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return b.commit
}

// Close commits what was submitted before it, fails later submissions with
// ErrClosed and stops the Committer's goroutine. A cycle whose round trip
// keeps failing is given up with the error. Close is safe to call twice.
func (c *Committer) Close() error {
	c.mu.Lock()
	if !c.closing {
		c.closing = true
		close(c.quit)
	}
	c.mu.Unlock()
	<-c.done
	return nil
}

func (c *Committer) run() {
	defer close(c.done)
	var spare []pendingBatch
	for {
		select {
		case <-c.wake:
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
		c.mu.Lock()
		cycle := c.queue
		c.queue = spare[:0]
		clear(c.open)
		closing := c.closing
		c.mu.Unlock()
		if len(cycle) > 0 {
			c.commit(cycle)
		}
		clear(cycle) // drop references to the ops
		spare = cycle
		if closing {
			c.mu.Lock()
			empty := len(c.queue) == 0
			c.mu.Unlock()
			if empty {
				return
			}
		}
	}
}

// commit makes one cycle durable, retrying failed round trips.
func (c *Committer) commit(cycle []pendingBatch) {
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
		if errors.Is(err, ErrClosed) || c.isClosing() {
			c.log.Error("group commit abandoned", "batches", len(batches), "ops", ops, "err", err)
			for i := range cycle {
				cycle[i].commit.finish(fmt.Errorf("%w: commit not made durable: %w", ErrClosed, err))
			}
			return
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
}

func (c *Committer) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}
