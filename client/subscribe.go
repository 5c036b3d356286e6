package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
)

// Delivery is one attempt to deliver one occurrence of a due timer.
type Delivery struct {
	// DeliveryID names the occurrence: the same across its redeliveries,
	// new for every occurrence. Consumers deduplicate on it.
	DeliveryID string
	// Namespace, ID and Topic name the timer.
	Namespace, ID, Topic string
	// Payload is the timer's payload, unchanged.
	Payload []byte
	// Due is the occurrence's due time; Fired is when the server sent this
	// attempt, never earlier than Due (on the server's clock).
	Due, Fired time.Time
	// Attempt is 1 for the first delivery of the occurrence, then 2, 3, ...
	Attempt uint32
	// Shard is the timer's shard and Epoch the fencing epoch of the owner
	// that sent the delivery: for one shard a lower epoch than one already
	// seen comes from a deposed owner.
	Shard uint32
	Epoch uint64
}

// Handler processes one delivery. Returning nil acknowledges it; returning
// an error leaves it unacknowledged, so the server delivers it again
// (attempt + 1) after the subscription's ack timeout and a backoff, until
// its maximum attempts make it a dead letter. Handlers run concurrently
// (WithWorkers) and must be idempotent: delivery is at least once.
type Handler func(ctx context.Context, d *Delivery) error

// subscribeConfig is what the SubscribeOptions set.
type subscribeConfig struct {
	workers     int
	maxInFlight int
	ackTimeout  time.Duration
	ackBatch    int
	ackLinger   time.Duration
	minBackoff  time.Duration
	maxBackoff  time.Duration
}

func defaultSubscribeConfig() subscribeConfig {
	return subscribeConfig{
		workers:     16,
		maxInFlight: 100,
		ackBatch:    256,
		ackLinger:   time.Millisecond,
		minBackoff:  100 * time.Millisecond,
		maxBackoff:  5 * time.Second,
	}
}

func (c *subscribeConfig) validate() error {
	switch {
	case c.workers < 1 || c.workers > 1<<16:
		return badConfig("WithWorkers", "must be in [1, 65536], got %d", c.workers)
	case c.maxInFlight < 1 || c.maxInFlight > 1<<20:
		return badConfig("WithMaxInFlight", "must be in [1, 1048576], got %d", c.maxInFlight)
	case c.ackTimeout < 0:
		return badConfig("WithAckTimeout", "must be >= 0, got %v", c.ackTimeout)
	case c.ackBatch < 1 || c.ackBatch > 10000:
		return badConfig("WithAckBatch", "size must be in [1, 10000], got %d", c.ackBatch)
	case c.ackLinger < 0 || c.ackLinger > time.Second:
		return badConfig("WithAckBatch", "linger must be in [0, 1s], got %v", c.ackLinger)
	case c.minBackoff < time.Millisecond:
		return badConfig("WithReconnectBackoff", "min must be >= 1ms, got %v", c.minBackoff)
	case c.maxBackoff < c.minBackoff:
		return badConfig("WithReconnectBackoff", "max must be >= min, got %v", c.maxBackoff)
	}
	return nil
}

// SubscribeOption configures Client.Subscribe.
type SubscribeOption func(*subscribeConfig)

// WithWorkers sets how many handlers run at once (default 16).
func WithWorkers(n int) SubscribeOption { return func(c *subscribeConfig) { c.workers = n } }

// WithMaxInFlight sets the subscription's credit: the most deliveries the
// server keeps unacknowledged on the stream (default 100; the server
// refuses more than its maximum, default 10000). Deliveries whose handler
// failed count until their ack timeout.
func WithMaxInFlight(n int) SubscribeOption {
	return func(c *subscribeConfig) { c.maxInFlight = n }
}

// WithAckTimeout sets how long a delivery may stay unacknowledged before
// the server delivers it again. Default: the server's (30s unless
// configured); the server refuses values outside its bounds (1s to 15m by
// default).
func WithAckTimeout(d time.Duration) SubscribeOption {
	return func(c *subscribeConfig) { c.ackTimeout = d }
}

