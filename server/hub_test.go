package server

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/timerd/timerd/shard"
)

func delivery(id string, attempt uint32, fired time.Time) *shard.Delivery {
	d := shard.DeliveryID{Shard: 0, Namespace: "default", TimerID: id, OccEpoch: 1, OccSeq: 1}
	return &shard.Delivery{ID: d.String(), Namespace: "default", TimerID: id, Topic: "t", Attempt: attempt, Fired: fired}
}

// sendAll takes s's queue and sends it as the sender would.
func sendAll(s *subscriber, now time.Time) []shard.Delivery {
	got := s.take(nil)
	for i := range got {
		if ok, _ := s.begin(&got[i], now); ok {
			s.done(&got[i], true)
		}
	}
	return got
}

// TestSubscriberCredit: a subscriber takes at most its limit, an ack or an
// expiry gives credit back, and a queued delivery that was acked or
// expired meanwhile is not sent (it would exceed the credit).
func TestSubscriberCredit(t *testing.T) {
	now := time.Now()
	s := newSubscriber(topicKey{"default", "t"}, 2, time.Second)
	a1, b1, c1 := delivery("a", 1, now), delivery("b", 1, now), delivery("c", 1, now)
	if !s.offer(a1, false, nil) || !s.offer(b1, false, nil) {
		t.Fatal("refused within the credit")
	}
	if s.offer(c1, false, nil) {
		t.Fatal("accepted beyond the credit")
	}
	if got := sendAll(s, now); len(got) != 2 {
		t.Fatalf("took %d, want 2", len(got))
	}
	// Attempt 2 of a is offered to the stream holding attempt 1 only as a
	// last resort, and then takes no more credit.
	a2 := delivery("a", 2, now.Add(time.Second))
	if s.offer(a2, false, nil) {
		t.Fatal("a redelivery went to its holder on the first pass")
	}
	if !s.offer(a2, true, nil) {
		t.Fatal("a redelivery of a held id was refused on the last pass")
	}
	if s.offer(delivery("a", 2, now), true, nil) {
		t.Fatal("the same attempt was accepted twice")
	}
	// A late ack of attempt 1 covers attempt 2: the queued copy is not sent.
	mine, notHeld, notSent, refilled := s.acks([]string{a1.ID}, nil)
	if len(mine) != 1 || notHeld != 0 || notSent != 0 || !refilled {
		t.Fatalf("ack of a sent delivery on a full subscriber = %v %d %d %v", mine, notHeld, notSent, refilled)
	}
	if got := s.take(nil); len(got) != 0 {
		t.Fatalf("sent %d acked deliveries", len(got))
	}
	// b expires: its credit comes back, and c (queued after) is dropped
	// when it expires before it is sent.
	if !s.offer(c1, false, nil) {
		t.Fatal("refused with credit back")
	}
	s.expire(now.Add(time.Second))
	if got := s.take(nil); len(got) != 0 {
		t.Fatalf("sent %d expired deliveries", len(got))
	}
	if back := s.close(); len(back) != 0 {
		t.Fatalf("close gave back %v; everything was acked or expired", back)
	}
	if s.offer(delivery("d", 1, now), false, nil) {
		t.Fatal("a closed subscriber accepted a delivery")
	}
}

// TestSubscriberAcksScope: a stream may ack only what it holds and was
// sent; the rest is counted and changes nothing.
func TestSubscriberAcksScope(t *testing.T) {
	now := time.Now()
	s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
	a, b := delivery("a", 1, now), delivery("b", 1, now)
	s.offer(a, false, nil)
	sendAll(s, now)
	s.offer(b, false, nil) // queued, not sent
	foreign := delivery("z", 1, now)
	mine, notHeld, notSent, _ := s.acks([]string{foreign.ID, b.ID, a.ID, a.ID, "garbage"}, nil)
	if len(mine) != 1 || mine[0] != a.ID || notHeld != 3 || notSent != 1 {
		t.Fatalf("acks = %v, not held %d, not sent %d; want [a], 3, 1", mine, notHeld, notSent)
	}
	if got := s.take(nil); len(got) != 1 || got[0].ID != b.ID {
		t.Fatalf("after the acks took %v, want b still queued", got)
	}
}

