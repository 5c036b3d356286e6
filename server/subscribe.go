package server

import (
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
)

// Subscribe implements pb.TimerServiceServer. The handler's goroutine
// watches the stream: it expires deliveries past their ack timeout and
// ends a stream whose Send has been blocked that long. A sender goroutine
// sends and a receiver goroutine reads acks. See the package doc.
func (t *timerService) Subscribe(stream pb.TimerService_SubscribeServer) error {
	s := t.s
	first, err := s.first(stream)
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return err
	}
	sub, err := s.subscriber(first.GetSubscription())
	if err != nil {
		return err
	}
	// A client's stream that did not ask for this node's shards only
	// also takes the peers' deliveries, which relays bring here.
	fwd := isForwarded(stream.Context())
	sub.oneAddr = s.member != nil && !fwd && !first.GetSubscription().GetLocal()
	// A peer's relay ends when the membership declares the peer dead or
	// gone: its connection may stay open long after (see peerRelays).
	var peerGone <-chan struct{}
	if peer := relayNode(stream.Context()); fwd && s.member != nil && peer != "" {
		r := s.peerRelays.add(peer)
		if r == nil {
			return status.Errorf(codes.Unavailable, "node %q, which opens this relay, has left the membership; relay again once it is a member", peer)
		}
		defer s.peerRelays.remove(peer, r)
		peerGone = r.gone
	}
	s.hub.add(sub)
	if sub.oneAddr {
		s.relays.changed()
	}
	gauge := s.metrics.ns(sub.key.namespace).subscribers
	gauge.Inc()
	received := make(chan error, 1)
	receiverDone := make(chan struct{})
	sent := make(chan error, 1)
	stopSender := make(chan struct{})
	defer func() {
		s.hub.remove(sub)
		if sub.oneAddr {
			s.relays.changed()
		}
		gauge.Dec()
		// A sender blocked in Send returns once the handler has returned
		// and gRPC has ended the stream.
		close(stopSender)
		if s.quitting() {
			// At shutdown the shards are about to close, and what they
			// had in flight is delivered again when they next load.
			sub.close()
			return
		}
		// Acks the receiver has read are applied before the rest goes
		// back, or a handled delivery would be redelivered (or, on its
		// last attempt, dead-lettered). Once the stream has ended, the
		// receiver's Recv returns at once; the bound is a safety net.
		// While the handler itself is ending it (its Send stalled), the
		// stream is still open and the receiver is not waited for: an ack
		// it takes after close below is ignored, and only redelivers.
		if stream.Context().Err() != nil {
			select {
			case <-receiverDone:
			case <-time.After(5 * time.Second):
			}
		}
		// Redeliver at once rather than after the ack timeout.
		s.giveBack(sub.close())
	}()
	s.log.Debug("subscriber connected", "namespace", sub.key.namespace, "topic", sub.key.topic,
		"max_in_flight", sub.limit, "ack_timeout", sub.ackTimeout)
	s.readyAll(sub.key)

	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		defer close(receiverDone)
		received <- s.receive(stream, sub, fwd)
	}()
	go func() {
		defer s.wg.Done()
		sent <- s.send(stream, sub, stopSender)
	}()
	// The sweep runs here, not beside the sender's Send: a client that
	// stops reading blocks Send, and its deliveries must still expire.
	sweep := time.NewTicker(min(max(sub.ackTimeout/4, 50*time.Millisecond), 5*time.Second))
	defer sweep.Stop()
	for {
		select {
		case err := <-sent:
			return err
		case err := <-received:
			return err
		case <-s.quit:
			return status.Error(codes.Unavailable, "server is shutting down; subscribe again")
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-peerGone:
			s.log.Info("relay of a departed peer ended; its deliveries go back to be redelivered",
				"peer", relayNode(stream.Context()), "namespace", sub.key.namespace, "topic", sub.key.topic)
			return status.Errorf(codes.Unavailable, "node %q, which opened this relay, has left the membership; its deliveries went back to be redelivered",
				relayNode(stream.Context()))
		case now := <-sweep.C:
			if sub.expire(now) {
				s.readyAll(sub.key)
			}
			if b := sub.blocked(now); b >= sub.ackTimeout {
				s.log.Info("subscriber not reading; ending its stream", "namespace", sub.key.namespace,
					"topic", sub.key.topic, "blocked", b)
				return status.Errorf(codes.DeadlineExceeded,
					"the stream read no delivery for %v, its ack timeout; its deliveries went back to be redelivered; subscribe again", b.Round(time.Millisecond))
			}
		}
	}
}

