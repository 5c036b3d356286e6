package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/timerd/timerd/client"
	"github.com/timerd/timerd/ring"
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
// scenario: one node, or a cluster reached through a seed node and a
// client of each of its other members. Its methods may be called
// concurrently.
type Timerd struct {
	// nodes are the clients, the seed's first; addrs their addresses.
	nodes []*client.Client
	addrs []string
	opts  TimerdOptions
	// pref is the index of the node the calls go to first: the seed until
	// it fails as unavailable (a node failover killed), then the next.
	pref atomic.Int32

	closeOnce sync.Once
	closeErr  error
}

// NewTimerd returns the timerd target on c, which it owns from then on
// (Close closes it); addr is the address c was dialled with. Every call
// and the subscription go to that node: DialTimerd reaches a cluster.
func NewTimerd(c *client.Client, addr string, opts TimerdOptions) *Timerd {
	return newTimerd([]*client.Client{c}, []string{addr}, opts)
}

func newTimerd(nodes []*client.Client, addrs []string, opts TimerdOptions) *Timerd {
	if opts.Namespace == "" {
		opts.Namespace = "bench"
	}
	if opts.MaxInFlight == 0 {
		opts.MaxInFlight = 1000
	}
	if opts.Workers == 0 {
		opts.Workers = 16
	}
	return &Timerd{nodes: nodes, addrs: addrs, opts: opts}
}

// subscribePerNode says that a subscription reaches only the shards of
// the node its stream is open on, so Subscribe opens one on every member.
// It is false: the client subscribes to every member itself, so one
// Subscribe call on the seed receives the whole cluster's timers. It is
// the only place that knows.
const subscribePerNode = false

// ReconnectWithin is the longest the target's clients wait before they
// dial a lost node again (50ms at first, growing to it), and its streams
// before they subscribe again: the resolution of what recovery and
// failover see of a node coming back. Applications on the client's
// defaults (up to 5s) notice it later.
const ReconnectWithin = 500 * time.Millisecond

// DialTimerd connects to the timerd at addrs and checks that it answers
// within ctx. With one address it asks that node for the cluster's
// members and connects to each of theirs too; with several, those are the
// members. The first is the seed, where every call but Subscribe goes
// while it answers. copts are added to the options of every client.
func DialTimerd(ctx context.Context, addrs []string, opts TimerdOptions, copts ...client.Option) (*Timerd, error) {
	if len(addrs) == 0 || slices.Contains(addrs, "") {
		return nil, fmt.Errorf("%w: no address, or an empty one in %q", ErrConfig, addrs)
	}
	addrs = slices.Clone(addrs)
	copts = append(slices.Clip(copts), client.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: ReconnectWithin},
		MinConnectTimeout: 5 * time.Second,
	})))
	var nodes []*client.Client
	closeAll := func() {
		for _, c := range nodes {
			_ = c.Close()
		}
	}
	dial := func(addr string) error {
		c, err := client.New(ctx, addr, copts...)
		if err != nil {
			return err
		}
		nodes = append(nodes, c)
		return nil
	}
	if err := dial(addrs[0]); err != nil {
		return nil, err
	}
	members, err := nodes[0].Members(ctx)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("connect to %s: %w", addrs[0], err)
	}
	if len(addrs) == 1 {
		for _, m := range members {
			if m.GRPCAddr != "" && m.GRPCAddr != addrs[0] && m.State == client.MemberAlive && !slices.Contains(addrs, m.GRPCAddr) {
				addrs = append(addrs, m.GRPCAddr)
			}
		}
	}
	for _, a := range addrs[1:] {
		if err := dial(a); err != nil {
			closeAll()
			return nil, err
		}
	}
	return newTimerd(nodes, addrs, opts), nil
}

// Name implements Target.
func (t *Timerd) Name() string { return "timerd" }

// Addr implements Target: the seed's address, then the other members'.
func (t *Timerd) Addr() string { return strings.Join(t.addrs, ",") }

// call runs fn on the preferred node's client and, while it fails as
// unavailable (the node is down, and the client's retries are spent), on
// the next nodes in turn; the node that answered is preferred from then
// on. fn must be safe to repeat.
func (t *Timerd) call(ctx context.Context, fn func(c *client.Client) error) error {
	first := int(t.pref.Load())
	var err error
	for i := range t.nodes {
		k := (first + i) % len(t.nodes)
		if err = fn(t.nodes[k]); err == nil || !errors.Is(err, client.ErrUnavailable) || ctx.Err() != nil {
			if err == nil && k != first {
				t.pref.Store(int32(k))
			}
			return err
		}
	}
	return err
}

// Schedule implements Target with one ScheduleBatch call.
func (t *Timerd) Schedule(ctx context.Context, timers []Timer) error {
	batch := make([]client.Timer, len(timers))
	for i, tm := range timers {
		batch[i] = client.Timer{Namespace: t.opts.Namespace, ID: tm.ID, Topic: tm.Topic, Due: tm.Due, Payload: tm.Payload}
	}
	return t.call(ctx, func(c *client.Client) error {
		res, err := c.ScheduleBatch(ctx, batch)
		if err != nil {
			return err
		}
		for _, r := range res {
			if r.Err != nil {
				return fmt.Errorf("timer %s: %w", r.ID, r.Err)
			}
		}
		return nil
	})
}

