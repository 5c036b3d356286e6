package chaos

import (
	"bytes"
	"context"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// delivery is one delivery a subscriber received.
type delivery struct {
	id         string
	deliveryID string
	due        time.Time
	fired      time.Time // the sending node's clock
	received   time.Time // the test's clock, on arrival
	attempt    uint32
	shard      uint32
	epoch      uint64
	node       int  // index of the node whose stream carried it
	payloadOK  bool // the payload is the id, as the workload sends it
}

// subscribeConfig shapes the subscribers.
type subscribeConfig struct {
	// Namespace and Topic subscribed to (default: the workload's).
	Namespace, Topic string
	// MaxInFlight deliveries at most are unacked on a stream (default
	// 1,000); one unacked for AckTimeout (default 5s) is sent again.
	MaxInFlight uint32
	AckTimeout  time.Duration
	// Local subscribes to each node's own shards only
	// (Subscription.local): no relays, so the stream a delivery came on
	// names the process that fired it.
	Local bool
}

func (c subscribeConfig) withDefaults() subscribeConfig {
	if c.Namespace == "" {
		c.Namespace = namespace
	}
	if c.Topic == "" {
		c.Topic = topic
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = 1000
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = 5 * time.Second
	}
	return c
}

// subscribers keep one Subscribe stream open on every node of a cluster
// (those added later too), record every delivery in the ledger and ack it
// at once. A stream that ends is opened again, after reconnectDelay,
// until stop.
type subscribers struct {
	cfg subscribeConfig
	c   *testCluster
	l   *ledger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	streams map[int]int // streams opened, by node
	stopped bool        // set by stop; follow starts nothing after it
}

// reconnectDelay is the pause before a stream that ended is opened again.
const reconnectDelay = 100 * time.Millisecond

// subscribe starts a subscriber on every node of c, recording into r's
// ledger; the test's cleanup stops them.
func subscribe(r *run, c *testCluster, cfg subscribeConfig) *subscribers {
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscribers{cfg: cfg.withDefaults(), c: c, l: r.ledger, ctx: ctx, cancel: cancel, streams: make(map[int]int)}
	for i := range c.size() {
		s.follow(i)
	}
	c.whenAdded(s.follow)
	r.t.Cleanup(s.stop)
	r.subs = append(r.subs, s)
	return s
}

// follow keeps a stream open on node i. After stop it does nothing.
func (s *subscribers) follow(i int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.wg.Go(func() {
		for s.ctx.Err() == nil {
			s.stream(s.ctx, i)
			select {
			case <-s.ctx.Done():
			case <-time.After(reconnectDelay):
			}
		}
	})
}

// stream runs one Subscribe stream on node i until it ends.
func (s *subscribers) stream(ctx context.Context, i int) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := pb.NewTimerServiceClient(s.c.conn(i)).Subscribe(ctx)
	if err != nil {
		return
	}
	sub := &pb.Subscription{Namespace: s.cfg.Namespace, Topic: s.cfg.Topic, MaxInFlight: s.cfg.MaxInFlight,
		AckTimeout: durationpb.New(s.cfg.AckTimeout), Local: s.cfg.Local}
	if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		return
	}
	s.mu.Lock()
	s.streams[i]++
	s.mu.Unlock()
	for {
		m, err := st.Recv()
		if err != nil {
			return
		}
		now := time.Now()
		d := m.GetDelivery()
		s.l.deliver(delivery{
			id: d.GetId(), deliveryID: d.GetDeliveryId(), due: d.GetDueTime().AsTime(), fired: d.GetFiredTime().AsTime(),
			received: now, attempt: d.GetAttempt(), shard: d.GetShard(), epoch: d.GetEpoch(), node: i,
			payloadOK: bytes.Equal(d.GetPayload(), []byte(d.GetId())),
		})
		ack := &pb.Ack{DeliveryIds: []string{d.GetDeliveryId()}}
		if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: ack}}); err != nil {
			return
		}
	}
}

// stop ends every stream and waits for them. It is safe to call twice.
func (s *subscribers) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// opened returns how many streams were opened on each node.
func (s *subscribers) opened() map[int]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[int]int, len(s.streams))
	for i, n := range s.streams {
		out[i] = n
	}
	return out
}
