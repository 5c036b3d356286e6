package server

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
)

// Relays make one address enough for a subscriber. While a cluster
// member has one-address subscribers of a topic (client streams that did
// not set Subscription.local), it keeps a relay open to every peer: an
// ordinary Subscribe stream for that topic, marked forwarded, so that the
// peer's hub counts it as one subscriber of the topic, serves it from its
// own shards only and never relays it on. Each delivery that comes on a
// relay is handed to a one-address subscriber here, which holds it with
// the relay it came on; its ack goes back on that relay to the owner.
//
// Credit: a relay asks its peer for the credit of the topic's
// one-address subscribers here, summed (at most Config.MaxInFlight), and
// for the longest of their ack timeouts. It is opened again, with the new
// figure, once that sum has doubled or halved. A delivery that no
// subscriber here has room for waits on the relay, for relayHold at
// most, then goes back to its owner unsent (its attempt does not count),
// which hands it to another subscriber. So a relay's peer never holds
// more for it than its credit, and a relay never keeps a delivery that
// no subscriber here can take for longer than relayHold: a slow or dead
// subscriber here does not hold up the peer's timers.
//
// A delivery a subscriber here gives back (its stream ended, or its ack
// timeout passed) goes back on its relay to its owner. When a relay
// breaks, its owner takes back what it held (as for any stream that
// ends), and the subscribers here forget the deliveries that came on it:
// they can no longer be acked, and their owner delivers them again.
//
// # Invariants
//
//   - Only one-address subscribers take relayed deliveries; relays, and
//     streams that set Subscription.local, never open relays.
//   - A relayed delivery is held here by at most one subscriber, with the
//     relay it came on; acks and give-backs of it go on that relay only
//     while it is open, and it is forgotten when the relay ends.
//   - A relay names the node that opened it (relayNodeKey). On the
//     owner, a relay stream of a peer that was a member and is no
//     longer in the view the owner acts on is ended, and handed nothing
//     more, when that view is taken up: a peer partitioned away or
//     paused keeps its connections open, and what the owner handed it
//     would wait out the ack timeout (see peerRelays).
//   - Each relay (one per topic and peer) is a goroutine of the Server's
//     wait group, with two helpers it waits for; all end when their
//     topic has no one-address subscriber left, the peer leaves the
//     membership, or the Server closes.

// relayHold is how long a relayed delivery waits here for a subscriber
// with room before it goes back to its owner.
const relayHold = time.Second

// relayBackoff bounds the wait before a relay that broke is opened
// again: the minimum after a relay that lasted relayHealthy, doubling up
// to the maximum while they keep breaking sooner.
const (
	relayMinBackoff = 50 * time.Millisecond
	relayMaxBackoff = 2 * time.Second
	relayHealthy    = 10 * time.Second
)

// relayAsk is what the one-address subscribers of a topic ask of its
// relays: their credit summed and their longest ack timeout.
type relayAsk struct {
	credit     int
	ackTimeout time.Duration
}

// relayKey names one relay: a topic and the peer's gRPC address.
type relayKey struct {
	topicKey
	addr string
}

// relays opens and closes this node's relays as its one-address
// subscribers and the membership change. kick may be called from any
// goroutine; run is the one goroutine that acts on it.
type relays struct {
	s    *Server
	kick chan struct{} // cap 1: subscribers or members changed

	// loops is owned by run: the relays running, by topic and peer.
	loops map[relayKey]*relayLoop

	mu sync.Mutex
	// open is guarded by mu: the relay streams open, by topic, which
	// ready wakes.
	open map[topicKey]map[*relayStream]struct{}
}

// relayLoop is one relay's goroutine, opening its stream again whenever
// it ends.
type relayLoop struct {
	cancel context.CancelFunc
	// reopen (cap 1) asks the stream open to end at once, so that the
	// loop opens it again with the credit and ack timeout asked now.
	reopen chan struct{}
	// credit and ackTimeout are what the stream open asked for; run
	// reads them.
	mu         sync.Mutex
	credit     int
	ackTimeout time.Duration
}