// Subscribe implements Firer with the client's Subscribe, on every node
// while subscribePerNode holds; every delivery is acknowledged. It
// returns nil once ctx ends, or the first stream's error that is not
// transient, which ends the others.
func (t *Timerd) Subscribe(ctx context.Context, topic string, fn func(Delivery)) error {
	nodes := t.nodes
	if !subscribePerNode {
		nodes = nodes[:1]
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(nodes))
	for _, c := range nodes {
		go func() {
			err := c.Subscribe(ctx, t.opts.Namespace, topic, func(_ context.Context, d *client.Delivery) error {
				fn(Delivery{ID: d.ID, Due: d.Due, Fired: d.Fired, Attempt: d.Attempt, Shard: d.Shard, Epoch: d.Epoch})
				return nil
			}, client.WithMaxInFlight(t.opts.MaxInFlight), client.WithWorkers(t.opts.Workers),
				client.WithReconnectBackoff(50*time.Millisecond, ReconnectWithin))
			if err != nil {
				cancel()
			}
			errs <- err
		}()
	}
	var first error
	for range nodes {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Cancel implements Mutator with one Cancel call.
func (t *Timerd) Cancel(ctx context.Context, ids []string, ok []bool) error {
	return t.call(ctx, func(c *client.Client) error {
		res, err := c.Cancel(ctx, t.opts.Namespace, ids...)
		for i, r := range res {
			ok[i] = r.Err == nil
		}
		return err
	})
}

// Reschedule implements Mutator with one RescheduleBatch call.
func (t *Timerd) Reschedule(ctx context.Context, ids []string, due []time.Time, ok []bool) error {
	moves := make([]client.Move, len(ids))
	for i, id := range ids {
		moves[i] = client.Move{ID: id, Due: due[i]}
	}
	return t.call(ctx, func(c *client.Client) error {
		res, err := c.RescheduleBatch(ctx, t.opts.Namespace, moves)
		for i, r := range res {
			ok[i] = r.Err == nil
		}
		return err
	})
}

// Cleanup implements Target by cancelling the ids in batches of 1,000; an
// id already gone is no error.
func (t *Timerd) Cleanup(ctx context.Context, _ string, ids []string) error {
	for len(ids) > 0 {
		n := min(len(ids), 1000)
		err := t.call(ctx, func(c *client.Client) error {
			res, err := c.Cancel(ctx, t.opts.Namespace, ids[:n]...)
			if err != nil {
				return err
			}
			for _, r := range res {
				if r.Err != nil && !errors.Is(r.Err, client.ErrNotFound) {
					return fmt.Errorf("cancel %s: %w", r.ID, r.Err)
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		ids = ids[n:]
	}
	return nil
}

// Layout implements Cluster with the Members and ShardMap of the first
// node that answers.
func (t *Timerd) Layout(ctx context.Context) (Layout, error) {
	var l Layout
	err := t.call(ctx, func(c *client.Client) error {
		ms, err := c.Members(ctx)
		if err != nil {
			return err
		}
		sm, err := c.ShardMap(ctx)
		if err != nil {
			return err
		}
		l = Layout{Members: make([]MemberInfo, len(ms)), Shards: make([]ShardInfo, sm.ShardCount)}
		for i, m := range ms {
			l.Members[i] = MemberInfo{Name: m.Name, Incarnation: m.Incarnation, Alive: m.State == client.MemberAlive, Active: m.NodeState == client.NodeActive}
		}
		for _, s := range sm.Shards {
			if s.Shard < sm.ShardCount {
				l.Shards[s.Shard] = ShardInfo{Owner: s.Owner, Epoch: s.Epoch, Serving: s.State == client.ShardServing, Timers: s.Timers}
			}
		}
		return nil
	})
	return l, err
}

// Shard implements Cluster with the shard function timerd and its client
// share.
func (t *Timerd) Shard(id string, shards uint32) uint32 {
	return ring.Shard(t.opts.Namespace, id, shards)
}

// Absent implements Cluster with a Get of each id, 16 at a time.
func (t *Timerd) Absent(ctx context.Context, ids []string) ([]string, error) {
	var mu sync.Mutex
	var absent []string
	var firstErr error
	next := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for id := range next {
				err := t.call(ctx, func(c *client.Client) error {
					_, err := c.Get(ctx, t.opts.Namespace, id)
					return err
				})
				mu.Lock()
				switch {
				case errors.Is(err, client.ErrNotFound):
					absent = append(absent, id)
				case err != nil && firstErr == nil:
					firstErr = err
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		next <- id
	}
	close(next)
	wg.Wait()
	slices.Sort(absent)
	return absent, firstErr
}

// Close implements Target by closing the clients.
func (t *Timerd) Close() error {
	t.closeOnce.Do(func() {
		for _, c := range t.nodes {
			t.closeErr = errors.Join(t.closeErr, c.Close())
		}
	})
	return t.closeErr
}
