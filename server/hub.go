package server

import (
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/timerd/timerd/shard"
)

// topicKey names the deliveries a subscriber takes.
type topicKey struct{ namespace, topic string }

// hub is the shards' Dispatcher: it hands each due timer to one
// subscriber of its namespace and topic that has credit. Dispatch may be
// called concurrently from every shard; add and remove from stream
// handlers.
type hub struct {
	// pace holds deliveries to their namespaces' delivery rates; nil
	// when none can have one. Set before the shards start.
	pace *pacer

	// mu serializes add and remove, which replace topics; Dispatch only
	// loads it and never locks.
	mu     sync.Mutex
	topics atomic.Pointer[map[topicKey]*topic]
}

// topic is the subscribers of one topic. It is never changed once
// published: add and remove publish a new one.
type topic struct {
	subs []*subscriber
	next atomic.Uint32 // round robin: where the next Dispatch starts
}

func newHub() *hub {
	h := &hub{}
	h.topics.Store(&map[topicKey]*topic{})
	return h
}

// Dispatch implements shard.Dispatcher. It never blocks: it takes a unit
// of a subscriber's credit and queues the delivery for that subscriber's
// stream. A redelivery goes to a subscriber that does not hold the
// occurrence if one has credit: the one that still holds it let the
// earlier attempt time out, and may have stopped reading. Only when none
// can take it does it replace the stale attempt on the stream holding
// it, in that attempt's credit. A delivery past its namespace's delivery
// rate is refused, to be offered again once the pacer tells its shard
// Ready.
func (h *hub) Dispatch(d shard.Delivery) (time.Duration, bool) {
	var paced *paceBucket
	if h.pace != nil {
		var ok bool
		if paced, ok = h.pace.take(&d); !ok {
			return 0, false
		}
	}
	if sub := h.hand(&d, nil); sub != nil {
		return sub.ackTimeout, true
	}
	if paced != nil {
		paced.giveBack()
	}
	return 0, false
}

// hand queues d for one subscriber of its topic, as Dispatch describes,
// and returns it, or nil when none can take it. A delivery that came on
// the relay via (non-nil) goes only to one-address subscribers: a stream
// of a peer or a direct one receives only this node's shards, so no
// delivery is relayed twice.
func (h *hub) hand(d *shard.Delivery, via *relayStream) *subscriber {
	t := (*h.topics.Load())[topicKey{d.Namespace, d.Topic}]
	if t == nil {
		return nil
	}
	n := uint32(len(t.subs))
	start := t.next.Add(1)
	for pass := range 2 {
		again := pass == 1
		if again && d.Attempt <= 1 {
			break
		}
		for i := range n {
			sub := t.subs[(start+i)%n]
			if via != nil && !sub.oneAddr {
				continue
			}
			if sub.offer(d, again, via) {
				return sub
			}
		}
	}
	return nil
}

// subscribers returns the subscribers of key.
func (h *hub) subscribers(key topicKey) []*subscriber {
	if t := (*h.topics.Load())[key]; t != nil {
		return t.subs
	}
	return nil
}

// relayed returns what the one-address subscribers of each topic ask of
// its relays: their credit summed, and their longest ack timeout. Topics
// without one are absent.
func (h *hub) relayed() map[topicKey]relayAsk {
	out := make(map[topicKey]relayAsk)
	for key, t := range *h.topics.Load() {
		for _, sub := range t.subs {
			if !sub.oneAddr {
				continue
			}
			a := out[key]
			a.credit += sub.limit
			a.ackTimeout = max(a.ackTimeout, sub.ackTimeout)
			out[key] = a
		}
	}
	return out
}

// add makes sub a subscriber of its topic.
func (h *hub) add(sub *subscriber) {
	h.update(sub.key, func(subs []*subscriber) []*subscriber { return append(subs, sub) })
}