func newRelays(s *Server) *relays {
	return &relays{s: s, kick: make(chan struct{}, 1), loops: make(map[relayKey]*relayLoop),
		open: make(map[topicKey]map[*relayStream]struct{})}
}

// ready tells the relays of key that a subscriber here has room again,
// so that the deliveries waiting on them are placed now.
func (r *relays) ready(key topicKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for rs := range r.open[key] {
		signal(rs.arrived)
	}
}

// opened and ended add rs to open and take it off.
func (r *relays) opened(rs *relayStream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.open[rs.key.topicKey]
	if m == nil {
		m = make(map[*relayStream]struct{})
		r.open[rs.key.topicKey] = m
	}
	m[rs] = struct{}{}
}

func (r *relays) ended(rs *relayStream) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.open[rs.key.topicKey], rs)
	if len(r.open[rs.key.topicKey]) == 0 {
		delete(r.open, rs.key.topicKey)
	}
}

// changed tells run that subscribers or members changed. It never blocks.
func (r *relays) changed() { signal(r.kick) }

// run keeps the relays this node needs until Close begins; then it stops
// them. The Server's wait group waits for it and for every loop.
func (r *relays) run() {
	defer func() {
		for _, l := range r.loops {
			l.cancel()
		}
	}()
	for {
		r.reconcile()
		select {
		case <-r.kick:
		case <-r.s.quit:
			return
		}
	}
}

// reconcile starts a relay for every topic with one-address subscribers
// and every peer, stops the others, and reopens those whose credit is
// off by a factor of two or whose ack timeout is shorter than a
// subscriber's.
//
// Invariant: a relay's ack timeout is at least the longest of its
// topic's one-address subscribers here (once reconcile has run). The
// owner takes a relayed delivery back when the relay's ack timeout
// lapses, so a shorter one would send again, elsewhere, what a
// subscriber still holds within its own ack timeout; this node expires
// each delivery by its subscriber's ack timeout and gives it back itself.
// A longer ack timeout than needed only delays the owner's taking back
// when this node stops relaying without ending the stream, so a relay is
// not reopened when its subscribers' ack timeouts shrink.
func (r *relays) reconcile() {
	s := r.s
	asks := s.hub.relayed()
	var peers []string
	if v := s.view.Load(); v != nil {
		for _, m := range v.Members {
			if m.Name != s.cfg.NodeName && m.GRPCAddr != "" {
				peers = append(peers, m.GRPCAddr)
			}
		}
	}
	want := make(map[relayKey]bool)
	for key, ask := range asks {
		credit := min(ask.credit, int(s.cfg.MaxInFlight))
		ackTimeout := s.relayAckTimeout(ask)
		for _, addr := range peers {
			k := relayKey{key, addr}
			want[k] = true
			if l := r.loops[k]; l != nil {
				l.mu.Lock()
				cur, curAck := l.credit, l.ackTimeout
				l.mu.Unlock()
				if cur > 0 && (credit >= 2*cur || 2*credit <= cur || ackTimeout > curAck) {
					signal(l.reopen)
				}
				continue
			}
			ctx, cancel := context.WithCancel(s.quitCtx)
			l := &relayLoop{cancel: cancel, reopen: make(chan struct{}, 1)}
			r.loops[k] = l
			s.wg.Go(func() { r.loop(ctx, k, l) })
		}
	}
	for k, l := range r.loops {
		if !want[k] {
			l.cancel()
			delete(r.loops, k)
		}
	}
}

// relayAckTimeout is the ack timeout a relay asks its peer for: the
// longest its subscribers ask, within the bounds a subscription may ask.
func (s *Server) relayAckTimeout(ask relayAsk) time.Duration {
	return min(max(ask.ackTimeout, s.cfg.MinAckTimeout), s.cfg.MaxAckTimeout)
}

