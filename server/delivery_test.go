package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
)

// frozen opens a Subscribe stream that never reads, on a connection of
// its own whose HTTP/2 windows are fixed at the 64 KiB minimum (a window
// set by hand turns off the dynamic one): once about two windows of
// deliveries are on their way, the server's Send blocks. The returned
// cancel ends the stream; the test's end does too.
func (e *env) frozen(sub *pb.Subscription) context.CancelFunc {
	e.t.Helper()
	conn, err := grpc.NewClient(e.srv.GRPCAddr(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		e.t.Fatalf("dial: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e.t.Cleanup(func() { cancel(); _ = conn.Close() })
	s, err := pb.NewTimerServiceClient(conn).Subscribe(ctx)
	if err != nil {
		e.t.Fatalf("Subscribe: %v", err)
	}
	if err := s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil {
		e.t.Fatalf("send subscription: %v", err)
	}
	return cancel
}

// metricsText scrapes /metrics.
func (e *env) metricsText() string {
	e.t.Helper()
	resp, err := http.Get("http://" + e.srv.HTTPAddr() + "/metrics")
	if err != nil {
		e.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatalf("GET /metrics: %v", err)
	}
	return string(body)
}

// state returns a timer's state and attempts in namespace ns.
func (e *env) state(ns, id string) (pb.TimerState, uint32) {
	e.t.Helper()
	got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Namespace: ns, Id: id})
	if err != nil {
		e.t.Fatalf("Get(%s/%s): %v", ns, id, err)
	}
	return got.Timer.State, got.Timer.Attempts
}

// goroutinesIn counts the goroutines with fn (a function name as stack
// traces print it) on their stacks.
func goroutinesIn(fn string) int {
	buf := make([]byte, 4<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), fn)
}

// bigSpecs returns n specs of topic t due now, ids prefix0 on, with
// payloads of size bytes.
func bigSpecs(prefix string, n, size int) []*pb.TimerSpec {
	payload := bytes.Repeat([]byte("x"), size)
	specs := make([]*pb.TimerSpec, n)
	for i := range specs {
		specs[i] = spec(fmt.Sprint(prefix, i), "t", 0)
		specs[i].Payload = payload
	}
	return specs
}

// TestStalledSubscriberDoesNotEatRedeliveries: a subscriber that stops
// reading does not take redeliveries while a healthy one has credit, it is
// ended once its Send has been blocked for its ack timeout, and every
// timer reaches the healthy subscriber without becoming a dead letter.
func TestStalledSubscriberDoesNotEatRedeliveries(t *testing.T) {
	e := start(t, "")
	healthy := e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: 1000})
	e.frozen(&pb.Subscription{Topic: "t"})
	e.waitSubscribers("t", 2)
	const n = 40
	specs := bigSpecs("s", n, 48<<10)
	e.schedule(specs...)
	seen := map[string]bool{}
	copies := map[string]bool{} // delivery id and attempt
	redelivered := 0
	for len(seen) < n {
		d := healthy.next()
		key := fmt.Sprint(d.DeliveryId, "/", d.Attempt)
		if copies[key] {
			t.Fatalf("attempt %d of %s arrived twice", d.Attempt, d.Id)
		}
		copies[key] = true
		if d.Attempt > 1 {
			redelivered++
		}
		seen[d.Id] = true
		healthy.ack(d)
	}
	if redelivered == 0 {
		t.Fatal("every timer went to the healthy stream first: the frozen one took none")
	}
	e.waitSubscribers("t", 1) // the frozen stream was ended
	waitFor(t, "the frozen stream's goroutines to end", func() bool {
		return goroutinesIn("server.(*timerService).Subscribe(") == 1 && goroutinesIn("server.(*Server).send(") == 1 &&
			goroutinesIn("server.(*Server).receive(") == 1
	})
	for _, sp := range specs {
		waitFor(t, "the ack of "+sp.Id, func() bool {
			_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: sp.Id})
			return status.Code(err) == codes.NotFound
		})
	}
	dl, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{})
	if err != nil || len(dl.DeadLetters) != 0 {
		t.Fatalf("dead letters = %v, %v; want none", dl, err)
	}
}

// TestUnsentDeliveriesUseNoAttempt: deliveries queued on a stream that
// ends before sending them go back without using an attempt, so streams
// that come and go more often than MaxAttempts make no dead letter of
// timers they never sent.
func TestUnsentDeliveriesUseNoAttempt(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Shard.MaxPayload = 1 << 20 })
	const n, rounds = 10, 4 // rounds > MaxAttempts (3)
	// One delivery this big fills both the stream's window and the
	// server's write quota: each stream sends one and blocks on the next.
	specs := bigSpecs("u", n, 200<<10)
	e.schedule(specs...)
	sentTimes := map[string]uint32{} // by timer id
	for round := range rounds {
		cancel := e.frozen(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Minute)})
		var sub *subscriber
		waitFor(t, fmt.Sprintf("round %d: every timer on the stream, and its Send blocked", round), func() bool {
			tp := (*e.srv.hub.topics.Load())[topicKey{"default", "t"}]
			if tp == nil {
				return false
			}
			sub = tp.subs[0]
			sub.mu.Lock()
			defer sub.mu.Unlock()
			// A Send blocked a while, not one that has just returned and
			// whose delivery is not yet marked sent: only then are the
			// states read below the ones the stream's end finds.
			return len(sub.out) == n && !sub.sendStart.IsZero() && time.Since(sub.sendStart) >= 100*time.Millisecond
		})
		sub.mu.Lock()
		for id, h := range sub.out {
			if h.state == sent {
				d, _ := shard.ParseDeliveryID(id)
				sentTimes[d.TimerID]++
			}
		}
		sub.mu.Unlock()
		cancel()
		e.waitSubscribers("t", 0)
		for _, sp := range specs {
			waitFor(t, fmt.Sprintf("round %d: %s to be back", round, sp.Id), func() bool {
				st, _ := e.state("default", sp.Id)
				return st != pb.TimerState_TIMER_STATE_IN_FLIGHT
			})
		}
	}
	never := 0
	for _, sp := range specs {
		st, attempts := e.state("default", sp.Id)
		want := pb.TimerState_TIMER_STATE_PENDING
		if sentTimes[sp.Id] >= e.cfg.Shard.MaxAttempts {
			want = pb.TimerState_TIMER_STATE_DEAD
		}
		if st != want || attempts != sentTimes[sp.Id] {
			t.Errorf("%s, sent %d times: %v with %d attempts, want %v with %d", sp.Id, sentTimes[sp.Id], st, attempts, want, sentTimes[sp.Id])
		}
		if sentTimes[sp.Id] == 0 {
			never++
		}
	}
	if never == 0 {
		t.Fatal("every timer was sent at least once: the test proves nothing")
	}
}