// send sends sub's deliveries on stream until stop is closed or a Send
// fails. It is the only goroutine that calls Send.
func (s *Server) send(stream pb.TimerService_SubscribeServer, sub *subscriber, stop <-chan struct{}) error {
	var buf []shard.Delivery
	var (
		delivery   pb.Delivery
		due, fired timestamppb.Timestamp
	)
	msg := pb.SubscribeResponse{Delivery: &delivery}
	for {
		select {
		case <-sub.wake:
		case <-stop:
			return nil
		}
		buf = sub.take(buf)
		for i := range buf {
			select {
			case <-stop: // the stream is ending: send no more
				return nil
			default:
			}
			d := &buf[i]
			ok, relayed := sub.begin(d, time.Now())
			if !ok {
				continue // acked, expired or replaced since it was taken
			}
			fillDelivery(&delivery, &due, &fired, d)
			err := stream.Send(&msg)
			if a, give := sub.done(d, err == nil); give && !s.quitting() {
				// The stream closed during the Send; at shutdown, as for
				// the rest it held, the shard delivers it again on load.
				s.giveBack([]shard.Attempt{a})
			}
			if err != nil {
				return err
			}
			if !relayed { // its owner counted it
				s.metrics.dispatched(d)
			}
		}
		clear(buf) // let go of the payloads
	}
}

// first reads a stream's first message. It gives up with
// DEADLINE_EXCEEDED after SubscriptionTimeout, and with UNAVAILABLE when
// the server shuts down first: a client that opened a stream and sent
// nothing must hold neither goroutines nor Close.
func (s *Server) first(stream pb.TimerService_SubscribeServer) (*pb.SubscribeRequest, error) {
	type result struct {
		m   *pb.SubscribeRequest
		err error
	}
	got := make(chan result, 1)
	s.wg.Add(1)
	go func() { // ends when the message comes or the stream ends
		defer s.wg.Done()
		m, err := stream.Recv()
		got <- result{m, err}
	}()
	timeout := time.NewTimer(s.cfg.SubscriptionTimeout)
	defer timeout.Stop()
	select {
	case r := <-got:
		return r.m, r.err
	case <-timeout.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no subscription within %v of opening the stream: the first message must carry it", s.cfg.SubscriptionTimeout)
	case <-s.quit:
		return nil, status.Error(codes.Unavailable, "server is shutting down; subscribe again")
	}
}

// subscriber checks a stream's Subscription and returns its subscriber.
func (s *Server) subscriber(p *pb.Subscription) (*subscriber, error) {
	if p == nil {
		return nil, invalid("subscription", "the first message on a stream must carry a subscription")
	}
	ns := namespaceOr(p.GetNamespace())
	if err := shard.ValidNamespace(ns); err != nil {
		return nil, invalid("subscription.namespace", "%v", err)
	}
	if err := shard.ValidTopic(p.GetTopic()); err != nil {
		return nil, invalid("subscription.topic", "%v", err)
	}
	limit := p.GetMaxInFlight()
	switch {
	case limit == 0:
		limit = s.cfg.DefaultInFlight
	case limit > s.cfg.MaxInFlight:
		return nil, invalid("subscription.max_in_flight", "%d exceeds the limit of %d", limit, s.cfg.MaxInFlight)
	}
	ackTimeout := s.cfg.Shard.AckTimeout
	if at := p.GetAckTimeout(); at != nil {
		if err := at.CheckValid(); err != nil {
			return nil, invalid("subscription.ack_timeout", "%v", err)
		}
		ackTimeout = at.AsDuration()
		if ackTimeout < s.cfg.MinAckTimeout || ackTimeout > s.cfg.MaxAckTimeout {
			return nil, invalid("subscription.ack_timeout", "%v is outside [%v, %v]", ackTimeout, s.cfg.MinAckTimeout, s.cfg.MaxAckTimeout)
		}
	}
	return newSubscriber(topicKey{ns, p.GetTopic()}, int(limit), ackTimeout), nil
}

