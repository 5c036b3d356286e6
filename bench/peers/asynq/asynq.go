// Package asynqpeer drives github.com/hibiken/asynq as a bench.Target and
// bench.Firer, so that timerd's load generator can measure the alternative
// most users pick today, Redis-backed delayed tasks, against the same
// redis-server.
//
// A timer becomes an asynq task whose type is the timer's topic, whose task
// ID is the timer's ID and which is enqueued with asynq.ProcessAt(due) on a
// queue dedicated to the bench. Subscribe runs an asynq.Server on that queue.
//
// asynq's timing is worth knowing when reading its figures:
//
//   - It stores a scheduled task's due time in whole seconds
//     (ProcessAt(t) scores the task t.Unix()) and its forwarder moves a task
//     to pending once now.Unix() reaches that score, so a task can run up to
//     a second before it is due.
//   - The forwarder polls every DelayedTaskCheckInterval (5 s by default),
//     and the processor sleeps 0.5 to 1.5 × TaskCheckInterval (1 s by
//     default) each time it finds the queues empty, so lateness is bounded
//     by those intervals, not by Redis.
//   - There is no batch enqueue: each task is one EVALSHA round trip. The
//     TaskID uniqueness check is part of that script and costs nothing extra.
package asynqpeer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hibiken/asynq"

	"github.com/timerd/timerd/bench"
)

// Defaults of Options.
const (
	// DefaultQueue is the asynq queue the bench uses when Options.Queue is
	// empty. Cleanup empties it, so it must not be shared with real work.
	DefaultQueue = "timerd-bench"
	// DefaultWorkers is the server's concurrency when Options.Workers is 0.
	DefaultWorkers = 16
)

// maxRetry is how many times a task whose handler fails is retried. It is
// asynq's own default, made explicit so that a redelivery (Attempt > 1)
// is always possible and never depends on a changed library default.
const maxRetry = 25

// Options tunes the peer. The zero value is what an asynq user gets out of
// the box, on the queue DefaultQueue.
type Options struct {
	// Queue is the asynq queue timers are enqueued on and served from;
	// DefaultQueue when empty. It must be dedicated to the bench: Cleanup
	// deletes every task that is not being processed.
	Queue string
	// Workers is the asynq server's Concurrency, the number of tasks
	// handled at once; DefaultWorkers when 0.
	Workers int
	// DelayedTaskCheckInterval is how often the server moves due scheduled
	// tasks to pending; 0 keeps asynq's default (5 s). It bounds lateness,
	// so it is what to change to show asynq at its best.
	DelayedTaskCheckInterval time.Duration
	// TaskCheckInterval is how long, on average, the server waits before
	// polling again when it finds the queue empty; 0 keeps asynq's default
	// (1 s). It also adds to lateness when timers are sparse.
	TaskCheckInterval time.Duration
}

// Target is asynq on one Redis, as a bench.Target and bench.Firer. Its
// methods may be called concurrently.
type Target struct {
	conn      asynq.RedisConnOpt
	addr      string
	opts      Options
	client    *asynq.Client
	inspector *asynq.Inspector

	closeOnce sync.Once
	closeErr  error
}

var (
	_ bench.Target = (*Target)(nil)
	_ bench.Firer  = (*Target)(nil)
)

// New connects to the Redis at redisURL (redis://[user:password@]host:port[/db],
// rediss://, redis-socket://, or a bare host:port) and checks that it
// answers. ctx bounds only that check.
func New(ctx context.Context, redisURL string, opts Options) (*Target, error) {
	if !strings.Contains(redisURL, "://") {
		redisURL = "redis://" + redisURL
	}
	conn, err := asynq.ParseRedisURI(redisURL)
	if err != nil {
		return nil, fmt.Errorf("asynq peer: %w", err)
	}
	if opts.Queue == "" {
		opts.Queue = DefaultQueue
	}
	if opts.Workers <= 0 {
		opts.Workers = DefaultWorkers
	}
	t := &Target{
		conn:      conn,
		addr:      addrOf(conn, redisURL),
		opts:      opts,
		client:    asynq.NewClient(conn),
		inspector: asynq.NewInspector(conn),
	}
	// asynq's Ping takes no context: run it aside so ctx still bounds it.
	ping := make(chan error, 1)
	go func() { ping <- t.client.Ping() }()
	select {
	case err = <-ping:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("asynq peer: ping %s: %w", t.addr, err)
	}
	return t, nil
}

// addrOf returns the address conn reaches, for reports.
func addrOf(conn asynq.RedisConnOpt, redisURL string) string {
	switch c := conn.(type) {
	case asynq.RedisClientOpt:
		return c.Addr
	case asynq.RedisFailoverClientOpt:
		return strings.Join(c.SentinelAddrs, ",")
	}
	// Never report the password a URL may carry.
	if u, err := url.Parse(redisURL); err == nil {
		return u.Redacted()
	}
	return redisURL
}

// Name is "asynq".
func (t *Target) Name() string { return "asynq" }

// Addr is the Redis address.
func (t *Target) Addr() string { return t.addr }

