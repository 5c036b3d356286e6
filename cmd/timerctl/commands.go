package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/timerd/timerd/client"
)

// commands is the command table, in the order of the tool's help.
var commands = []*command{
	{
		name:    "schedule",
		args:    "ID --topic TOPIC (--in DURATION | --at TIME) [--payload TEXT | --payload-file FILE] [--every DURATION]",
		summary: "schedule a timer and print its due time",
		help: `Schedule creates timer ID, due --in a duration from now or --at an absolute
time, to be delivered to the subscribers of --topic with the payload given
by --payload or --payload-file (- reads standard input). --every makes it
repeat at that interval after each acknowledged delivery.

Scheduling an id that exists with the same spec again succeeds and prints
the existing due time; with another spec it fails with AlreadyExists.
Prints the due time the server stored, or with --json {"id","due_time"}.`,
		flags: func(fs *flag.FlagSet) runner {
			c := new(scheduleCmd)
			fs.StringVar(&c.topic, "topic", "", "`topic` the timer is delivered on (required)")
			c.when.register(fs, "due")
			c.payload.register(fs)
			fs.DurationVar(&c.every, "every", 0, "repeat at this `interval` after each acknowledged delivery (0: once)")
			return c
		},
	},
	{
		name:    "reschedule",
		args:    "ID (--in DURATION | --at TIME)",
		summary: "move a timer to a new due time",
		help: `Reschedule moves timer ID to a new due time. A timer that is waiting for
its ack goes back to pending with its attempts reset. A dead letter cannot
be moved (FailedPrecondition): replay it instead. Prints the new due time,
or with --json {"id","due_time"}.`,
		flags: func(fs *flag.FlagSet) runner {
			c := new(rescheduleCmd)
			c.when.register(fs, "due")
			return c
		},
	},
	{
		name:    "cancel",
		args:    "ID...",
		summary: "cancel timers",
		help: `Cancel removes the given timers, whatever their state. An id that does not
exist (or has fired and been acknowledged) fails with NotFound; the others
are still cancelled. Exits 1 if any id failed. With --json prints
{"results":[{"id","code","error"}]}.`,
		flags: func(*flag.FlagSet) runner { return new(cancelCmd) },
	},
	{
		name:    "get",
		args:    "ID",
		summary: "show a timer",
		help: `Get shows timer ID: its state (pending, in-flight or dead), attempts, due
time, topic, interval, payload (as text when it is printable UTF-8, else
base64), shard and creation time. A timer that does not exist fails with
NotFound (exit 1).

With --json prints {"namespace","id","topic","payload_base64","state",
"attempts","due_time","interval","shard","created_time"}, where
"payload_base64" is the payload in standard base64, whatever its bytes.`,
		flags: func(*flag.FlagSet) runner { return new(getCmd) },
	},
	{
		name:    "subscribe",
		args:    "--topic TOPIC [--count N] [--max-in-flight N] [--ack-timeout DURATION] [--max-wait DURATION]",
		summary: "print and acknowledge the deliveries of a topic",
		help: `Subscribe receives the deliveries of --topic and prints each one on stdout
as one JSON object per line, whatever --json says:

  {"delivery_id","namespace","id","topic","payload_base64","due_time",
   "fired_time","attempt","shard","epoch"}

where "payload_base64" is the payload in standard base64, whatever its
bytes ("" when empty): jq -r .payload_base64 | base64 -d gives it back.
Every printed delivery is then acknowledged.

It runs until --count deliveries have been printed, --max-wait has passed
or it is interrupted (Ctrl-C, SIGTERM), and then exits 0; it exits 1 if
--max-wait passes before --count deliveries arrived. Deliveries the server
sends beyond --count are not acknowledged: they go back to the server when
the stream closes and are delivered again (with their attempt counted).
It subscribes again by itself if the stream breaks (the server restarts).`,
		flags: func(fs *flag.FlagSet) runner {
			c := new(subscribeCmd)
			fs.StringVar(&c.topic, "topic", "", "`topic` to receive (required)")
			fs.IntVar(&c.count, "count", 0, "stop after `N` deliveries (0: no limit)")
			fs.IntVar(&c.maxInFlight, "max-in-flight", 100, "most unacknowledged deliveries the server sends at once (`N`)")
			fs.DurationVar(&c.ackTimeout, "ack-timeout", 0, "redeliver what is not acknowledged within this `duration` (0: the server's default)")
			fs.DurationVar(&c.maxWait, "max-wait", 0, "stop after this `duration` (0: no limit)")
			return c
		},
	},
	{
		name:    "dead-letters",
		summary: "list or replay dead letters",
		help: `A dead letter is a timer whose delivery failed the server's maximum
number of attempts. It stays until it is replayed or cancelled.`,
		subs: []*command{
			{
				name:    "dead-letters list",
				args:    "[--topic TOPIC] [--limit N]",
				summary: "list dead letters",
				help: `List shows the dead letters of the namespace (of --topic only, when given):
id, topic, attempts, due time of the failed occurrence, time of the last
attempt and the reason. With --json prints {"dead_letters":[...],"more":bool}
where each entry has the fields of 'timerctl get --json' plus
"last_attempt_time" and "reason".`,
				flags: func(fs *flag.FlagSet) runner {
					c := new(dlListCmd)
					fs.StringVar(&c.topic, "topic", "", "only this `topic` (empty: all)")
					fs.IntVar(&c.limit, "limit", 100, "show at most `N` dead letters (0: all)")
					return c
				},
			},
			{
				name:    "dead-letters replay",
				args:    "[--topic TOPIC] [--in DURATION | --at TIME] [ID...]",
				summary: "deliver dead letters again",
				help: `Replay moves dead letters back to pending, with their attempts reset, due
at once or --in/--at the given time. With ids it replays those (an id that
is not a dead letter fails with FailedPrecondition, an unknown one with
NotFound; exit 1 if any failed); without, every dead letter of the namespace
(and of --topic, when given). With --json prints
{"replayed":N,"results":[{"id","code","due_time","error"}]}.`,
				flags: func(fs *flag.FlagSet) runner {
					c := new(dlReplayCmd)
					fs.StringVar(&c.topic, "topic", "", "only dead letters of this `topic` (empty: all)")
					c.when.register(fs, "due")
					return c
				},
			},
		},
	},
	{
		name:    "status",
		args:    "[--limit N] [--shards]",
		summary: "show the cluster's members and shard map",
		help: `Status shows, as the node at --addr sees them, the members of the cluster
(name, gRPC address, membership and node state, shards assigned to it by
the ring, owned and served by it, and the timers, in flight and dead
letters of the shards it has loaded), then a summary of the shard map,
then the shards that are moving (owned, but not served by the node they
are assigned to: held by another, loading, releasing, or of an owner that
did not answer) and the shards without an owner, at most --limit of each.
--shards adds a table of every shard with its timer counts ("-" for a
shard that is not loaded). A cluster is settled when nothing is moving and
every shard has an owner: wait for that between the nodes of a rolling
restart.

With --json prints one object, whatever --limit says:

  {"shard_count","version",
   "members":[{"name","grpc_addr","gossip_addr","state","node_state",
     "incarnation","assigned","owned","serving","timers","in_flight","dead"}],
   "settled":N,"moving":[SHARD...],"unowned":[SHARD...],"shards":[SHARD...]}

where SHARD is {"shard","owner","owner_grpc_addr","epoch","state",
"assigned","timers","in_flight","dead"} and "settled" counts the shards
served where the ring assigns them.`,
		flags: func(fs *flag.FlagSet) runner {
			c := new(statusCmd)
			fs.IntVar(&c.limit, "limit", 20, "list at most `N` moving shards and N without an owner (0: all)")
			fs.BoolVar(&c.shards, "shards", false, "list every shard with its owner, state and timer counts")
			return c
		},
	},
	benchCommand,
}