// TestSubscriberCloseGivesBackAttempts: close returns each held delivery
// with the attempt it holds, and whether a Send handed that attempt to
// the transport. One whose Send is still in progress is given back by
// done when that Send returns, counted if it succeeded: the client can
// have it, so a consumer that crashes on it at once, before the sender
// is back from Send, still uses up an attempt. A failed Send handed
// nothing over, and does not count.
func TestSubscriberCloseGivesBackAttempts(t *testing.T) {
	now := time.Now()
	type back struct {
		n      uint32
		unsent bool
	}
	for _, ok := range []bool{true, false} {
		s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
		s.offer(delivery("a", 1, now), false, nil)
		sendAll(s, now)
		s.offer(delivery("b", 3, now), false, nil) // queued
		s.offer(delivery("a", 2, now), true, nil)  // a redelivery, queued
		taken := s.take(nil)
		s.offer(delivery("c", 1, now), false, nil) // taken, its Send in progress
		s.offer(delivery("d", 1, now), false, nil) // taken, its Send not begun
		s.offer(delivery("e", 1, now), false, nil) // its Send failed
		taken = s.take(taken)
		var c shard.Delivery
		for _, d := range taken {
			switch d.TimerID {
			case "c":
				s.begin(&d, now)
				c = d
			case "e":
				s.begin(&d, now)
				if _, give := s.done(&d, false); give {
					t.Fatal("done gave back a delivery of an open stream")
				}
			}
		}
		got := map[string]back{}
		for _, a := range s.close() {
			got[a.ID.TimerID] = back{a.Number, a.Unsent}
		}
		want := map[string]back{"a": {2, true}, "b": {3, true}, "d": {1, true}, "e": {1, true}}
		if !maps.Equal(got, want) {
			t.Fatalf("close gave back %v, want %v", got, want)
		}
		a, give := s.done(&c, ok)
		if !give || a.ID.TimerID != "c" || a.Number != 1 || a.Unsent != !ok {
			t.Fatalf("after close, the Send of c returned (ok %v), and done gave back %+v, %v; want attempt 1, unsent %v", ok, a, give, !ok)
		}
		if _, give := s.done(&c, ok); give {
			t.Fatal("a second done gave c back again")
		}
	}
	s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
	s.offer(delivery("a", 1, now), false, nil)
	sendAll(s, now)
	if back := s.close(); len(back) != 1 || back[0].Unsent || back[0].Number != 1 {
		t.Fatalf("close of a sent delivery gave back %+v, want attempt 1 sent", back)
	}
}

// TestRedeliveryReplacesQueuedCopy: redeliveries of an occurrence that
// is still queued on a stream replace the queued copy, so a stream with
// one credit has one delivery to send, the latest attempt.
func TestRedeliveryReplacesQueuedCopy(t *testing.T) {
	h := newHub()
	s := newSubscriber(topicKey{"default", "t"}, 1, time.Second)
	h.add(s)
	now := time.Now()
	for attempt := uint32(1); attempt <= 3; attempt++ {
		if _, ok := h.Dispatch(*delivery("a", attempt, now)); !ok {
			t.Fatalf("attempt %d refused", attempt)
		}
	}
	got := s.take(nil)
	if len(got) != 1 || got[0].Attempt != 3 {
		var attempts []uint32
		for _, d := range got {
			attempts = append(attempts, d.Attempt)
		}
		t.Fatalf("took attempts %v with one credit, want [3]", attempts)
	}
}