// loop keeps the relay k open until ctx ends, opening it again with
// backoff when it breaks.
func (r *relays) loop(ctx context.Context, k relayKey, l *relayLoop) {
	backoff := relayMinBackoff
	for ctx.Err() == nil {
		began := time.Now()
		reopened, err := r.session(ctx, k, l)
		if ctx.Err() != nil {
			return
		}
		if reopened {
			continue
		}
		if time.Since(began) >= relayHealthy {
			backoff = relayMinBackoff
		}
		wait := backoff/2 + rand.N(backoff-backoff/2+1)
		r.s.log.Debug("relay ended; opening it again", "peer", k.addr, "namespace", k.namespace,
			"topic", k.topic, "backoff", wait, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		backoff = min(2*backoff, relayMaxBackoff)
	}
}

// session runs one relay stream until it breaks, ctx ends or the loop is
// asked to reopen it (reopened true).
func (r *relays) session(ctx context.Context, k relayKey, l *relayLoop) (reopened bool, err error) {
	s := r.s
	ask, ok := s.hub.relayed()[k.topicKey]
	if !ok {
		return false, nil // the subscribers left; run stops the loop
	}
	credit := min(ask.credit, int(s.cfg.MaxInFlight))
	ackTimeout := s.relayAckTimeout(ask)
	c, err := s.peers.timers(k.addr)
	if err != nil {
		return false, err
	}
	// A relay is on no one caller's behalf: it authenticates as the node
	// (the local subscribers' tokens were checked when they subscribed).
	sctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(s.NodeContext(ctx), forwardedKey, "1", relayNodeKey, s.cfg.NodeName))
	defer cancel()
	stream, err := c.Subscribe(sctx)
	if err != nil {
		return false, err
	}
	sub := &pb.Subscription{Namespace: k.namespace, Topic: k.topic, MaxInFlight: uint32(credit),
		AckTimeout: durationpb.New(ackTimeout), Local: true}
	if err := stream.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		return false, err
	}
	l.mu.Lock()
	l.credit, l.ackTimeout = credit, ackTimeout
	l.mu.Unlock()
	rs := newRelayStream(k, s.cfg.MaxBatch)
	r.opened(rs)
	s.metrics.relaysOpen.Inc()
	s.metrics.relaysOpened.Inc()
	defer s.metrics.relaysOpen.Dec()

	var wg sync.WaitGroup
	received := make(chan error, 1)
	sent := make(chan error, 1)
	wg.Go(func() { received <- r.receive(stream, rs) })
	wg.Go(func() { sent <- r.send(sctx, stream, rs) })
	defer func() {
		// Forget what the subscribers here hold of this relay before its
		// owner takes it back, so that no ack of it goes astray.
		rs.close()
		r.ended(rs)
		for _, sub := range s.hub.subscribers(k.topicKey) {
			if sub.drop(rs) {
				s.readyAll(k.topicKey)
			}
		}
		cancel()
		wg.Wait()
	}()
	tick := time.NewTicker(relayHold / 4)
	defer tick.Stop()
	for {
		select {
		case err := <-received:
			return false, err
		case err := <-sent:
			return false, err
		case <-ctx.Done():
			return false, nil
		case <-l.reopen:
			return true, nil
		case <-rs.arrived:
			r.place(rs, time.Now())
		case now := <-tick.C:
			r.place(rs, now)
		}
	}
}

// receive reads the relay's deliveries into rs until the stream ends. It
// is the only goroutine that calls Recv.
func (r *relays) receive(stream pb.TimerService_SubscribeClient, rs *relayStream) error {
	for {
		m, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		d := m.GetDelivery()
		if d == nil {
			continue
		}
		r.s.metrics.relayedDeliveries.Inc()
		rs.push(shard.Delivery{
			ID: d.GetDeliveryId(), Namespace: d.GetNamespace(), TimerID: d.GetId(), Topic: d.GetTopic(),
			Payload: d.GetPayload(), Due: d.GetDueTime().AsTime(), Fired: d.GetFiredTime().AsTime(),
			Attempt: d.GetAttempt(), Shard: d.GetShard(), Epoch: d.GetEpoch(),
		}, time.Now())
	}
}

