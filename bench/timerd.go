package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/timerd/timerd/client"
)

// TimerdOptions are the settings of the timerd target that are not the
// run's: where its timers live and how its subscriber takes deliveries.
type TimerdOptions struct {
	// Namespace of the run's timers (default "bench").
	Namespace string
	// MaxInFlight is the subscriber's credit: deliveries the server may
	// have outstanding on the stream (default 1,000, the client's).
	MaxInFlight int
	// Workers is the number of handler goroutines (default 16).
	Workers int
}

// Timerd is timerd driven through its Go client, the target of every
// scenario. Its methods may be called concurrently.
type Timerd struct {
	c    *client.Client
	addr string
	opts TimerdOptions

	closeOnce sync.Once
	closeErr  error
}

// NewTimerd returns the timerd target on c, which it owns from then on
// (Close closes it); addr is the address c was dialled with.
func NewTimerd(c *client.Client, addr string, opts TimerdOptions) *Timerd {
	if opts.Namespace == "" {
		opts.Namespace = "bench"
	}
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = 1000
	}
	if opts.Workers == 0 {
		opts.Workers = 16
	}
	return &Timerd{c: c, addr: addr, opts: opts}
}

// Name implements Target.
func (t *Timerd) Name() string { return "timerd" }

// Addr implements Target.
func (t *Timerd) Addr() string { return t.addr }

// Schedule implements Target with one ScheduleBatch call.
func (t *Timerd) Schedule(ctx context.Context, timers []Timer) error {
	batch := make([]client.Timer, len(timers))
	for i, tm := range timers {
		batch[i] = client.Timer{Namespace: t.opts.Namespace, ID: tm.ID, Topic: tm.Topic, Due: tm.Due, Payload: tm.Payload}
	}
	res, err := t.c.ScheduleBatch(ctx, batch)
	if err != nil {
		return err
	}
	for _, r := range res {
		if r.Err != nil {
			return fmt.Errorf("timer %s: %w", r.ID, r.Err)
		}
	}
	return nil
}

// Subscribe implements Firer with the client's Subscribe; every delivery
// is acknowledged.
func (t *Timerd) Subscribe(ctx context.Context, topic string, fn func(Delivery)) error {
	return t.c.Subscribe(ctx, t.opts.Namespace, topic, func(_ context.Context, d *client.Delivery) error {
		fn(Delivery{ID: d.ID, Due: d.Due, Fired: d.Fired, Attempt: d.Attempt})
		return nil
	}, client.WithMaxInFlight(t.opts.MaxInFlight), client.WithWorkers(t.opts.Workers))
}

// Cancel implements Mutator with one Cancel call.
func (t *Timerd) Cancel(ctx context.Context, ids []string, ok []bool) error {
	res, err := t.c.Cancel(ctx, t.opts.Namespace, ids...)
	for i, r := range res {
		ok[i] = r.Err == nil
	}
	return err
}

// Reschedule implements Mutator with one RescheduleBatch call.
func (t *Timerd) Reschedule(ctx context.Context, ids []string, due []time.Time, ok []bool) error {
	moves := make([]client.Move, len(ids))
	for i, id := range ids {
		moves[i] = client.Move{ID: id, Due: due[i]}
	}
	res, err := t.c.RescheduleBatch(ctx, t.opts.Namespace, moves)
	for i, r := range res {
		ok[i] = r.Err == nil
	}
	return err
}

// Cleanup implements Target by cancelling the ids in batches of 1,000; an
// id already gone is no error.
func (t *Timerd) Cleanup(ctx context.Context, _ string, ids []string) error {
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		res, err := t.c.Cancel(ctx, t.opts.Namespace, ids[:n]...)
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.Err != nil && !errors.Is(r.Err, client.ErrNotFound) {
				return fmt.Errorf("cancel %s: %w", r.ID, r.Err)
			}
		}
		ids = ids[n:]
	}
	return nil
}

// Close implements Target by closing the client.
func (t *Timerd) Close() error {
	t.closeOnce.Do(func() { t.closeErr = t.c.Close() })
	return t.closeErr
}