// TestRedeliveryPrefersAnotherStream: a redelivery goes to a stream with
// credit other than the one that let its earlier attempt time out,
// whether that one still holds the attempt or its sweep dropped it
// already; it goes back to that stream only when no other can take it.
func TestRedeliveryPrefersAnotherStream(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct{ swept, startAtFirst bool }{{false, false}, {false, true}, {true, false}, {true, true}} {
		t.Run(fmt.Sprintf("swept=%v,startAtFirst=%v", tc.swept, tc.startAtFirst), func(t *testing.T) {
			h := newHub()
			first := newSubscriber(topicKey{"default", "t"}, 10, time.Second)
			other := newSubscriber(topicKey{"default", "t"}, 1, time.Second)
			h.add(first)
			if _, ok := h.Dispatch(*delivery("a", 1, now)); !ok {
				t.Fatal("refused")
			}
			sendAll(first, now)
			h.add(other)
			if tc.swept {
				first.expire(now.Add(time.Second))
			}
			if tc.startAtFirst {
				(*h.topics.Load())[first.key].next.Add(1)
			}
			if _, ok := h.Dispatch(*delivery("a", 2, now.Add(time.Second))); !ok {
				t.Fatal("redelivery refused")
			}
			if got := other.take(nil); len(got) != 1 || got[0].Attempt != 2 {
				t.Fatalf("the other stream took %v, want attempt 2", got)
			}
			if got := first.take(nil); len(got) != 0 {
				t.Fatalf("the stream that let it time out took %v", got)
			}
			// Both streams let an attempt time out: attempt 3 goes to one
			// of them, once.
			if _, ok := h.Dispatch(*delivery("a", 3, now.Add(2*time.Second))); !ok {
				t.Fatal("a redelivery no other stream could take was refused")
			}
			if got := append(first.take(nil), other.take(nil)...); len(got) != 1 || got[0].Attempt != 3 {
				t.Fatalf("the streams took %v, want attempt 3 once", got)
			}
		})
	}
}