// Schedule enqueues each timer as its own task, one round trip each, as
// asynq offers no batch enqueue. A timer whose ID is already stored counts
// as stored, so that a retried batch is idempotent as it is with timerd;
// unlike timerd, asynq forgets a task's ID once it has run, so enqueuing a
// fired timer again fires it again. A timer already due is enqueued as
// pending and runs at once.
func (t *Target) Schedule(ctx context.Context, timers []bench.Timer) error {
	for _, tm := range timers {
		task := asynq.NewTask(tm.Topic, encode(tm))
		_, err := t.client.EnqueueContext(ctx, task,
			asynq.ProcessAt(tm.Due),
			asynq.TaskID(tm.ID),
			asynq.Queue(t.opts.Queue),
			asynq.MaxRetry(maxRetry),
		)
		if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
			return fmt.Errorf("asynq peer: enqueue %s: %w", tm.ID, err)
		}
	}
	return nil
}

// Subscribe runs an asynq server on the queue until ctx ends, calling fn
// for each task of type topic. A task of any other type is failed, so it
// is retried later (as asynq's ServeMux does for a type it has no handler
// for): run one topic per queue.
func (t *Target) Subscribe(ctx context.Context, topic string, fn func(bench.Delivery)) error {
	srv := asynq.NewServer(t.conn, asynq.Config{
		Concurrency:              t.opts.Workers,
		Queues:                   map[string]int{t.opts.Queue: 1},
		DelayedTaskCheckInterval: t.opts.DelayedTaskCheckInterval,
		TaskCheckInterval:        t.opts.TaskCheckInterval,
		// asynq logs every start and shutdown step at info level; keep
		// only what is worth seeing next to the bench's own output.
		LogLevel: asynq.WarnLevel,
	})
	// An exact match, not asynq.ServeMux, whose patterns match by prefix
	// (topic "t1" would take "t10"'s tasks).
	handler := asynq.HandlerFunc(func(hctx context.Context, task *asynq.Task) error {
		if task.Type() != topic {
			return fmt.Errorf("asynq peer: task type %q is not topic %q", task.Type(), topic)
		}
		id, due, err := decode(task.Payload())
		if err != nil {
			// Not a task the peer wrote: retrying cannot help.
			return fmt.Errorf("asynq peer: %w: %w", err, asynq.SkipRetry)
		}
		retried, _ := asynq.GetRetryCount(hctx)
		fn(bench.Delivery{ID: id, Due: due, Attempt: uint32(retried) + 1})
		return nil
	})
	if err := srv.Start(handler); err != nil {
		return fmt.Errorf("asynq peer: start server: %w", err)
	}
	<-ctx.Done()
	// Shutdown waits for the handlers under way (up to asynq's
	// ShutdownTimeout, 8 s) and for every goroutine the server started.
	srv.Shutdown()
	return nil
}

// Cleanup deletes every task of the queue that is not being processed:
// scheduled, pending, retry and archived. The queue is the bench's alone,
// so that removes the run's leftovers in a few scripts rather than one
// round trip per id. Each script runs over a whole set at once and holds
// Redis while it does, which is fine for an untimed step.
func (t *Target) Cleanup(ctx context.Context, topic string, ids []string) error {
	// asynq's Inspector takes no context; check it between the steps.
	queues, err := t.inspector.Queues()
	if err != nil {
		return fmt.Errorf("asynq peer: cleanup: list queues: %w", err)
	}
	if !slices.Contains(queues, t.opts.Queue) {
		return nil // nothing was ever enqueued there
	}
	steps := []struct {
		state string
		del   func(string) (int, error)
	}{
		{"scheduled", t.inspector.DeleteAllScheduledTasks},
		{"pending", t.inspector.DeleteAllPendingTasks},
		{"retry", t.inspector.DeleteAllRetryTasks},
		{"archived", t.inspector.DeleteAllArchivedTasks},
	}
	for _, s := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("asynq peer: cleanup: %w", err)
		}
		if _, err := s.del(t.opts.Queue); err != nil {
			return fmt.Errorf("asynq peer: cleanup: delete %s tasks: %w", s.state, err)
		}
	}
	return nil
}

// Close closes the client's and the inspector's connections. It is safe to
// call twice; servers started by Subscribe are stopped by their contexts.
func (t *Target) Close() error {
	t.closeOnce.Do(func() {
		t.closeErr = errors.Join(t.client.Close(), t.inspector.Close())
		if t.closeErr != nil {
			t.closeErr = fmt.Errorf("asynq peer: close: %w", t.closeErr)
		}
	})
	return t.closeErr
}

// The task payload is the due time in Unix nanoseconds (8 bytes, big
// endian), the ID's length (uvarint), the ID, then the timer's payload, so
// the stored task is as large as the timer and the handler can report the
// due time the task was enqueued for.
const dueLen = 8

func encode(tm bench.Timer) []byte {
	b := make([]byte, dueLen, dueLen+binary.MaxVarintLen64+len(tm.ID)+len(tm.Payload))
	binary.BigEndian.PutUint64(b, uint64(tm.Due.UnixNano()))
	b = binary.AppendUvarint(b, uint64(len(tm.ID)))
	b = append(b, tm.ID...)
	return append(b, tm.Payload...)
}

var errPayload = errors.New("malformed task payload")

func decode(b []byte) (id string, due time.Time, err error) {
	if len(b) < dueLen {
		return "", time.Time{}, errPayload
	}
	due = time.Unix(0, int64(binary.BigEndian.Uint64(b)))
	n, k := binary.Uvarint(b[dueLen:])
	if k <= 0 || n > uint64(len(b)-dueLen-k) {
		return "", time.Time{}, errPayload
	}
	rest := b[dueLen+k:]
	return string(rest[:n]), due, nil
}