// remove takes sub off its topic.
func (h *hub) remove(sub *subscriber) {
	h.update(sub.key, func(subs []*subscriber) []*subscriber {
		return slices.DeleteFunc(subs, func(s *subscriber) bool { return s == sub })
	})
}

func (h *hub) update(key topicKey, change func([]*subscriber) []*subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	next := maps.Clone(*h.topics.Load())
	var subs []*subscriber
	if t := next[key]; t != nil {
		subs = slices.Clone(t.subs)
	}
	if subs = change(subs); len(subs) == 0 {
		delete(next, key)
	} else {
		next[key] = &topic{subs: subs}
	}
	h.topics.Store(&next)
}

// subscriber is one Subscribe stream's side of the hub. offer is called
// by shards (under their locks), the other methods by the stream's
// goroutines; all may run concurrently.
type subscriber struct {
	key        topicKey
	limit      int           // max_in_flight: the stream's credit
	ackTimeout time.Duration // passed to the shards with each delivery
	wake       chan struct{} // cap 1: queue is no longer empty
	// oneAddr is set on a cluster member for a client's stream that did
	// not ask for this node's shards only (Subscription.local): it also
	// takes the deliveries relayed from the peers. A peer's stream (a
	// relay) and a direct one take only this node's.
	oneAddr bool

	mu sync.Mutex
	// out holds every delivery accepted and not yet acknowledged or
	// expired, queued, taken by the sender or sent, by id: one entry per
	// occurrence, for its latest attempt.
	// Invariant: len(out) <= limit; queue holds exactly the entries of
	// out whose state is queued, each once, at its qi, with its attempt;
	// at most one entry is inProgress, the one in the sender's Send.
	out map[string]held
	// queue holds accepted deliveries the sender has not taken yet.
	queue []shard.Delivery
	// lapsed and lapsedOld hold the ids whose attempt expired here at the
	// last sweep and at the one before: a redelivery of one of them goes
	// to another stream first, as one of an id still in out does, whether
	// or not the sweep ran before the redelivery came (when the shard's
	// backoff is shorter than two sweeps, as first redeliveries are).
	lapsed, lapsedOld map[string]struct{}
	// refusedHeld holds the ids of out that a shard offered again on the
	// first pass and was refused because this stream holds them (a shard
	// reloaded on this node fires an occurrence this stream still has
	// from the previous load, as attempt 1 again). Such a shard keeps the
	// timer, and every later one of its topic, waiting for Ready; credit
	// coming back is no signal when the stream never ran out, so letting
	// go of one of these ids is.
	// Invariant: every id in refusedHeld is in out.
	refusedHeld map[string]struct{}
	// sendStart is when the Send in progress began; zero while the sender
	// is not in Send.
	sendStart time.Time
	// inSend is the delivery whose Send was in progress when the stream
	// closed, which done gives back once that Send's outcome is known.
	// Invariant: set only while closed and the sender is in Send.
	inSend *sending
	// closed is set when the stream ends; offer then refuses.
	closed bool
	// starved is set when offer refuses a delivery for want of credit,
	// and cleared when the shards are told the subscriber takes
	// deliveries again (see refilledLocked).
	starved bool
}

// held is a delivery a subscriber holds.
type held struct {
	at      time.Time // when its shard handed it over; its ack timeout runs from then
	attempt uint32
	state   sendState
	qi      int // index in queue while queued
	// seen is set once a Send of an attempt of the occurrence began on
	// the stream: from then on the stream may acknowledge it, also while
	// a later attempt waits in the queue.
	seen bool
	// via is the relay the delivery came on, nil for one of this node's
	// shards: its ack, and its return when it is not acked, go there.
	via *relayStream
}

// sendState is where a held delivery is on its way to the client.
type sendState uint8

const (
	queued     sendState = iota // in queue
	taken                       // taken by the sender, its Send not begun or failed
	inProgress                  // its Send began and has not returned
	sent                        // Send returned without error
)

// sending is a delivery held in a Send that was in progress when its
// stream closed.
type sending struct {
	id string
	held
}