// TestDispatchAllocs: a delivery's way through the hub, from Dispatch (under
// a shard's lock) to the sender and its ack, allocates nothing once the
// subscriber's map and queue have grown.
func TestDispatchAllocs(t *testing.T) {
	h := newHub()
	s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
	h.add(s)
	now := time.Now()
	d := *delivery("a", 1, now)
	ids := []string{d.ID}
	var buf []shard.Delivery
	var mine []string
	allocs := testing.AllocsPerRun(1000, func() {
		if _, ok := h.Dispatch(d); !ok {
			t.Fatal("refused")
		}
		buf = s.take(buf)
		s.begin(&buf[0], now)
		s.done(&buf[0], true)
		mine, _, _, _ = s.acks(ids, mine[:0])
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per delivery, want 0", allocs)
	}
}

// TestAckDuringSend: an ack that comes in while the Send of its delivery
// has not returned yet (the client can have it by then) is taken.
func TestAckDuringSend(t *testing.T) {
	now := time.Now()
	s := newSubscriber(topicKey{"default", "t"}, 10, time.Minute)
	a := delivery("a", 1, now)
	s.offer(a, false, nil)
	taken := s.take(nil)
	s.begin(&taken[0], now)
	if mine, notHeld, notSent, _ := s.acks([]string{a.ID}, nil); len(mine) != 1 || notHeld != 0 || notSent != 0 {
		t.Fatalf("ack during Send = %v, not held %d, not sent %d; want it taken", mine, notHeld, notSent)
	}
	s.done(&taken[0], true)
	if back := s.close(); len(back) != 0 {
		t.Fatalf("close gave back %v after the ack", back)
	}
}

// TestSubscriberRelayed: a delivery that came on a relay is held with it:
// its ack, and its return when the stream ends or its ack timeout passes,
// go to that relay, not to a shard here; when the relay ends, the
// subscriber forgets what came on it and gets the credit back; and the
// hub hands relayed deliveries to one-address subscribers only.
func TestSubscriberRelayed(t *testing.T) {
	now := time.Now()
	key := topicKey{"default", "t"}
	rs := newRelayStream(relayKey{key, "peer"}, 100)
	tests := []struct {
		name string
		// settle ends the relayed delivery "r" held by s, which has been
		// sent.
		settle func(s *subscriber)
		// acks, given and unsent are what rs is to send back.
		acks, given, unsent int
	}{
		{"ack", func(s *subscriber) {
			if mine, _, _, _ := s.acks([]string{delivery("r", 1, now).ID}, nil); len(mine) != 0 {
				t.Errorf("a relayed ack was applied here: %v", mine)
			}
		}, 1, 0, 0},
		{"stream ends", func(s *subscriber) {
			if back := s.close(); len(back) != 0 {
				t.Errorf("a relayed delivery went back to a shard here: %v", back)
			}
		}, 0, 1, 0},
		{"ack timeout", func(s *subscriber) { s.expire(now.Add(time.Minute)) }, 0, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rs.acks, rs.given, rs.unsent = nil, nil, nil
			s := newSubscriber(key, 1, time.Second)
			if !s.offer(delivery("r", 1, now), false, rs) {
				t.Fatal("refused within the credit")
			}
			sendAll(s, now)
			tc.settle(s)
			if len(rs.acks) != tc.acks || len(rs.given) != tc.given || len(rs.unsent) != tc.unsent {
				t.Errorf("relay to send acks %v, given back %v, unsent %v; want %d, %d, %d",
					rs.acks, rs.given, rs.unsent, tc.acks, tc.given, tc.unsent)
			}
		})
	}

	t.Run("relay ends", func(t *testing.T) {
		s := newSubscriber(key, 2, time.Second)
		if !s.offer(delivery("r", 1, now), false, rs) || !s.offer(delivery("l", 1, now), false, nil) {
			t.Fatal("refused within the credit")
		}
		if s.offer(delivery("x", 1, now), false, nil) {
			t.Fatal("took a delivery beyond its credit")
		}
		if !s.drop(rs) {
			t.Error("a full subscriber that refused a delivery got no credit back when its relay ended")
		}
		got := sendAll(s, now)
		if len(got) != 1 || got[0].ID != delivery("l", 1, now).ID {
			t.Errorf("sent %v after the relay ended, want the local delivery only", got)
		}
		if _, notHeld, _, _ := s.acks([]string{delivery("r", 1, now).ID}, nil); notHeld != 1 {
			t.Error("the ack of a delivery of an ended relay was not ignored")
		}
	})

	t.Run("one-address only", func(t *testing.T) {
		h := newHub()
		direct := newSubscriber(key, 10, time.Second)
		h.add(direct)
		d := delivery("r", 1, now)
		if h.hand(d, rs) != nil {
			t.Fatal("a relayed delivery went to a direct stream")
		}
		one := newSubscriber(key, 10, time.Second)
		one.oneAddr = true
		h.add(one)
		if got := h.hand(d, rs); got != one {
			t.Fatalf("a relayed delivery went to %p, want the one-address subscriber %p", got, one)
		}
	})
}

// TestRefusedHeldWakesShards: a stream that refused an occurrence because
// it holds it (a reloaded shard offers it again as attempt 1) reports,
// when it lets go of it, that the shards must be told, though it never ran
// out of credit; letting go of any other id reports nothing.
func TestRefusedHeldWakesShards(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name   string
		letGo  func(s *subscriber, id string) bool
		wanted bool // whether a is offered again and refused first
	}{
		{"ack", func(s *subscriber, id string) bool { _, _, _, r := s.acks([]string{id}, nil); return r }, true},
		{"expiry", func(s *subscriber, _ string) bool { return s.expire(now.Add(time.Second)) }, true},
		{"ack, not refused", func(s *subscriber, id string) bool { _, _, _, r := s.acks([]string{id}, nil); return r }, false},
		{"expiry, not refused", func(s *subscriber, _ string) bool { return s.expire(now.Add(time.Second)) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSubscriber(topicKey{"default", "t"}, 10, time.Second)
			a := delivery("a", 1, now)
			if !s.offer(a, false, nil) {
				t.Fatal("refused with credit")
			}
			sendAll(s, now)
			if tc.wanted && s.offer(delivery("a", 1, now), false, nil) {
				t.Fatal("an occurrence the stream holds was taken again")
			}
			if got := tc.letGo(s, a.ID); got != tc.wanted {
				t.Fatalf("letting go of a reports %v, want %v", got, tc.wanted)
			}
		})
	}
}