// WithAckBatch sets how acks are batched: the ids of successful handlers
// are sent in one Ack message once size of them are waiting or linger after
// the first (defaults 256 and 1ms; linger 0 sends at once).
func WithAckBatch(size int, linger time.Duration) SubscribeOption {
	return func(c *subscribeConfig) { c.ackBatch, c.ackLinger = size, linger }
}

// WithReconnectBackoff bounds the wait before subscribing again after the
// stream failed: min after the first failure, doubling with every stream
// that fails within 10 seconds of opening, up to max; each wait is drawn
// between half the bound and the bound (defaults 100ms and 5s). A stream
// that lasted 10 seconds starts the backoff over at min.
func WithReconnectBackoff(min, max time.Duration) SubscribeOption {
	return func(c *subscribeConfig) { c.minBackoff, c.maxBackoff = min, max }
}

// healthySession is how long a stream must have lasted for the reconnect
// backoff to start over at its minimum; shorter streams keep doubling it,
// whether or not they delivered anything.
const healthySession = 10 * time.Second

// finalAckWait bounds how long Subscribe waits, once ctx has ended, for the
// last acks to be sent.
const finalAckWait = 5 * time.Second

// Subscribe receives the deliveries of namespace (empty: the client's) and
// topic and runs handler on each, until ctx ends. Several subscribers of
// the same namespace and topic, in this process or others, share the
// deliveries.
//
// A node delivers the due timers of the shards it owns (and relays its
// peers' to a stream that does not ask for its own only), so Subscribe
// opens one stream to every member of the cluster that may own shards,
// each asking for its node's shards only (Subscription.local),
// (joining, active or leaving) and follows the membership: a node that
// joins gets a stream, and the stream of a node that left ends. Each
// delivery is acknowledged on the stream that carried it. Each stream has
// its own handlers and credit: WithWorkers, WithMaxInFlight and
// WithAckBatch apply per stream, so a cluster of n nodes runs up to n
// times WithWorkers handlers at once and holds up to n times
// WithMaxInFlight unacknowledged deliveries. Against a single node there
// is one stream.
//
// Handlers run with a context derived from ctx, which ends when ctx does
// (or Subscribe returns for another reason). The delivery of a handler
// that returns nil is acknowledged; acks are batched (WithAckBatch). A
// handler's error only leaves its delivery unacknowledged.
//
// When a stream ends with a transient error (UNAVAILABLE, for example
// while its node restarts or hands over shards), Subscribe opens it again
// after a backoff (WithReconnectBackoff), for as long as the node is a
// member. The deliveries of the ended stream that were not acknowledged
// are delivered again by the server, possibly while their handlers are
// still running; their late acks are dropped. When a node leaves, its
// stream ends as when ctx ends: its handlers under way finish and their
// acks are sent.
//
// Subscribe returns nil once ctx has ended, after the handlers under way
// have returned and the acks of those that succeeded have been sent. It
// returns early with an error only when it cannot go on: an error wrapping
// ErrClosed when the client is closed, ErrInvalidConfig for a bad option,
// or an *Error for a permanent refusal by a node (ErrInvalid for a bad
// namespace, topic, credit or ack timeout; ErrDenied; ...).
func (c *Client) Subscribe(ctx context.Context, namespace, topic string, handler Handler, opts ...SubscribeOption) error {
	cfg := defaultSubscribeConfig()
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return err
	}
	if handler == nil {
		return badConfig("handler", "must not be nil")
	}
	if c.closed.Load() {
		return closedErr(opSubscribe)
	}
	if !c.topo.awaitFirst(ctx) {
		return nil
	}
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	ns := c.ns(namespace)
	failed := make(chan error, 1)
	type stream struct{ cancel context.CancelFunc }
	streams := make(map[*conn]stream)
	var wg sync.WaitGroup
	// end ends every stream and waits for them.
	end := func() {
		for _, st := range streams {
			st.cancel()
		}
		wg.Wait()
	}
	for {
		members, changed := c.topo.membersChanged()
		for _, k := range members {
			if _, ok := streams[k]; ok || !k.hold() {
				continue // a conn that cannot be held is gone: a new view follows
			}
			mctx, mcancel := context.WithCancel(ctx)
			streams[k] = stream{mcancel}
			s := &subscriber{
				c:       c,
				node:    k,
				cfg:     cfg,
				ns:      ns,
				topic:   topic,
				handler: handler,
				hctx:    hctx,
				work:    make(chan job, cfg.maxInFlight),
				stop:    make(chan struct{}),
			}
			wg.Go(func() {
				defer k.release()
				defer mcancel()
				s.start()
				if err := s.run(mctx); err != nil {
					select {
					case failed <- err:
					default:
					}
				}
				s.stopWorkers()
			})
		}
		for k, st := range streams {
			if !slices.Contains(members, k) {
				st.cancel() // the node left: end its stream as if ctx had ended
				delete(streams, k)
			}
		}
		select {
		case <-ctx.Done():
			end()
			return nil
		case err := <-failed:
			hcancel()
			end()
			return err
		case <-changed:
		case <-c.topo.stop:
			hcancel()
			end()
			return closedErr(opSubscribe)
		}
	}
}