// dial returns a client of the node at --addr.
func (a *app) dial(ctx context.Context, opts ...client.Option) (*client.Client, error) {
	sec, err := a.sec.options(a.addr)
	if err != nil {
		return nil, err
	}
	return client.New(ctx, a.addr, append(sec, opts...)...)
}

// connect dials the node and returns the client with ctx bounded by
// --timeout; done closes both.
func (a *app) connect(ctx context.Context) (*client.Client, context.Context, func(), error) {
	cl, err := a.dial(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := a.callCtx(ctx)
	return cl, ctx, func() { cancel(); _ = cl.Close() }, nil
}

// callCtx bounds the calls of a command by --timeout.
func (a *app) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

func (a *app) clock() time.Time {
	if a.now != nil {
		return a.now()
	}
	return time.Now()
}

// wantArgs checks the number of positional arguments.
func wantArgs(args []string, min, max int, what string) error {
	switch {
	case len(args) < min:
		return usagef("missing %s", what)
	case max >= 0 && len(args) > max:
		return usagef("unexpected argument %q", args[max])
	}
	return nil
}

type scheduleCmd struct {
	topic   string
	when    whenFlags
	payload payloadFlags
	every   time.Duration
	due     time.Time
	delay   time.Duration
}

func (c *scheduleCmd) check(fs *flag.FlagSet, args []string) error {
	if err := wantArgs(args, 1, 1, "the timer ID"); err != nil {
		return err
	}
	if c.topic == "" {
		return usagef("missing --topic")
	}
	if c.every < 0 {
		return usagef("--every %v is negative", c.every)
	}
	if err := c.payload.check(fs); err != nil {
		return err
	}
	var err error
	c.due, c.delay, err = c.when.resolve(fs, true)
	return err
}

func (c *scheduleCmd) run(ctx context.Context, a *app, args []string) error {
	payload, err := c.payload.read(a.stdin)
	if err != nil {
		return err
	}
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	due, err := cl.Schedule(ctx, client.Timer{
		Namespace: a.namespace, ID: args[0], Topic: c.topic,
		Due: c.due, Delay: c.delay, Payload: payload, Interval: c.every,
	})
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.stdout, dueView{ID: args[0], DueTime: jsonTime(due)})
	}
	_, err = fmt.Fprintf(a.stdout, "scheduled %s: due %s\n", args[0], humanDue(due, a.clock()))
	return err
}