// TestSubscriberRefillsAQuarter: a subscriber tells the shards it takes
// deliveries again only when one was refused for want of credit, and a
// quarter of its credit is free: a herd's subscriber runs out of credit
// after every ack message, and waking every shard for each would spend
// the node on wakeups that find the credit taken.
func TestSubscriberRefillsAQuarter(t *testing.T) {
	now := time.Now()
	ack := func(s *subscriber, id string) bool {
		t.Helper()
		mine, _, _, refilled := s.acks([]string{delivery(id, 1, now).ID}, nil)
		if len(mine) != 1 {
			t.Fatalf("ack of %s applied %v", id, mine)
		}
		return refilled
	}
	fill := func(s *subscriber, n int) {
		t.Helper()
		for i := range n {
			if !s.offer(delivery(fmt.Sprint("d", i), 1, now), false, nil) {
				t.Fatalf("refused delivery %d within the credit of %d", i, n)
			}
		}
		sendAll(s, now)
	}

	s := newSubscriber(topicKey{"default", "t"}, 8, time.Second)
	fill(s, 8)
	if ack(s, "d0") || ack(s, "d1") {
		t.Error("refilled though no delivery was refused")
	}

	s = newSubscriber(topicKey{"default", "t"}, 8, time.Second)
	fill(s, 8)
	if s.offer(delivery("x", 1, now), false, nil) {
		t.Fatal("took a delivery beyond its credit")
	}
	if ack(s, "d0") {
		t.Error("refilled with 1 of 8 free")
	}
	if !ack(s, "d1") {
		t.Error("not refilled with 2 of 8 free after a refusal")
	}
	if ack(s, "d2") {
		t.Error("refilled twice for one refusal")
	}

	// A credit of 1 refills on its one ack, as before.
	s = newSubscriber(topicKey{"default", "t"}, 1, time.Second)
	fill(s, 1)
	if s.offer(delivery("x", 1, now), false, nil) {
		t.Fatal("took a delivery beyond its credit")
	}
	if !ack(s, "d0") {
		t.Error("a credit of 1 was not refilled by its ack")
	}
}

