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
	metrics *metrics

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

func newHub(m *metrics) *hub {
	h := &hub{metrics: m}
	h.topics.Store(&map[topicKey]*topic{})
	return h
}

// Dispatch implements shard.Dispatcher. It never blocks: it takes a unit
// of a subscriber's credit and queues the delivery for that subscriber's
// stream.
func (h *hub) Dispatch(d shard.Delivery) (time.Duration, bool) {
	t := (*h.topics.Load())[topicKey{d.Namespace, d.Topic}]
	if t == nil {
		return 0, false
	}
	n := uint32(len(t.subs))
	start := t.next.Add(1)
	for i := range n {
		sub := t.subs[(start+i)%n]
		if sub.offer(&d) {
			h.metrics.dispatched(&d)
			return sub.ackTimeout, true
		}
	}
	return 0, false
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
// by shards (under their locks), the other methods by the stream's two
// goroutines; all may run concurrently.
type subscriber struct {
	key        topicKey
	limit      int           // max_in_flight: the stream's credit
	ackTimeout time.Duration // passed to the shards with each delivery
	wake       chan struct{} // cap 1: queue is no longer empty

	mu sync.Mutex
	// out holds every delivery accepted and not yet acknowledged or
	// expired, queued or sent, by id.
	// Invariant: len(out) <= limit, and every entry of queue is in out
	// (settle and expire drop from queue what they drop from out).
	out map[string]held
	// queue holds accepted deliveries the stream has not sent yet.
	queue []shard.Delivery
	// closed is set when the stream ends; offer then refuses.
	closed bool
}

// held is a delivery a subscriber holds: when it was accepted, which
// attempt it is, and whether it still waits in the queue.
type held struct {
	at      time.Time
	attempt uint32
	queued  bool
}

func newSubscriber(key topicKey, limit int, ackTimeout time.Duration) *subscriber {
	return &subscriber{
		key:        key,
		limit:      limit,
		ackTimeout: ackTimeout,
		wake:       make(chan struct{}, 1),
		out:        make(map[string]held, limit),
	}
}

// offer queues d if the subscriber has credit. A redelivery of an id the
// subscriber still holds takes no more credit.
func (s *subscriber) offer(d *shard.Delivery) bool {
	s.mu.Lock()
	if _, again := s.out[d.ID]; s.closed || (len(s.out) >= s.limit && !again) {
		s.mu.Unlock()
		return false
	}
	s.out[d.ID] = held{at: d.Fired, attempt: d.Attempt, queued: true}
	s.queue = append(s.queue, *d)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
	return true
}

// take moves the queued deliveries into buf (reset first) and returns it.
func (s *subscriber) take(buf []shard.Delivery) []shard.Delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.queue {
		if h, ok := s.out[s.queue[i].ID]; ok && h.queued {
			h.queued = false
			s.out[s.queue[i].ID] = h
		}
	}
	buf, s.queue = s.queue, buf[:0]
	return buf
}

// settle frees the credit of acknowledged ids. It reports whether the
// subscriber was out of credit before, so the caller tells the shards it
// can take deliveries again.
func (s *subscriber) settle(ids []string) (refilled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	full := len(s.out) >= s.limit
	queued := false
	for _, id := range ids {
		if h, ok := s.out[id]; ok {
			queued = queued || h.queued
			delete(s.out, id)
		}
	}
	if queued {
		s.dropUnheldLocked()
	}
	return full && len(s.out) < s.limit
}

// dropUnheldLocked removes from queue the deliveries no longer in out: an
// acked occurrence need not be sent again, and an expired attempt has
// been taken back by its shard. Sending them would exceed the credit.
func (s *subscriber) dropUnheldLocked() {
	if len(s.queue) == 0 {
		return
	}
	s.queue = slices.DeleteFunc(s.queue, func(d shard.Delivery) bool {
		h, ok := s.out[d.ID]
		return !ok || h.attempt != d.Attempt
	})
}

// expire frees the credit of deliveries accepted at least ackTimeout
// before now: their shards have taken them back for redelivery, so
// holding their credit would starve the stream. Like settle, it reports
// whether the subscriber was out of credit before.
func (s *subscriber) expire(now time.Time) (refilled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	full := len(s.out) >= s.limit
	queued := false
	for id, h := range s.out {
		if now.Sub(h.at) >= s.ackTimeout {
			queued = queued || h.queued
			delete(s.out, id)
		}
	}
	if queued {
		s.dropUnheldLocked()
	}
	return full && len(s.out) < s.limit
}

// close refuses further deliveries and returns the attempts it held
// unacknowledged, which the caller hands back to their shards. Ids no
// shard made cannot be held: they came from a shard's Dispatch.
func (s *subscriber) close() []shard.Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	out := make([]shard.Attempt, 0, len(s.out))
	for id, h := range s.out {
		if d, err := shard.ParseDeliveryID(id); err == nil {
			out = append(out, shard.Attempt{ID: d, Number: h.attempt})
		}
	}
	s.out, s.queue = nil, nil
	return out
}