func newSubscriber(key topicKey, limit int, ackTimeout time.Duration) *subscriber {
	return &subscriber{
		key:         key,
		limit:       limit,
		ackTimeout:  ackTimeout,
		wake:        make(chan struct{}, 1),
		out:         make(map[string]held, limit),
		refusedHeld: make(map[string]struct{}),
		lapsed:      make(map[string]struct{}),
		lapsedOld:   make(map[string]struct{}),
	}
}

// offer queues d if the subscriber can take it. With again false it takes
// d only when it has credit and did not let an earlier attempt of d's
// occurrence time out (it does not hold it, and it did not lapse here
// lately). With again true it takes only a redelivery of an occurrence
// it let time out: one it still holds, whose place and credit d takes
// (replacing it in the queue if it was not taken yet), or one that
// lapsed here, if it has credit.
//
// via is the relay d came on, nil for a delivery of this node's shards.
func (s *subscriber) offer(d *shard.Delivery, again bool, via *relayStream) bool {
	s.mu.Lock()
	h, holds := s.out[d.ID]
	lapsed := false
	if !holds && d.Attempt > 1 {
		_, lapsed = s.lapsed[d.ID]
		if !lapsed {
			_, lapsed = s.lapsedOld[d.ID]
		}
	}
	full := len(s.out) >= s.limit
	var ok bool
	switch {
	case s.closed:
	case holds:
		// The shard took back the attempt held here: a later one may
		// take its place, on the last pass.
		ok = again && d.Attempt > h.attempt
	case lapsed:
		ok = again && !full
	default:
		ok = !full
	}
	if full && !ok && !holds {
		s.starved = true
	}
	if !ok {
		if holds && !s.closed {
			s.refusedHeld[d.ID] = struct{}{}
		}
		s.mu.Unlock()
		return false
	}
	switch {
	case !holds:
		h = held{qi: len(s.queue)}
		s.queue = append(s.queue, *d)
	case h.state == queued:
		s.queue[h.qi] = *d
	default:
		h.qi = len(s.queue)
		s.queue = append(s.queue, *d)
	}
	h.at, h.attempt, h.state, h.via = d.Fired, d.Attempt, queued, via
	s.out[d.ID] = h
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// take moves the queued deliveries into buf (reset first) and returns it.
// The sender calls begin before it sends each and done after.
func (s *subscriber) take(buf []shard.Delivery) []shard.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.queue {
		id := s.queue[i].ID
		h := s.out[id]
		h.state = taken
		s.out[id] = h
	}
	buf, s.queue = s.queue, buf[:0]
	return buf
}

// begin reports whether d, taken, is still to be sent: it was not acked,
// expired or replaced by a later attempt meanwhile. On true the Send that
// follows counts as in progress from now until done, and the stream may
// ack d from now on: the client can have it, and its ack can come in
// before Send returns.
//
// relayed reports whether d came on a relay: the peer that owns its shard
// counted it when it sent it.
func (s *subscriber) begin(d *shard.Delivery, now time.Time) (ok, relayed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	h, ok := s.out[d.ID]
	if !ok || h.attempt != d.Attempt || h.state != taken {
		return false, false
	}
	h.seen, h.state = true, inProgress
	s.out[d.ID] = h
	s.sendStart = now
	return true, h.via != nil
}

// done ends the Send that begin started; ok says whether it succeeded,
// that is, whether gRPC handed d to the transport (a Send that fails
// hands it nothing: no one can have seen it). If the stream closed
// during that Send, close left d out, and done gives it back: a relayed
// one to its relay, and one of this node's shards as back, which the
// caller returns to its shard, Unsent unless ok.
func (s *subscriber) done(d *shard.Delivery, ok bool) (back shard.Attempt, give bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendStart = time.Time{}
	if p := s.inSend; p != nil && p.id == d.ID && p.attempt == d.Attempt {
		s.inSend = nil
		return s.giveBackLocked(p.id, p.held, !ok)
	}
	if h, held := s.out[d.ID]; held && h.attempt == d.Attempt && h.state == inProgress {
		h.state = taken
		if ok {
			h.state = sent
		}
		s.out[d.ID] = h
	}
	return shard.Attempt{}, false
}

