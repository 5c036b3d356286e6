package server

import (
	"testing"
	"time"

	"github.com/timerd/timerd/shard"
)

func delivery(id string, attempt uint32, fired time.Time) *shard.Delivery {
	d := shard.DeliveryID{Shard: 0, Namespace: "default", TimerID: id, OccEpoch: 1, OccSeq: 1}
	return &shard.Delivery{ID: d.String(), Namespace: "default", TimerID: id, Topic: "t", Attempt: attempt, Fired: fired}
}

// TestSubscriberCredit: a subscriber takes at most its limit, an ack or an
// expiry gives credit back, and a queued delivery that was acked or
// expired meanwhile is not sent (it would exceed the credit).
func TestSubscriberCredit(t *testing.T) {
	now := time.Now()
	s := newSubscriber(topicKey{"default", "t"}, 2, time.Second)
	a1, b1, c1 := delivery("a", 1, now), delivery("b", 1, now), delivery("c", 1, now)
	if !s.offer(a1) || !s.offer(b1) {
		t.Fatal("refused within the credit")
	}
	if s.offer(c1) {
		t.Fatal("accepted beyond the credit")
	}
	if got := s.take(nil); len(got) != 2 {
		t.Fatalf("took %d, want 2", len(got))
	}
	// Attempt 2 of a, redelivered to the same stream, takes no more credit.
	a2 := delivery("a", 2, now.Add(time.Second))
	if !s.offer(a2) {
		t.Fatal("a redelivery of a held id was refused")
	}
	// A late ack of attempt 1 covers attempt 2: the queued copy is not sent.
	if refilled := s.settle([]string{a1.ID}); !refilled {
		t.Fatal("an ack on a full subscriber did not report refilled")
	}
	if got := s.take(nil); len(got) != 0 {
		t.Fatalf("sent %d acked deliveries", len(got))
	}
	// b expires: its credit comes back, and c (queued after) is dropped
	// when it expires before it is sent.
	if !s.offer(c1) {
		t.Fatal("refused with credit back")
	}
	s.expire(now.Add(time.Second))
	if got := s.take(nil); len(got) != 0 {
		t.Fatalf("sent %d expired deliveries", len(got))
	}
	if back := s.close(); len(back) != 0 {
		t.Fatalf("close gave back %v; everything was acked or expired", back)
	}
	if s.offer(delivery("d", 1, now)) {
		t.Fatal("a closed subscriber accepted a delivery")
	}
}

// TestSubscriberCloseGivesBackAttempts: close returns each held delivery
// with the attempt it holds.
func TestSubscriberCloseGivesBackAttempts(t *testing.T) {
	now := time.Now()
	s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
	s.offer(delivery("a", 1, now))
	s.offer(delivery("b", 3, now))
	s.take(nil)
	got := map[string]uint32{}
	for _, a := range s.close() {
		got[a.ID.TimerID] = a.Number
	}
	if len(got) != 2 || got["a"] != 1 || got["b"] != 3 {
		t.Fatalf("close gave back %v, want a:1 b:3", got)
	}
}