// FuzzSubscriberLifecycle drives one subscriber as its shards, its
// client, its sweep and its sender would, in an order the fuzzer picks,
// and checks the stream's accounts: only an occurrence a Send began on
// the stream can be acked there; every attempt the stream held at its
// end is given back once, by close or, for the one in a Send then, by
// done when that Send returns; and one given back counts (is not
// Unsent) exactly when a Send of it returned without error. An attempt
// ends once: acked, expired, replaced by a later attempt, or given back.
//
// Each op's low nibble picks the event (modulo 9), its high nibble the
// timer it concerns.
func FuzzSubscriberLifecycle(f *testing.F) {
	for _, seed := range [][]byte{
		{0, 2, 3, 8, 4},             // a Send in progress when the stream ends, then handed over
		{0, 2, 3, 8, 5},             // the same, and the Send fails
		{0, 0, 2, 3, 4, 3, 6, 0x16}, // two sent, one acked, one not yet
		{0, 2, 3, 7, 1, 2, 4, 8},    // a Send of an attempt that expired, redelivered meanwhile
		{0, 0, 0, 0, 0, 2, 3, 5, 8}, // beyond the credit, and a failed Send
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, ops []byte) {
		now := time.Now()
		s := newSubscriber(topicKey{"default", "t"}, 4, time.Second)
		type attempt struct {
			id string
			n  uint32
		}
		var (
			ids     []string
			offered = map[string]uint32{} // the last attempt a shard made, by id
			acked   = map[string]bool{}
			held    = map[string]uint32{} // the attempt the stream holds, by id
			seen    = map[string]bool{}   // a Send of the held occurrence began
			sentOK  = map[attempt]bool{}  // a Send of it returned without error
			ended   = map[attempt]string{}
			unsent  = map[attempt]bool{} // given back Unsent
			buf     []shard.Delivery     // taken by the sender, not begun
			cur     *shard.Delivery      // in the sender's Send
			quit    bool                 // the sender has returned (a Send failed)
			closed  bool
			atClose map[string]uint32
		)
		end := func(a attempt, how string) {
			if prev, ok := ended[a]; ok {
				t.Fatalf("attempt %d of %s ended twice: %s, then %s", a.n, a.id, prev, how)
			}
			ended[a] = how
		}
		giveBack := func(b shard.Attempt, by string) {
			a := attempt{b.ID.TimerID, b.Number}
			if n, ok := atClose[a.id]; !ok || n != a.n {
				t.Fatalf("%s gave back attempt %d of %s, which the stream did not hold at its end", by, a.n, a.id)
			}
			unsent[a] = b.Unsent
			end(a, "given back by "+by)
		}
		closeStream := func() {
			closed, atClose = true, maps.Clone(held)
			for _, b := range s.close() {
				giveBack(b, "close")
			}
		}
		sendReturns := func(ok bool) {
			if ok {
				sentOK[attempt{cur.TimerID, cur.Attempt}] = true
			}
			if b, give := s.done(cur, ok); give {
				if !closed {
					t.Fatalf("done gave back %s of an open stream", b.ID.TimerID)
				}
				giveBack(b, "done")
			}
			cur, quit = nil, !ok
		}
		for _, op := range ops {
			var id string
			if len(ids) > 0 {
				id = ids[int(op>>4)%len(ids)]
			}
			switch op & 0xf % 9 {
			case 0: // a shard hands over a new occurrence
				id = fmt.Sprint("t", len(ids))
				ids = append(ids, id)
				offered[id] = 1
				if s.offer(delivery(id, 1, now), false, nil) {
					held[id], seen[id] = 1, false
				}
			case 1: // a shard redelivers an occurrence it took back
				if id == "" || acked[id] {
					continue
				}
				offered[id]++
				if s.offer(delivery(id, offered[id], now), true, nil) {
					if n, ok := held[id]; ok {
						end(attempt{id, n}, "replaced")
					} else {
						seen[id] = false
					}
					held[id] = offered[id]
				}
			case 2: // the sender takes the queue
				if !quit && cur == nil && len(buf) == 0 {
					buf = slices.Clone(s.take(nil))
				}
			case 3: // the sender begins a Send
				if !quit && cur == nil && len(buf) > 0 {
					d := buf[0]
					buf = buf[1:]
					if ok, _ := s.begin(&d, now); ok {
						cur, seen[d.TimerID] = &d, true
					}
				}
			case 4, 5: // the Send returns: handed over, or failed
				if cur != nil {
					sendReturns(op&0xf%9 == 4)
				}
			case 6: // the client acks
				if id == "" {
					continue
				}
				mine, _, _, _ := s.acks([]string{delivery(id, 1, now).ID}, nil)
				n, holds := held[id]
				if want := !closed && holds && seen[id]; (len(mine) == 1) != want {
					t.Fatalf("ack of %s applied %v; want applied %v (held %v, a Send began %v, closed %v)", id, mine, want, holds, seen[id], closed)
				}
				if len(mine) == 1 {
					end(attempt{id, n}, "acked")
					delete(held, id)
					acked[id] = true
				}
			case 7: // the sweep finds every attempt past its ack timeout
				if closed {
					continue
				}
				s.expire(now.Add(time.Second))
				for id, n := range held {
					end(attempt{id, n}, "expired")
				}
				clear(held)
			case 8: // the stream ends
				if !closed {
					closeStream()
				}
			}
		}
		if !closed {
			closeStream()
		}
		if cur != nil {
			sendReturns(len(ops)%2 == 0)
		}
		// Every Send has returned: whether each attempt was handed over
		// is known now, not when it was given back.
		for id, n := range atClose {
			a := attempt{id, n}
			if how := ended[a]; !strings.HasPrefix(how, "given back") {
				t.Errorf("attempt %d of %s, held at the stream's end, was not given back (%q)", n, id, how)
			} else if unsent[a] == sentOK[a] {
				t.Errorf("attempt %d of %s was %s with Unsent %v, but a Send of it returned ok: %v", n, id, how, unsent[a], sentOK[a])
			}
		}
	})
}