type rescheduleCmd struct {
	when  whenFlags
	due   time.Time
	delay time.Duration
}

func (c *rescheduleCmd) check(fs *flag.FlagSet, args []string) error {
	if err := wantArgs(args, 1, 1, "the timer ID"); err != nil {
		return err
	}
	var err error
	c.due, c.delay, err = c.when.resolve(fs, true)
	return err
}

func (c *rescheduleCmd) run(ctx context.Context, a *app, args []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	var due time.Time
	if c.due.IsZero() {
		due, err = cl.RescheduleIn(ctx, a.namespace, args[0], c.delay)
	} else {
		due, err = cl.Reschedule(ctx, a.namespace, args[0], c.due)
	}
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.stdout, dueView{ID: args[0], DueTime: jsonTime(due)})
	}
	_, err = fmt.Fprintf(a.stdout, "rescheduled %s: due %s\n", args[0], humanDue(due, a.clock()))
	return err
}

type cancelCmd struct{}

func (c *cancelCmd) check(_ *flag.FlagSet, args []string) error {
	return wantArgs(args, 1, -1, "the IDs of the timers to cancel")
}

func (c *cancelCmd) run(ctx context.Context, a *app, args []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	res, err := cl.Cancel(ctx, a.namespace, args...)
	if err != nil {
		return err
	}
	return a.results("cancel", "cancelled", res, 0, false)
}

// results prints the outcome of the items of a batch: successes on
// stdout (or all of them as JSON), failures on stderr. It returns a
// failedError when an item failed.
func (a *app) results(op, verb string, res []client.Result, replayed uint64, withReplayed bool) error {
	failed := 0
	for _, r := range res {
		if r.Err != nil {
			failed++
			fmt.Fprintf(a.stderr, "timerctl %s: %s: %s\n", op, r.ID, errorText(r.Err))
		}
	}
	var err error
	switch {
	case a.json && withReplayed:
		err = writeJSON(a.stdout, replayView{Replayed: replayed, Results: resultViews(res)})
	case a.json:
		err = writeJSON(a.stdout, resultsView{Results: resultViews(res)})
	default:
		err = writeResults(a.stdout, verb, res, a.clock())
		if err == nil && withReplayed {
			_, err = fmt.Fprintf(a.stdout, "replayed %d dead letter(s)\n", replayed)
		}
	}
	if err != nil {
		return err
	}
	if failed > 0 {
		return &failedError{failed, len(res)}
	}
	return nil
}

type getCmd struct{}

func (c *getCmd) check(_ *flag.FlagSet, args []string) error {
	return wantArgs(args, 1, 1, "the timer ID")
}

func (c *getCmd) run(ctx context.Context, a *app, args []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	t, err := cl.Get(ctx, a.namespace, args[0])
	if err != nil {
		return err
	}
	if a.json {
		return writeJSON(a.stdout, timerViewOf(t))
	}
	return writeTimer(a.stdout, t, a.clock())
}

type subscribeCmd struct {
	topic       string
	count       int
	maxInFlight int
	ackTimeout  time.Duration
	maxWait     time.Duration
}

func (c *subscribeCmd) check(_ *flag.FlagSet, args []string) error {
	switch {
	case len(args) > 0:
		return usagef("unexpected argument %q", args[0])
	case c.topic == "":
		return usagef("missing --topic")
	case c.count < 0:
		return usagef("--count %d is negative", c.count)
	case c.maxInFlight < 1:
		return usagef("--max-in-flight must be at least 1, got %d", c.maxInFlight)
	case c.ackTimeout < 0:
		return usagef("--ack-timeout %v is negative", c.ackTimeout)
	case c.maxWait < 0:
		return usagef("--max-wait %v is negative", c.maxWait)
	}
	return nil
}

// errBeyondCount leaves a delivery past --count unacknowledged.
var errBeyondCount = errors.New("beyond --count")

