package chaos

import (
	"bytes"
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"
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
	payloadOK  bool // the payload is the id, as scheduled
}

// subscribers keep one Subscribe stream open on every node, record every
// delivery and ack it at once. A stream that ends is opened again, after
// reconnectDelay, until stop.
type subscribers struct {
	ns, topic   string
	maxInFlight uint32
	ackTimeout  time.Duration

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	got     []delivery
	streams []int // streams opened, by node
}

// reconnectDelay is the pause before a stream that ended is opened again.
const reconnectDelay = 100 * time.Millisecond

// subscribe starts a subscriber on each of conns.
func subscribe(ns, topic string, maxInFlight uint32, ackTimeout time.Duration, conns []*grpc.ClientConn) *subscribers {
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscribers{ns: ns, topic: topic, maxInFlight: maxInFlight, ackTimeout: ackTimeout,
		cancel: cancel, streams: make([]int, len(conns))}
	for i, c := range conns {
		tc := pb.NewTimerServiceClient(c)
		s.wg.Go(func() {
			for ctx.Err() == nil {
				s.stream(ctx, tc, i)
				select {
				case <-ctx.Done():
				case <-time.After(reconnectDelay):
				}
			}
		})
	}
	return s
}

// stream runs one Subscribe stream on node i until it ends.
func (s *subscribers) stream(ctx context.Context, tc pb.TimerServiceClient, i int) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := tc.Subscribe(ctx)
	if err != nil {
		return
	}
	sub := &pb.Subscription{Namespace: s.ns, Topic: s.topic, MaxInFlight: s.maxInFlight, AckTimeout: durationpb.New(s.ackTimeout)}
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
		s.mu.Lock()
		s.got = append(s.got, delivery{
			id: d.GetId(), deliveryID: d.GetDeliveryId(), due: d.GetDueTime().AsTime(), fired: d.GetFiredTime().AsTime(),
			received: now, attempt: d.GetAttempt(), shard: d.GetShard(), epoch: d.GetEpoch(), node: i,
			payloadOK: bytes.Equal(d.GetPayload(), []byte(d.GetId())),
		})
		s.mu.Unlock()
		ack := &pb.Ack{DeliveryIds: []string{d.GetDeliveryId()}}
		if err := st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: ack}}); err != nil {
			return
		}
	}
}

// stop ends every stream and waits for them.
func (s *subscribers) stop() {
	s.cancel()
	s.wg.Wait()
}

// deliveries returns a copy of what has been received so far.
func (s *subscribers) deliveries() []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]delivery(nil), s.got...)
}

// opened returns how many streams were opened on each node.
func (s *subscribers) opened() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.streams...)
}

// missing returns how many of the timers in want have not been received.
func (s *subscribers) missing(want map[string]time.Time) int {
	s.mu.Lock()
	seen := make(map[string]bool, len(s.got))
	for _, d := range s.got {
		seen[d.id] = true
	}
	s.mu.Unlock()
	n := 0
	for id := range want {
		if !seen[id] {
			n++
		}
	}
	return n
}