// run keeps the stream to s's node open, reconnecting with backoff, until
// ctx ends (then it returns nil) or it cannot go on.
func (s *subscriber) run(ctx context.Context) error {
	c, cfg := s.c, s.cfg
	backoff := cfg.minBackoff
	for {
		if c.closed.Load() {
			return closedErr(opSubscribe)
		}
		start := time.Now()
		delivered, err := s.session(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case c.closed.Load():
			return closedErr(opSubscribe)
		case err != nil && !streamTransient(err):
			return c.rpcError(ctx, opSubscribe, s.ns, "", err)
		}
		// Only a stream that stayed up for a while proves the server
		// healthy: one that delivers and then fails at once (a broken
		// peer, a node that keeps losing its shards) must not bring the
		// reconnects back to the minimum, or they would hammer it every
		// minBackoff for ever.
		if time.Since(start) >= healthySession {
			backoff = cfg.minBackoff
		}
		// Equal jitter: wait in [backoff/2, backoff], so subscribers that
		// lost the same server spread out, and the waits still grow.
		wait := backoff/2 + rand.N(backoff-backoff/2+1)
		c.cfg.logger.LogAttrs(ctx, slog.LevelWarn, "timerd subscription ended; subscribing again",
			slog.String("node", s.node.addr), slog.String("namespace", s.ns), slog.String("topic", s.topic),
			slog.Bool("delivered", delivered), slog.Duration("backoff", wait), slog.Any("err", err))
		if !sleep(ctx, wait) {
			return nil
		}
		backoff = min(backoff*2, cfg.maxBackoff)
	}
}

// streamTransient reports whether a Subscribe stream that ended with err
// (io.EOF when the server ended it without an error) is worth opening
// again.
func streamTransient(err error) bool {
	if err == nil || errors.Is(err, io.EOF) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.ResourceExhausted,
		codes.Internal, codes.Unknown, codes.Canceled:
		return true
	}
	return false
}

// subscriber is the part of one call of Subscribe that concerns one
// node: the streams it opens to the node one after the other, and the
// workers they share.
type subscriber struct {
	c       *Client
	node    *conn
	cfg     subscribeConfig
	ns      string
	topic   string
	handler Handler
	hctx    context.Context // of the handlers

	work     chan job
	stop     chan struct{} // closed to stop the workers
	stopOnce sync.Once
	workers  sync.WaitGroup
}

// job is one delivery for the workers, with the stream it came on.
type job struct {
	sess *session
	d    *Delivery
}