func (c *subscribeCmd) run(ctx context.Context, a *app, _ []string) error {
	logger := slog.New(slog.NewTextHandler(a.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cl, err := a.dial(ctx, client.WithLogger(logger))
	if err != nil {
		return err
	}
	defer cl.Close()

	// The subscription itself retries while the node is unreachable; a
	// first call reports a wrong address at once.
	cctx, ccancel := a.callCtx(ctx)
	_, err = cl.Members(cctx)
	ccancel()
	if err != nil {
		return fmt.Errorf("connect to %s: %w", a.addr, err)
	}

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	if c.maxWait > 0 {
		sctx, stop = context.WithTimeout(sctx, c.maxWait)
		defer stop()
	}
	credit := c.maxInFlight
	if c.count > 0 {
		credit = min(credit, c.count)
	}
	var (
		mu       sync.Mutex
		got      int
		writeErr error
	)
	handler := func(_ context.Context, d *client.Delivery) error {
		mu.Lock()
		defer mu.Unlock()
		if writeErr != nil || (c.count > 0 && got >= c.count) {
			return errBeyondCount
		}
		if err := writeJSON(a.stdout, deliveryViewOf(d)); err != nil {
			writeErr = err
			stop()
			return err
		}
		got++
		if c.count > 0 && got >= c.count {
			stop()
		}
		return nil
	}
	opts := []client.SubscribeOption{client.WithWorkers(1), client.WithMaxInFlight(credit)}
	if c.ackTimeout > 0 {
		opts = append(opts, client.WithAckTimeout(c.ackTimeout))
	}
	err = cl.Subscribe(sctx, a.namespace, c.topic, handler, opts...)
	mu.Lock()
	defer mu.Unlock()
	switch {
	case err != nil:
		return err
	case writeErr != nil:
		return fmt.Errorf("write a delivery: %w", writeErr)
	case ctx.Err() == nil && c.count > 0 && got < c.count:
		return fmt.Errorf("received %d of %d deliveries within --max-wait %v", got, c.count, c.maxWait)
	}
	return nil
}

type dlListCmd struct {
	topic string
	limit int
}

func (c *dlListCmd) check(_ *flag.FlagSet, args []string) error {
	switch {
	case len(args) > 0:
		return usagef("unexpected argument %q", args[0])
	case c.limit < 0:
		return usagef("--limit %d is negative", c.limit)
	}
	return nil
}

func (c *dlListCmd) run(ctx context.Context, a *app, _ []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	var list []client.DeadLetter
	more := false
	for dl, err := range cl.DeadLetters(ctx, a.namespace, c.topic) {
		if err != nil {
			return err
		}
		if c.limit > 0 && len(list) == c.limit {
			more = true
			break
		}
		list = append(list, dl)
	}
	if a.json {
		v := deadLettersView{DeadLetters: make([]deadLetterView, len(list)), More: more}
		for i, dl := range list {
			v.DeadLetters[i] = deadLetterViewOf(dl)
		}
		return writeJSON(a.stdout, v)
	}
	if err := writeDeadLetters(a.stdout, list, a.clock()); err != nil {
		return err
	}
	if more {
		fmt.Fprintf(a.stderr, "timerctl dead-letters list: more than %d dead letters; only the first %d are shown (see --limit)\n", c.limit, c.limit)
	}
	return nil
}

type dlReplayCmd struct {
	topic string
	when  whenFlags
	due   time.Time
	delay time.Duration
}

func (c *dlReplayCmd) check(fs *flag.FlagSet, _ []string) error {
	var err error
	c.due, c.delay, err = c.when.resolve(fs, false)
	return err
}

func (c *dlReplayCmd) run(ctx context.Context, a *app, args []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	res, err := cl.ReplayDeadLetters(ctx, client.Replay{
		Namespace: a.namespace, Topic: c.topic, IDs: args, Due: c.due, Delay: c.delay,
	})
	if err != nil {
		return err
	}
	return a.results("dead-letters replay", "replayed", res.Results, res.Replayed, true)
}

type statusCmd struct {
	limit  int
	shards bool
}

func (c *statusCmd) check(_ *flag.FlagSet, args []string) error {
	switch {
	case len(args) > 0:
		return usagef("unexpected argument %q", args[0])
	case c.limit < 0:
		return usagef("--limit %d is negative", c.limit)
	}
	return nil
}

func (c *statusCmd) run(ctx context.Context, a *app, _ []string) error {
	cl, ctx, done, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer done()
	members, err := cl.Members(ctx)
	if err != nil {
		return err
	}
	sm, err := cl.ShardMap(ctx)
	if err != nil {
		return err
	}
	v := statusViewOf(members, sm)
	if a.json {
		return writeJSON(a.stdout, v)
	}
	return writeStatus(a.stdout, v, c.limit, c.shards)
}