// giveBackLocked gives back h, held as id, which the stream has stopped
// holding: a relayed delivery to its relay, and one of this node's
// shards as back, for the caller to return to its shard. unsent says no
// Send of h's attempt handed it to the transport. Ids no shard made
// cannot be held: they came from a shard's Dispatch.
func (s *subscriber) giveBackLocked(id string, h held, unsent bool) (back shard.Attempt, give bool) {
	if h.via != nil {
		h.via.release(id, unsent)
		return shard.Attempt{}, false
	}
	d, err := shard.ParseDeliveryID(id)
	if err != nil {
		return shard.Attempt{}, false
	}
	return shard.Attempt{ID: d, Number: h.attempt, Unsent: unsent}, true
}

// blocked returns how long the Send in progress has been blocked at now,
// zero when none is.
func (s *subscriber) blocked(now time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sendStart.IsZero() {
		return 0
	}
	return now.Sub(s.sendStart)
}

// acks sorts the ids of an Ack message: those the stream may acknowledge
// (it holds them and was sent an attempt of them) have their credit
// freed, and are appended to mine when they are of this node's shards or
// passed to their relay, which sends them to their owner; the others are
// counted in notHeld (held by another stream, by none, or repeated) and
// notSent (held but not sent yet). refilled reports whether credit a
// shard was refused for came back (see refilledLocked), or the stream let
// go of an id a shard was refused for (see refusedHeld), so the caller
// tells the shards it can take deliveries again.
func (s *subscriber) acks(ids, mine []string) (_ []string, notHeld, notSent int, refilled bool) {
	notHeld, notSent, refilled = s.settle(ids, func(id string, h held) {
		if h.via != nil {
			h.via.ack(id)
		} else {
			mine = append(mine, id)
		}
	})
	return mine, notHeld, notSent, refilled
}

// settle takes the ids the stream may settle (it holds them and was sent
// an attempt of them) off the subscriber, freeing their credit, after
// passing each to each, which runs with mu held. It counts the others as
// acks describes, and reports refilled as acks does.
func (s *subscriber) settle(ids []string, each func(id string, h held)) (notHeld, notSent int, refilled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wasQueued, wanted := false, false
	for _, id := range ids {
		h, ok := s.out[id]
		switch {
		case !ok:
			notHeld++
		case !h.seen:
			notSent++
		default:
			each(id, h)
			wasQueued = wasQueued || h.state == queued
			wanted = s.letGoLocked(id) || wanted
		}
	}
	if wasQueued {
		s.compactLocked()
	}
	return notHeld, notSent, s.refilledLocked() || wanted
}

// refilledLocked reports whether the shards should hear that the
// subscriber takes deliveries again: a shard was refused for want of
// credit since they last heard it, and a quarter of the credit is free
// now. Waiting for a quarter, not one ack, spares the shards most of the
// wakeups: a herd's subscriber runs out of credit after every ack
// message, and every shard holding its deliveries wakes for every
// Ready, to find the first few took the credit. The credit still in
// flight comes back acked or expired, so the quarter comes.
func (s *subscriber) refilledLocked() bool {
	if !s.starved || s.limit-len(s.out) < max(s.limit/4, 1) {
		return false
	}
	s.starved = false
	return true
}

// letGoLocked removes id from out and reports whether a shard was refused
// it because it was held here, and so waits for Ready.
func (s *subscriber) letGoLocked(id string) (wanted bool) {
	delete(s.out, id)
	if _, wanted = s.refusedHeld[id]; wanted {
		delete(s.refusedHeld, id)
	}
	return wanted
}