// start starts the workers.
func (s *subscriber) start() {
	s.workers.Add(s.cfg.workers)
	for range s.cfg.workers {
		go s.worker()
	}
}

// stopWorkers stops the workers and waits for their handlers to return.
func (s *subscriber) stopWorkers() {
	s.stopOnce.Do(func() { close(s.stop) })
	s.workers.Wait()
}

func (s *subscriber) worker() {
	defer s.workers.Done()
	for {
		select {
		case <-s.stop:
			return
		case j := <-s.work:
			select {
			case <-s.stop:
				return // not acked: the server delivers it again
			default:
			}
			if j.sess.ended.Load() {
				continue // its stream ended: the server delivers it again
			}
			if err := s.handler(s.hctx, j.d); err != nil {
				s.c.cfg.logger.LogAttrs(s.hctx, slog.LevelDebug, "timerd handler failed; delivery left unacknowledged",
					slog.String("namespace", j.d.Namespace), slog.String("id", j.d.ID), slog.Any("attempt", j.d.Attempt), slog.Any("err", err))
				continue
			}
			j.sess.ack(j.d.DeliveryID)
		}
	}
}

// session is one Subscribe stream. The goroutine of subscriber.session
// sends the Subscription; after that only ackLoop sends and only recvLoop
// receives, as gRPC requires.
type session struct {
	stream    timerdv1.TimerService_SubscribeClient
	ackBatch  int
	ackLinger time.Duration

	ended atomic.Bool   // the stream ended: drop its jobs and acks
	kick  chan struct{} // wakes ackLoop; capacity 1
	flush chan struct{} // closed to make ackLoop send what it has and half-close
	quit  chan struct{} // closed to make ackLoop stop without sending
	done  chan struct{} // closed when ackLoop has returned
	drain chan struct{} // closed to make recvLoop drop what it receives

	mu   sync.Mutex
	acks []string
}

