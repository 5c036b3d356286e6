package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/node"
)

// TestCloseDuringStart: Close while shards are still loading stops Start
// (with ErrClosed) instead of leaving it waiting for ever.
func TestCloseDuringStart(t *testing.T) {
	cfg := LocalConfig(t.TempDir())
	cfg.Shards, cfg.LoadParallelism = 2048, 1
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- srv.Start(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	if err := srv.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-started:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Start = %v, want ErrClosed", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Start did not return after Close")
	}
}

// TestIdleStreamDoesNotHoldClose: a stream that never sent its
// subscription ends with UNAVAILABLE at shutdown, and Close does not wait
// for its context to run out.
func TestIdleStreamDoesNotHoldClose(t *testing.T) {
	e := start(t, "")
	s, err := e.timers.Subscribe(e.ctx())
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the server is in the stream's first Recv
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	began := time.Now()
	if err := e.srv.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.Unavailable {
		t.Fatalf("idle stream ended with %v, want Unavailable", err)
	}
	if ctx.Err() != nil {
		t.Fatalf("Close waited %v, until its context ran out", time.Since(began))
	}
}

// TestReturnLeavesOtherStreamsAttempt: when a stream ends holding an
// attempt that has since timed out and gone to another stream, the other
// stream's attempt is not taken back (nor dead-lettered), and its ack
// ends the timer.
func TestReturnLeavesOtherStreamsAttempt(t *testing.T) {
	e := start(t, "", func(c *Config) {
		c.Shard.MaxAttempts = 2
		c.Shard.BackoffMin = time.Millisecond
	})
	e.schedule(spec("x", "t", 0))
	a := e.subscribe(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Second)})
	first := a.next()
	b := e.subscribe(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Minute)})
	e.waitSubscribers("t", 2)
	// A holds attempt 1 past its ack timeout; attempt 2 goes to B: adding
	// B made a new round robin that offers to B first.
	var second *pb.Delivery
	select {
	case second = <-b.got:
	case d := <-a.got:
		t.Fatalf("attempt %d went to A again", d.Attempt)
	case <-time.After(10 * time.Second):
		t.Fatal("no redelivery")
	}
	if second.Attempt != 2 || second.DeliveryId != first.DeliveryId {
		t.Fatalf("redelivery %v", second)
	}
	a.close() // A ends still "holding" attempt 1
	time.Sleep(200 * time.Millisecond)
	got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "x"})
	if err != nil || got.Timer.State != pb.TimerState_TIMER_STATE_IN_FLIGHT || got.Timer.Attempts != 2 {
		t.Fatalf("after A ended: %v, %v; want B's attempt 2 still in flight", got, err)
	}
	b.ack(second)
	waitFor(t, "B's ack to end the timer", func() bool {
		_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "x"})
		return status.Code(err) == codes.NotFound
	})
}

// TestInvalidItemOnUnloadedShard: a bad item is INVALID_ARGUMENT even
// when its shard is not loaded here (not UNAVAILABLE, which clients
// retry), and a good one is UNAVAILABLE.
func TestInvalidItemOnUnloadedShard(t *testing.T) {
	e := start(t, "")
	id := e.srv.shardOf("default", "x")
	var others []uint32
	for i := range e.cfg.Shards {
		if i != id {
			others = append(others, i)
		}
	}
	e.srv.node.Hold(others)
	defer e.srv.node.HoldAll()
	waitFor(t, "the shard to be released", func() bool { return e.srv.node.Status(id).State == node.Absent })
	bad := spec("x", "a/b", 0)
	far := spec("x", "t", 200*365*24*time.Hour)
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: []*pb.TimerSpec{bad, far, spec("x", "t", 0)}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.InvalidArgument, codes.InvalidArgument, codes.Unavailable}
	for i, r := range resp.Results {
		if codes.Code(r.Code) != want[i] {
			t.Errorf("item %d = %v %q, want %v", i, codes.Code(r.Code), r.Message, want[i])
		}
	}
	rr, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{Items: []*pb.RescheduleItem{
		{Id: "x", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(200 * 365 * 24 * time.Hour)}},
	}})
	if err != nil || codes.Code(rr.Results[0].Code) != codes.InvalidArgument {
		t.Fatalf("reschedule beyond the horizon on an unloaded shard = %v, %v", rr, err)
	}
	if _, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("ListDeadLetters with a shard missing = %v, want Unavailable", err)
	}
	if _, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("ReplayDeadLetters with a shard missing = %v, want Unavailable", err)
	}
}