// compactLocked removes from queue the deliveries no longer held: an
// acked occurrence need not be sent again, and an expired attempt has
// been taken back by its shard. Sending them would exceed the credit.
func (s *subscriber) compactLocked() {
	j := 0
	for i := range s.queue {
		d := &s.queue[i]
		h, ok := s.out[d.ID]
		if !ok || h.attempt != d.Attempt || h.state != queued {
			continue
		}
		if i != j {
			s.queue[j] = *d
			h.qi = j
			s.out[d.ID] = h
		}
		j++
	}
	clear(s.queue[j:]) // let go of the payloads
	s.queue = s.queue[:j]
}

// expire frees the credit of deliveries accepted at least ackTimeout
// before now: their shards have taken them back for redelivery, so
// holding their credit would starve the stream. A relayed one is given
// back to its relay, which returns it to its owner: the relay's own ack
// timeout is the longest of its subscribers'. It reports refilled as
// acks does.
func (s *subscriber) expire(now time.Time) (refilled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lapsedOld, s.lapsed = s.lapsed, s.lapsedOld
	clear(s.lapsed)
	wasQueued, wanted := false, false
	for id, h := range s.out {
		if now.Sub(h.at) >= s.ackTimeout {
			wasQueued = wasQueued || h.state == queued
			wanted = s.letGoLocked(id) || wanted
			s.lapsed[id] = struct{}{}
			if h.via != nil {
				h.via.release(id, !h.seen)
			}
		}
	}
	if wasQueued {
		s.compactLocked()
	}
	return s.refilledLocked() || wanted
}

// close refuses further deliveries and returns the attempts it held
// unacknowledged, which the caller hands back to their shards; relayed
// ones go back to their relays instead, which return them to their
// owners. An attempt that no Send handed to the transport (queued, taken,
// or its Send failed) is marked Unsent: no one saw it, so it must not
// count. One whose Send returned counts. One whose Send is in progress
// is left to done, which gives it back once that Send returns: counted
// if it handed the delivery over, so that a consumer that crashes on a
// delivery at once, before the sender is back from Send, still uses up
// an attempt (or a payload that kills its consumers would never become
// a dead letter), and Unsent if it failed.
func (s *subscriber) close() []shard.Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	out := make([]shard.Attempt, 0, len(s.out))
	for id, h := range s.out {
		if h.state == inProgress {
			s.inSend = &sending{id, h}
			continue
		}
		if a, ok := s.giveBackLocked(id, h, h.state != sent); ok {
			out = append(out, a)
		}
	}
	s.out, s.queue, s.lapsed, s.lapsedOld, s.refusedHeld = nil, nil, nil, nil, nil
	return out
}

// drop forgets the deliveries that came on the relay via, which has
// ended: its owner has them back and redelivers them, and an ack of them
// here would go nowhere. It reports refilled as acks does.
func (s *subscriber) drop(via *relayStream) (refilled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	n := len(s.out)
	wanted := false
	for id, h := range s.out {
		if h.via == via {
			wanted = s.letGoLocked(id) || wanted
		}
	}
	if len(s.out) < n {
		s.compactLocked()
	}
	return s.refilledLocked() || wanted
}

// release sorts the ids of a Release message as acks does, and returns
// the attempts the stream gives back, which the caller returns to their
// shards: those it may acknowledge, marked Unsent when unsent is set. A
// released id counts as lapsed here, so its redelivery goes to another
// stream first.
func (s *subscriber) release(ids []string, unsent bool) (_ []shard.Attempt, notHeld, notSent int, refilled bool) {
	var out []shard.Attempt
	notHeld, notSent, refilled = s.settle(ids, func(id string, h held) {
		s.lapsed[id] = struct{}{}
		// Only a peer's stream may give back unsent (Subscribe refuses
		// it from others), and it holds nothing relayed: a relayed
		// delivery goes back to its relay as seen.
		if a, ok := s.giveBackLocked(id, h, unsent); ok {
			out = append(out, a)
		}
	})
	return out, notHeld, notSent, refilled
}