// session runs one stream until it ends or ctx ends, and reports whether
// it delivered anything and the error it ended with (nil once ctx ended).
func (s *subscriber) session(ctx context.Context) (delivered bool, err error) {
	// The stream outlives ctx by the time it takes to send the last acks.
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stream, err := s.node.timers.Subscribe(sctx)
	if err != nil {
		return false, err
	}
	// Local: this client opens a stream to every member itself, so each
	// takes only its node's shards, without a relay hop.
	sub := &timerdv1.Subscription{Namespace: s.ns, Topic: s.topic, MaxInFlight: uint32(s.cfg.maxInFlight), Local: true}
	if s.cfg.ackTimeout > 0 {
		sub.AckTimeout = durationpb.New(s.cfg.ackTimeout)
	}
	if err := stream.Send(&timerdv1.SubscribeRequest{Kind: &timerdv1.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		if errors.Is(err, io.EOF) { // the stream ended; Recv tells why
			_, err = stream.Recv()
		}
		return false, err
	}
	ss := &session{
		stream:    stream,
		ackBatch:  s.cfg.ackBatch,
		ackLinger: s.cfg.ackLinger,
		kick:      make(chan struct{}, 1),
		flush:     make(chan struct{}),
		quit:      make(chan struct{}),
		done:      make(chan struct{}),
		drain:     make(chan struct{}),
		acks:      make([]string, 0, s.cfg.ackBatch),
	}
	go ss.ackLoop()
	var got atomic.Bool
	recvDone := make(chan error, 1)
	go func() { recvDone <- s.recvLoop(ss, &got) }()

	select {
	case err = <-recvDone:
		// The stream ended on its own: its unacked deliveries go back to the
		// server, so its queued jobs and late acks are dropped.
		ss.ended.Store(true)
		close(ss.drain)
		close(ss.quit)
		<-ss.done
		return got.Load(), err
	case <-ctx.Done():
	}
	// Graceful end: let the handlers under way finish, send their acks,
	// half-close, and only then cancel the stream.
	close(ss.drain)
	s.stopWorkers()
	close(ss.flush)
	t := time.NewTimer(finalAckWait)
	defer t.Stop()
	select {
	case <-ss.done:
		// Wait for the server to end the stream too: it does so once it
		// has read the half-close, so after every ack sent before it.
		// Cancelling sooner could make it drop acks it has not read yet
		// and redeliver what was handled.
		select {
		case <-recvDone:
			ss.ended.Store(true)
			return got.Load(), nil
		case <-t.C:
		}
	case <-t.C:
		cancel()
		<-ss.done
	}
	ss.ended.Store(true)
	cancel()
	<-recvDone
	return got.Load(), nil
}

// recvLoop receives deliveries and queues them for the workers until the
// stream ends, and returns the error it ended with (io.EOF for a clean
// end).
func (s *subscriber) recvLoop(ss *session, got *atomic.Bool) error {
	for {
		m, err := ss.stream.Recv()
		if err != nil {
			return err
		}
		pd := m.GetDelivery()
		if pd == nil {
			continue
		}
		got.Store(true)
		d := &Delivery{
			DeliveryID: pd.GetDeliveryId(),
			Namespace:  pd.GetNamespace(),
			ID:         pd.GetId(),
			Topic:      pd.GetTopic(),
			Payload:    pd.GetPayload(),
			Due:        toTime(pd.GetDueTime()),
			Fired:      toTime(pd.GetFiredTime()),
			Attempt:    pd.GetAttempt(),
			Shard:      pd.GetShard(),
			Epoch:      pd.GetEpoch(),
		}
		select {
		case s.work <- job{sess: ss, d: d}:
		case <-ss.drain: // never acked: delivered again after the stream ends
		}
	}
}

// ack queues id for the next Ack message, unless the stream has ended.
func (ss *session) ack(id string) {
	if ss.ended.Load() {
		return
	}
	ss.mu.Lock()
	ss.acks = append(ss.acks, id)
	n := len(ss.acks)
	ss.mu.Unlock()
	if n == 1 || n == ss.ackBatch {
		select {
		case ss.kick <- struct{}{}:
		default:
		}
	}
}

// ackLoop sends the queued acks in batches: when ackBatch are waiting or
// ackLinger after the first. It stops on quit, or on flush after sending
// what is queued and half-closing the stream, or when a send fails (the
// stream is then broken and recvLoop learns why).
func (ss *session) ackLoop() {
	defer close(ss.done)
	t := time.NewTimer(time.Hour)
	t.Stop()
	defer t.Stop()
	for {
		select {
		case <-ss.kick:
		case <-ss.flush:
			if ss.sendAcks() {
				_ = ss.stream.CloseSend()
			}
			return
		case <-ss.quit:
			return
		}
		if ss.ackLinger > 0 && ss.queued() < ss.ackBatch {
			t.Reset(ss.ackLinger)
			select {
			case <-t.C:
			case <-ss.kick: // a full batch
				t.Stop()
			case <-ss.flush:
				t.Stop()
				if ss.sendAcks() {
					_ = ss.stream.CloseSend()
				}
				return
			case <-ss.quit:
				return
			}
		}
		if !ss.sendAcks() {
			return
		}
	}
}

func (ss *session) queued() int {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.acks)
}

// sendAcks sends every queued ack, ackBatch ids per message, and reports
// whether the stream took them.
func (ss *session) sendAcks() bool {
	ss.mu.Lock()
	ids := ss.acks
	if len(ids) == 0 {
		ss.mu.Unlock()
		return true
	}
	ss.acks = make([]string, 0, ss.ackBatch) // the sent slice may be kept by gRPC
	ss.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), ss.ackBatch)
		req := &timerdv1.SubscribeRequest{Kind: &timerdv1.SubscribeRequest_Ack{Ack: &timerdv1.Ack{DeliveryIds: ids[:n:n]}}}
		if err := ss.stream.Send(req); err != nil {
			return false
		}
		ids = ids[n:]
	}
	return true
}