// send sends the acks and give-backs of rs until ctx ends or a Send
// fails. It is the only goroutine that calls Send once the subscription
// is sent.
func (r *relays) send(ctx context.Context, stream pb.TimerService_SubscribeClient, rs *relayStream) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-rs.wake:
		}
		for {
			msg := rs.next()
			if msg == nil {
				break
			}
			if a := msg.GetAck(); a != nil {
				r.s.metrics.relayedAcks.Add(float64(len(a.GetDeliveryIds())))
			} else {
				r.s.metrics.relayedReleases.Add(float64(len(msg.GetRelease().GetDeliveryIds())))
			}
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
	}
}

// place hands the deliveries waiting on rs to the one-address
// subscribers here, and gives back to the owner those that waited
// relayHold without finding room.
func (r *relays) place(rs *relayStream, now time.Time) {
	waiting := rs.take()
	if len(waiting) == 0 {
		return
	}
	kept := waiting[:0]
	for _, w := range waiting {
		switch {
		case r.s.hub.hand(&w.d, rs) != nil:
		case now.Sub(w.since) >= relayHold:
			rs.release(w.d.ID, true)
		default:
			kept = append(kept, w)
		}
	}
	rs.putBack(kept)
}

// relayStream is one open relay stream: the deliveries that came on it
// and wait for room here, and the acks and give-backs to send back on it.
// push, take and putBack are called by the relay's goroutines; ack and
// release by subscribers, under their locks, so they never block.
type relayStream struct {
	key      relayKey
	maxBatch int           // ids per Ack or Release message
	arrived  chan struct{} // cap 1: a delivery came
	wake     chan struct{} // cap 1: there is something to send

	mu sync.Mutex
	// waiting holds the deliveries that came and found no room yet, in
	// order of arrival. acks, given and unsent are the ids to send back:
	// acked, given back after a consumer could see them, and given back
	// unseen. closed is set when the relay ends: ids are dropped then.
	waiting             []waitingDelivery
	acks, given, unsent []string
	closed              bool
}

// waitingDelivery is a relayed delivery that found no room, and since
// when.
type waitingDelivery struct {
	d     shard.Delivery
	since time.Time
}

func newRelayStream(k relayKey, maxBatch int) *relayStream {
	return &relayStream{key: k, maxBatch: maxBatch, arrived: make(chan struct{}, 1), wake: make(chan struct{}, 1)}
}

func (rs *relayStream) push(d shard.Delivery, now time.Time) {
	rs.mu.Lock()
	rs.waiting = append(rs.waiting, waitingDelivery{d, now})
	rs.mu.Unlock()
	signal(rs.arrived)
}

// take returns the waiting deliveries; putBack puts the ones that found
// no room back in front of those that came meanwhile.
func (rs *relayStream) take() []waitingDelivery {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	w := rs.waiting
	rs.waiting = nil
	return w
}

func (rs *relayStream) putBack(kept []waitingDelivery) {
	if len(kept) == 0 {
		return
	}
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.waiting = append(kept, rs.waiting...)
}

// ack queues id to be acked to its owner.
func (rs *relayStream) ack(id string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if !rs.closed {
		rs.acks = append(rs.acks, id)
		signal(rs.wake)
	}
}

// release queues id to be given back to its owner; unsent says that no
// consumer can have seen it.
func (rs *relayStream) release(id string, unsent bool) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.closed {
		return
	}
	if unsent {
		rs.unsent = append(rs.unsent, id)
	} else {
		rs.given = append(rs.given, id)
	}
	signal(rs.wake)
}

