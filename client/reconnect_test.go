package client_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/client"
)

// oneAndDone is a TimerService whose every Subscribe stream sends one
// delivery and then fails with UNAVAILABLE, once the delivery is acked or
// after 100ms, and which notes when each stream opened. Failing at once
// raced the client's handler: a delivery whose stream has ended is not
// handled (its ack could go nowhere), and some runs lost every race.
type oneAndDone struct {
	timerdv1.UnimplementedTimerServiceServer
	mu     sync.Mutex
	opened []time.Time
}

func (o *oneAndDone) Subscribe(stream timerdv1.TimerService_SubscribeServer) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	o.mu.Lock()
	o.opened = append(o.opened, time.Now())
	n := len(o.opened)
	o.mu.Unlock()
	d := &timerdv1.Delivery{DeliveryId: "d", Namespace: "default", Id: "x", Topic: "t", Attempt: uint32(n)}
	if err := stream.Send(&timerdv1.SubscribeResponse{Delivery: d}); err != nil {
		return err
	}
	acked := make(chan struct{})
	go func() { // ends with the stream
		if _, err := stream.Recv(); err == nil {
			close(acked)
		}
	}()
	select {
	case <-acked:
	case <-time.After(100 * time.Millisecond):
	}
	return status.Error(codes.Unavailable, "stream lost right after a delivery")
}

func (o *oneAndDone) streams() []time.Time {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Time(nil), o.opened...)
}

// TestSubscribeBackoffAfterDelivery checks that streams that fail right
// after a delivery are reopened with a growing backoff: the time between
// the first and the last stream opened is at least the sum of the
// shortest waits the backoff allows for that many reconnects. A backoff
// that starts over after every delivery reconnects about every min/2 and
// opens far more streams than that sum allows.
func TestSubscribeBackoffAfterDelivery(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	fake := &oneAndDone{}
	timerdv1.RegisterTimerServiceServer(srv, fake)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	const minBackoff, maxBackoff = 10 * time.Millisecond, 80 * time.Millisecond
	c := newClient(t, l.Addr().String())
	var got receiver
	stop, _ := subscribe(t, c, "", "t", func(_ context.Context, d *client.Delivery) error {
		got.add(d)
		return nil
	}, client.WithReconnectBackoff(minBackoff, maxBackoff))
	// Long enough for the backoff to reach its maximum a few times over.
	eventually(t, "a dozen streams and a delivery handled", func() bool {
		return len(fake.streams()) >= 12 && got.count() >= 1
	})
	time.Sleep(500 * time.Millisecond)
	stop()

	opened := fake.streams()
	elapsed := opened[len(opened)-1].Sub(opened[0])
	// Reconnect k (k >= 1) waits at least half of min(min * 2^(k-1), max).
	var least time.Duration
	b := minBackoff
	for range len(opened) - 1 {
		least += b / 2
		b = min(2*b, maxBackoff)
	}
	if elapsed < least {
		t.Fatalf("%d streams opened in %v; the backoff allows at most those that fit in it (their shortest waits add up to %v)",
			len(opened), elapsed, least)
	}
	t.Logf("%d streams in %v (shortest waits %v)", len(opened), elapsed, least)
}
