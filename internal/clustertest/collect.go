package clustertest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// Delivery is one delivery a Collector received.
type Delivery struct {
	ID       string
	Due      time.Time
	Received time.Time
	Attempt  uint32
	Epoch    uint64
	Shard    uint32
	// Node is the gRPC address of the node whose stream carried it.
	Node string
}

// Collector subscribes to a topic on every node it is told of, with plain
// generated gRPC stubs (no timerd client code), acks every delivery at
// once and records it. Streams that end are opened again until Close.
// Its methods may be called concurrently.
type Collector struct {
	ns, topic string
	// local sets Subscription.local on every stream: each takes its
	// node's shards only, as the Go client's streams do. Unset, each is
	// a one-address subscriber, which its node relays every shard to.
	local bool
	// dial are the options of its connections: the Cluster's.
	dial   []grpc.DialOption
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu sync.Mutex
	// got and streams are guarded by mu: deliveries by timer id, and the
	// node addresses a stream loop runs for.
	got     map[string][]Delivery
	streams map[string]bool
}

// Collect starts a Collector of namespace and topic on every node, each
// stream taking its node's shards only; Follow adds nodes later. It is
// closed when the test ends.
func (c *Cluster) Collect(ns, topic string) *Collector {
	col := c.collector(ns, topic, true)
	col.Follow(c.Addrs()...)
	return col
}

// CollectVia starts a Collector of namespace and topic with one stream,
// to the node at addr, that takes every shard's deliveries: a
// one-address subscriber. It is closed when the test ends.
func (c *Cluster) CollectVia(ns, topic, addr string) *Collector {
	col := c.collector(ns, topic, false)
	col.Follow(addr)
	return col
}

// Recorder returns a Collector of namespace and topic that opens no
// stream: another subscriber (the Go client's, say) records what it
// receives with Record, and Check judges it alike. It is closed when the
// test ends.
func (c *Cluster) Recorder(ns, topic string) *Collector { return c.collector(ns, topic, true) }

func (c *Cluster) collector(ns, topic string, local bool) *Collector {
	ctx, cancel := context.WithCancel(context.Background())
	col := &Collector{ns: ns, topic: topic, local: local, dial: c.dial, ctx: ctx, cancel: cancel, got: make(map[string][]Delivery), streams: make(map[string]bool)}
	c.tb.Cleanup(col.Close)
	return col
}

// Follow subscribes on the nodes at addrs that it does not follow yet.
func (col *Collector) Follow(addrs ...string) {
	col.mu.Lock()
	defer col.mu.Unlock()
	for _, a := range addrs {
		if col.streams[a] || col.ctx.Err() != nil {
			continue
		}
		col.streams[a] = true
		col.wg.Go(func() { col.run(a) })
	}
}

// run keeps a stream open to the node at addr until Close.
func (col *Collector) run(addr string) {
	conn, err := grpc.NewClient(addr, col.dial...)
	if err != nil {
		return
	}
	defer conn.Close()
	tc := pb.NewTimerServiceClient(conn)
	for col.ctx.Err() == nil {
		_ = col.stream(tc, addr)
		select {
		case <-col.ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (col *Collector) stream(tc pb.TimerServiceClient, addr string) error {
	ctx, cancel := context.WithCancel(col.ctx)
	defer cancel()
	s, err := tc.Subscribe(ctx)
	if err != nil {
		return err
	}
	sub := &pb.Subscription{Namespace: col.ns, Topic: col.topic, MaxInFlight: 1000, AckTimeout: durationpb.New(5 * time.Second), Local: col.local}
	if err := s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		d := m.GetDelivery()
		now := time.Now()
		col.Record(Delivery{
			ID: d.GetId(), Due: d.GetDueTime().AsTime(), Received: now, Attempt: d.GetAttempt(),
			Epoch: d.GetEpoch(), Shard: d.GetShard(), Node: addr,
		})
		if err := s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: []string{d.GetDeliveryId()}}}}); err != nil {
			return err
		}
	}
}

// Record records a delivery received.
func (col *Collector) Record(d Delivery) {
	col.mu.Lock()
	defer col.mu.Unlock()
	col.got[d.ID] = append(col.got[d.ID], d)
}

// Close ends every stream and waits for them.
func (col *Collector) Close() {
	col.cancel()
	col.wg.Wait()
}

// Got returns the deliveries of id.
func (col *Collector) Got(id string) []Delivery {
	col.mu.Lock()
	defer col.mu.Unlock()
	return append([]Delivery(nil), col.got[id]...)
}

// Count returns how many of ids have been delivered at least once.
func (col *Collector) Count(ids []string) int {
	col.mu.Lock()
	defer col.mu.Unlock()
	n := 0
	for _, id := range ids {
		if len(col.got[id]) > 0 {
			n++
		}
	}
	return n
}

// Verdict checks the deliveries of the timers ids (each due at due[id]):
// every one delivered at least once, none before its due time, nothing
// delivered that was not in ids.
type Verdict struct {
	Lost, Early, Unexpected, Duplicates int
	// MaxLate is the largest lateness of a first delivery.
	MaxLate time.Duration
	// Examples names a few of the failures.
	Examples []string
}

// OK reports whether nothing was lost, early or unexpected.
func (v Verdict) OK() bool { return v.Lost == 0 && v.Early == 0 && v.Unexpected == 0 }

func (v Verdict) String() string {
	return fmt.Sprintf("lost %d, early %d, unexpected %d, duplicates %d, max lateness %v; %s",
		v.Lost, v.Early, v.Unexpected, v.Duplicates, v.MaxLate, strings.Join(v.Examples, "; "))
}

// Check returns the Verdict over the timers in due (id -> due time).
func (col *Collector) Check(due map[string]time.Time) Verdict {
	col.mu.Lock()
	defer col.mu.Unlock()
	var v Verdict
	note := func(format string, args ...any) {
		if len(v.Examples) < 5 {
			v.Examples = append(v.Examples, fmt.Sprintf(format, args...))
		}
	}
	ids := make([]string, 0, len(due))
	for id := range due {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		ds := col.got[id]
		if len(ds) == 0 {
			v.Lost++
			note("%s (due %v) never delivered", id, due[id].Format(time.StampMilli))
			continue
		}
		v.Duplicates += len(ds) - 1
		for _, d := range ds {
			// The due time a delivery carries is in ms; the node fires on
			// its own clock, which here is the test's.
			if d.Received.Before(due[id].Truncate(time.Millisecond)) {
				v.Early++
				note("%s delivered %v early by %s", id, due[id].Sub(d.Received), d.Node)
			}
		}
		v.MaxLate = max(v.MaxLate, ds[0].Received.Sub(due[id]))
	}
	for id := range col.got {
		if _, ok := due[id]; !ok {
			v.Unexpected++
			note("%s delivered but never scheduled", id)
		}
	}
	return v
}

// Wait waits until every id in due has been delivered, or d passes.
func (col *Collector) Wait(due map[string]time.Time, d time.Duration) {
	ids := make([]string, 0, len(due))
	for id := range due {
		ids = append(ids, id)
	}
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if col.Count(ids) == len(ids) {
			return
		}
	}
}