// next returns the next message to send, nil when there is none.
func (rs *relayStream) next() *pb.SubscribeRequest {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	cut := func(ids *[]string) []string {
		n := min(len(*ids), rs.maxBatch)
		out := (*ids)[:n:n]
		*ids = (*ids)[n:]
		return out
	}
	switch {
	case len(rs.acks) > 0:
		return &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: cut(&rs.acks)}}}
	case len(rs.unsent) > 0:
		return &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Release{Release: &pb.Release{DeliveryIds: cut(&rs.unsent), Unsent: true}}}
	case len(rs.given) > 0:
		return &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Release{Release: &pb.Release{DeliveryIds: cut(&rs.given)}}}
	}
	return nil
}

// close drops what is waiting and refuses further ids.
func (rs *relayStream) close() {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	rs.closed = true
	rs.waiting, rs.acks, rs.given, rs.unsent = nil, nil, nil, nil
}

// signal wakes the reader of ch, a channel of capacity 1, without
// blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// relayNodeKey is the metadata key that names, on a relay stream, the
// node that opened it. With tokens on, only a node token may open a
// relay (see authorizer.stream), so the name is a peer's own word.
const relayNodeKey = "timerd-relay-node"

// relayNode returns the node that opened the relay stream of ctx, "" for
// a stream that names none (a client's, or a peer's of an older version).
func relayNode(ctx context.Context) string {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(relayNodeKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// peerRelays are the relay streams the peers opened here, by the peer
// that opened each. The owner of a shard hands deliveries into a relay
// like into any stream, and a peer that is cut off or paused keeps its
// TCP connections open until keepalive gives up: every delivery handed
// to its relay then waits out the ack timeout. So once the membership
// declares the peer dead or gone, its relays here are ended: the
// handler gives back what they held (as for any stream that ends) and
// the hub hands them nothing more. Its methods may be called
// concurrently.
type peerRelays struct {
	mu sync.Mutex
	// byPeer holds the relays open here, by peer name. members are the
	// names in the view follow was last given; departed the peers that
	// were members and are not any longer, whose new relays are refused.
	// Invariant: no relay in byPeer is of a departed peer and seen.
	byPeer   map[string]map[*peerRelay]struct{}
	members  map[string]bool
	departed map[string]struct{}
}

// peerRelay is one relay stream a peer opened here.
type peerRelay struct {
	// gone is closed when the peer leaves the membership: the stream's
	// handler then ends it.
	gone chan struct{}
	// seen is set once the peer was a member since the stream opened;
	// only then does its absence end the stream (a peer that just joined
	// may open a relay before this node's view has it). Guarded by
	// peerRelays.mu.
	seen bool
}

func newPeerRelays() *peerRelays {
	return &peerRelays{byPeer: make(map[string]map[*peerRelay]struct{}), departed: make(map[string]struct{})}
}

// add registers a relay stream that peer opened. It returns nil when the
// peer has left the membership since it was last a member: the stream
// is refused.
func (p *peerRelays) add(peer string) *peerRelay {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.departed[peer]; ok {
		return nil
	}
	r := &peerRelay{gone: make(chan struct{}), seen: p.members[peer]}
	m := p.byPeer[peer]
	if m == nil {
		m = make(map[*peerRelay]struct{})
		p.byPeer[peer] = m
	}
	m[r] = struct{}{}
	return r
}

// remove takes r, which peer opened, off once its stream has ended.
func (p *peerRelays) remove(peer string, r *peerRelay) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.byPeer[peer], r)
	if len(p.byPeer[peer]) == 0 {
		delete(p.byPeer, peer)
	}
}

// follow ends the relays of every peer that was a member and is not in
// members, the names in the view this node acts on from now, and
// returns how many it ended. members must not be changed afterwards.
func (p *peerRelays) follow(members map[string]bool) (ended int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name := range p.members {
		if !members[name] {
			p.departed[name] = struct{}{}
		}
	}
	for name := range members {
		delete(p.departed, name)
	}
	p.members = members
	for peer, rs := range p.byPeer {
		present := members[peer]
		for r := range rs {
			switch {
			case present:
				r.seen = true
			case r.seen:
				close(r.gone)
				delete(rs, r)
				ended++
			}
		}
		if len(rs) == 0 {
			delete(p.byPeer, peer)
		}
	}
	return ended
}
