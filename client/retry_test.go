package client_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/timerd/timerd/client"
)

// lateRetry returns a dial option that lets the first call of method reach
// the server, then, before answering, waits for gate (the timer fires
// meanwhile), and reports the call to the client as UNAVAILABLE, as when
// the answer is lost: the client's retry then arrives after the delivery.
// Every request of method is recorded in sent.
func lateRetry(method string, gate func(), mu *sync.Mutex, sent *[]proto.Message) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if m != method {
			return invoker(ctx, m, req, reply, cc, opts...)
		}
		mu.Lock()
		*sent = append(*sent, proto.Clone(req.(proto.Message)))
		first := len(*sent) == 1
		mu.Unlock()
		err := invoker(ctx, m, req, reply, cc, opts...)
		if first && err == nil {
			gate()
			return status.Error(codes.Unavailable, "answer lost")
		}
		return err
	})
}

// deliveryIDs returns the delivery ids r received for timer id, in order.
func deliveryIDs(r *receiver, id string) []string {
	var out []string
	for _, d := range r.snapshot() {
		if d.ID == id {
			out = append(out, d.DeliveryID)
		}
	}
	return out
}

// requestIDs returns the request ids of the recorded requests.
func requestIDs(mu *sync.Mutex, sent []proto.Message) []string {
	mu.Lock()
	defer mu.Unlock()
	var out []string
	for _, m := range sent {
		out = append(out, m.(interface{ GetRequestId() string }).GetRequestId())
	}
	return out
}

func oneRequestID(t *testing.T, ids []string) {
	t.Helper()
	if len(ids) != 2 || ids[0] == "" || ids[0] != ids[1] {
		t.Fatalf("request ids %q; want two attempts with the same non-empty id", ids)
	}
}

var retryPolicy = client.WithRetry(client.RetryPolicy{MaxAttempts: 3, MinBackoff: 10 * time.Millisecond, MaxBackoff: 10 * time.Millisecond})

// TestScheduleRetryAfterAck: Schedule, fire, ack, then the client's retry
// of that Schedule: answered OK without creating the timer again. A new
// Schedule of the same id after that does create it.
func TestScheduleRetryAfterAck(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	var (
		mu   sync.Mutex
		sent []proto.Message
		got  receiver
		c    *client.Client
	)
	acked := func() {
		eventually(t, "the delivery and its ack", func() bool {
			_, err := c.Get(ctx, "", "s1")
			return len(deliveryIDs(&got, "s1")) == 1 && errors.Is(err, client.ErrNotFound)
		})
	}
	c = newClient(t, srv.GRPCAddr(), retryPolicy, client.WithDialOptions(lateRetry(scheduleMethod, acked, &mu, &sent)))
	subscribe(t, c, "", "once", func(_ context.Context, d *client.Delivery) error {
		got.add(d)
		return nil
	}, client.WithAckBatch(1, 0))

	due := time.Now().Truncate(time.Millisecond)
	timer := client.Timer{ID: "s1", Topic: "once", Due: due}
	if at, err := c.Schedule(ctx, timer); err != nil || !at.Equal(due) {
		t.Fatalf("Schedule with its answer lost until after the ack = %v, %v; want OK due %v", at, err, due)
	}
	oneRequestID(t, requestIDs(&mu, sent))
	// A timer the retry created again is found, or, if it is gone
	// already, was delivered before Get answered.
	if _, err := c.Get(ctx, "", "s1"); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get after the retry = %v; want ErrNotFound: the retry created the timer again", err)
	}
	if ids := deliveryIDs(&got, "s1"); len(ids) != 1 {
		t.Fatalf("delivery ids %q; want one: the retry created the timer again", ids)
	}

	// A new logical call of the same Schedule creates the timer again,
	// with a new delivery id.
	if _, err := c.Schedule(ctx, timer); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the second timer's delivery", func() bool { return len(deliveryIDs(&got, "s1")) == 2 })
	if ids := deliveryIDs(&got, "s1"); ids[0] == ids[1] {
		t.Fatalf("the new timer was delivered with the old delivery id %q", ids[0])
	}
	if ids := requestIDs(&mu, sent); len(ids) != 3 || ids[2] == ids[0] {
		t.Fatalf("request ids %q; want a new one for the new call", ids)
	}
}

// TestRescheduleRetryAfterDelivery: Reschedule to T, the timer fires and
// its first attempt is delivered, then the client's retry of that
// Reschedule: no new occurrence, so no delivery with a new id.
func TestRescheduleRetryAfterDelivery(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	var (
		mu   sync.Mutex
		sent []proto.Message
		got  receiver
	)
	delivered := func() {
		eventually(t, "the first attempt's delivery", func() bool { return len(deliveryIDs(&got, "r1")) == 1 })
	}
	c := newClient(t, srv.GRPCAddr(), retryPolicy,
		client.WithDialOptions(lateRetry("/timerd.v1.TimerService/Reschedule", delivered, &mu, &sent)))
	if _, err := c.Schedule(ctx, client.Timer{ID: "r1", Topic: "moved", Due: farDue}); err != nil {
		t.Fatal(err)
	}
	// One credit, never acked: a new occurrence would wait as PENDING
	// with no attempts, the old one stays IN_FLIGHT.
	subscribe(t, c, "", "moved", func(ctx context.Context, d *client.Delivery) error {
		got.add(d)
		<-ctx.Done()
		return ctx.Err()
	}, client.WithMaxInFlight(1), client.WithAckTimeout(10*time.Minute))

	at := time.Now().Truncate(time.Millisecond)
	if due, err := c.Reschedule(ctx, "", "r1", at); err != nil || !due.Equal(at) {
		t.Fatalf("Reschedule with its answer lost until after the delivery = %v, %v; want OK due %v", due, err, at)
	}
	oneRequestID(t, requestIDs(&mu, sent))
	info, err := c.Get(ctx, "", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if info.State != client.StateInFlight || info.Attempts != 1 || !info.Due.Equal(at) {
		t.Fatalf("after the retry r1 is %v with %d attempts due %v; want the first occurrence in flight, due %v",
			info.State, info.Attempts, info.Due, at)
	}
	if ids := deliveryIDs(&got, "r1"); len(ids) != 1 {
		t.Fatalf("delivery ids %q; want one", ids)
	}
}