// receive reads a stream's acks and releases until it ends: nil when the
// client closed its side, a status error for a message that breaks the
// protocol. fwd says the stream is a peer's relay, which alone may give
// deliveries back unsent.
func (s *Server) receive(stream pb.TimerService_SubscribeServer, sub *subscriber, fwd bool) error {
	groups := make(map[uint32][]shard.DeliveryID) // reused: acks by shard
	var mine []string                             // reused: the acks sub may make
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		switch k := req.GetKind().(type) {
		case *pb.SubscribeRequest_Ack:
			ids := k.Ack.GetDeliveryIds()
			if len(ids) > s.cfg.MaxBatch {
				return invalid("ack.delivery_ids", "holds %d ids; the limit is %d", len(ids), s.cfg.MaxBatch)
			}
			mine = s.ack(sub, ids, mine, groups)
		case *pb.SubscribeRequest_Release:
			ids := k.Release.GetDeliveryIds()
			if len(ids) > s.cfg.MaxBatch {
				return invalid("release.delivery_ids", "holds %d ids; the limit is %d", len(ids), s.cfg.MaxBatch)
			}
			if k.Release.GetUnsent() && !fwd {
				return invalid("release.unsent", "only a node relaying deliveries to its subscribers may give them back unsent")
			}
			attempts, notHeld, notSent, refilled := sub.release(ids, k.Release.GetUnsent())
			s.metrics.ignoredAcks(notHeld, notSent)
			s.giveBack(attempts)
			if refilled {
				s.readyAll(sub.key)
			}
		case *pb.SubscribeRequest_Subscription:
			return invalid("subscription", "a stream carries one subscription, in its first message; later messages carry acks or releases")
		default:
			return invalid("kind", "must be set: an ack or a release")
		}
	}
}

// ack applies acks from sub's stream. Only the deliveries the stream was
// sent and still holds are acknowledged: each goes to its shard, and
// its credit is freed. Any other id (another stream's delivery, one of
// another namespace, one that expired, a made-up one) is ignored and
// counted, so a stream can neither end timers it was not given nor take
// credit it does not have.
func (s *Server) ack(sub *subscriber, ids []string, mine []string, groups map[uint32][]shard.DeliveryID) []string {
	mine, notHeld, notSent, refilled := sub.acks(ids, mine[:0])
	s.metrics.ignoredAcks(notHeld, notSent)
	s.byShard(mine, groups)
	for id, g := range groups {
		if len(g) == 0 {
			continue
		}
		if sh := s.shard(id); sh != nil {
			_, _ = sh.Ack(g) // durable soon; until then a crash only redelivers
		}
		groups[id] = g[:0]
	}
	if refilled {
		s.readyAll(sub.key)
	}
	clear(mine)
	return mine
}

// byShard parses delivery ids into groups by shard. Ids that no shard of
// this deployment made are dropped: acking an unknown id has no effect.
func (s *Server) byShard(ids []string, groups map[uint32][]shard.DeliveryID) {
	for _, raw := range ids {
		id, err := shard.ParseDeliveryID(raw)
		if err != nil || id.Shard >= s.cfg.Shards {
			continue
		}
		groups[id.Shard] = append(groups[id.Shard], id)
	}
}

// giveBack returns unacknowledged delivery attempts to their shards.
func (s *Server) giveBack(attempts []shard.Attempt) {
	groups := make(map[uint32][]shard.Attempt)
	for _, a := range attempts {
		groups[a.ID.Shard] = append(groups[a.ID.Shard], a)
	}
	for id, g := range groups {
		if id >= s.cfg.Shards {
			continue
		}
		if sh := s.shard(id); sh != nil {
			sh.Return(g)
		}
	}
}

// readyShard tells shard id, if this node serves it, that a subscriber of
// key can take deliveries.
func (s *Server) readyShard(id uint32, key topicKey) {
	if sh := s.shard(id); sh != nil {
		sh.Ready(key.namespace, key.topic)
	}
}

// readyAll tells every shard that a subscriber of key can take
// deliveries.
func (s *Server) readyAll(key topicKey) {
	for i := range s.node.Shards() {
		s.readyShard(i, key)
	}
	s.relays.ready(key)
}