// TestAcksAreScopedToTheStream: a stream cannot ack a delivery it was not
// sent, whether another stream's of its namespace or one of another
// namespace; both stay in flight and come back after their ack timeout,
// and the ignored acks are counted.
func TestAcksAreScopedToTheStream(t *testing.T) {
	e := start(t, "")
	a := e.subscribe(&pb.Subscription{Topic: "a"})
	other := e.subscribe(&pb.Subscription{Namespace: "other", Topic: "a"})
	b := e.subscribe(&pb.Subscription{Topic: "b"})
	y := spec("y", "a", 0)
	y.Namespace = "other"
	e.schedule(spec("x", "a", 0), y)
	dx, dy := a.next(), other.next()
	b.ack(dx, dy)
	waitFor(t, "the ignored acks to be counted", func() bool {
		return strings.Contains(e.metricsText(), `timerd_acks_ignored_total{reason="not_held"} 2`)
	})
	for _, k := range []struct{ ns, id string }{{"default", "x"}, {"other", "y"}} {
		if st, n := e.state(k.ns, k.id); st != pb.TimerState_TIMER_STATE_IN_FLIGHT || n != 1 {
			t.Fatalf("%s/%s after a foreign ack: %v with %d attempts, want in flight with 1", k.ns, k.id, st, n)
		}
	}
	for _, c := range []struct {
		s     *stream
		first *pb.Delivery
	}{{a, dx}, {other, dy}} {
		if d := c.s.next(); d.DeliveryId != c.first.DeliveryId || d.Attempt != 2 {
			t.Fatalf("after the ack timeout got %s attempt %d, want %s attempt 2", d.Id, d.Attempt, c.first.Id)
		}
	}
}

// TestSilentStreamIsEnded: a Subscribe stream that sends no subscription
// is ended after SubscriptionTimeout with DEADLINE_EXCEEDED, and none of
// its goroutines stays.
func TestSilentStreamIsEnded(t *testing.T) {
	e := start(t, "", func(c *Config) { c.SubscriptionTimeout = 200 * time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := e.timers.Subscribe(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		ended <- err
	}()
	select {
	case err := <-ended:
		if status.Code(err) != codes.DeadlineExceeded || !strings.Contains(status.Convert(err).Message(), "subscription") {
			t.Fatalf("silent stream ended with %v, want DeadlineExceeded naming the subscription", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the server did not end a stream that sent nothing")
	}
	waitFor(t, "the stream's goroutines to end", func() bool {
		return goroutinesIn("server.(*timerService).Subscribe(") == 0 && goroutinesIn("server.(*Server).first.") == 0
	})
}

// TestReloadedShardRefiresHeldOccurrence: a shard reloaded on the node
// whose stream still holds one of its occurrences (firing writes
// nothing, so the reload fires it again as attempt 1 under the same
// delivery id) is refused it by that stream, and keeps it and every later
// timer of its topic waiting. The stream letting go of the occurrence
// (here its ack timeout lapses; an ack does the same) must wake the
// shard: the stream never ran out of credit, so no refill would.
func TestReloadedShardRefiresHeldOccurrence(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Shards = 1 })
	st := e.subscribe(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(2 * time.Second)})
	e.schedule(spec("a", "t", 0))
	first := st.next()
	if first.Id != "a" || first.Attempt != 1 {
		t.Fatalf("first delivery %s attempt %d, want a attempt 1", first.Id, first.Attempt)
	}
	// Reload shard 0 on this node while the stream holds a, unacked.
	old := e.srv.node.Shard(0)
	e.srv.node.Hold(nil)
	waitFor(t, "shard 0 to close", func() bool { return e.srv.node.Shard(0) == nil })
	e.srv.node.HoldAll()
	waitFor(t, "shard 0 to load again", func() bool { sh := e.srv.node.Shard(0); return sh != nil && sh != old })
	e.schedule(spec("b", "t", 0))
	got := map[string]uint32{}
	for len(got) < 2 {
		d := st.next()
		if _, ok := got[d.Id]; !ok {
			got[d.Id] = d.Attempt
		}
		if d.Id == "a" && d.DeliveryId != first.DeliveryId {
			t.Errorf("a came again under delivery id %s, want %s (the same occurrence)", d.DeliveryId, first.DeliveryId)
		}
	}
	t.Logf("delivered after the reload: %v", got)
}
