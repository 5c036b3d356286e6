package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	timerdv1 "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/client"
)

const scheduleMethod = "/timerd.v1.TimerService/Schedule"

// farDue is a due time no test waits for.
var farDue = time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)

func TestRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr(), client.WithNamespace("rt"))

	due, err := c.Schedule(ctx, client.Timer{ID: "a", Topic: "t", Due: farDue, Payload: []byte("p"), Interval: time.Minute})
	if err != nil || !due.Equal(farDue) {
		t.Fatalf("Schedule = %v, %v; want %v", due, err, farDue)
	}
	info, err := c.Get(ctx, "", "a")
	if err != nil {
		t.Fatal(err)
	}
	if info.Namespace != "rt" || info.ID != "a" || info.Topic != "t" || string(info.Payload) != "p" ||
		info.Interval != time.Minute || !info.Due.Equal(farDue) || info.State != client.StatePending ||
		info.Attempts != 0 || info.Created.IsZero() {
		t.Fatalf("Get = %+v", info)
	}

	later := farDue.Add(time.Hour)
	if due, err := c.Reschedule(ctx, "", "a", later); err != nil || !due.Equal(later) {
		t.Fatalf("Reschedule = %v, %v; want %v", due, err, later)
	}
	before := time.Now()
	due, err = c.RescheduleIn(ctx, "rt", "a", time.Hour)
	if err != nil || due.Before(before.Add(time.Hour)) || due.After(time.Now().Add(time.Hour+time.Second)) {
		t.Fatalf("RescheduleIn = %v, %v; want about an hour from %v", due, err, before)
	}
	if info, err := c.Get(ctx, "rt", "a"); err != nil || !info.Due.Equal(due) {
		t.Fatalf("Get after RescheduleIn = %+v, %v; want due %v", info, err, due)
	}

	res, err := c.Cancel(ctx, "", "a", "a")
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || !errors.Is(res[1].Err, client.ErrNotFound) || res[0].Attempts != 1 {
		t.Fatalf("Cancel = %+v", res)
	}

	_, err = c.Get(ctx, "", "a")
	if !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Get after Cancel = %v; want ErrNotFound", err)
	}
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.NotFound || st.Message() == "" {
		t.Fatalf("status.FromError = %v, %v; want the server's NOT_FOUND", st, ok)
	}
	var e *client.Error
	if !errors.As(err, &e) || e.Op != "get" || e.Namespace != "rt" || e.ID != "a" || e.Code != codes.NotFound {
		t.Fatalf("errors.As = %+v", e)
	}
	if _, err := c.Reschedule(ctx, "", "a", farDue); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("Reschedule after Cancel = %v; want ErrNotFound", err)
	}
	if _, err := c.Reschedule(ctx, "", "a", time.Time{}); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("Reschedule to the zero time = %v; want ErrInvalid", err)
	}
}

func TestBatchItemErrors(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())

	res, err := c.ScheduleBatch(ctx, []client.Timer{
		{ID: "ok", Topic: "t", Due: farDue},
		{ID: "ok", Topic: "t", Due: farDue},                      // the same spec: OK
		{ID: "ok", Topic: "other", Due: farDue},                  // another spec
		{ID: "", Topic: "t", Due: farDue},                        // empty id
		{ID: "bad-topic", Topic: "a b", Due: farDue},             // bad topic
		{ID: "both", Topic: "t", Due: farDue, Delay: 1},          // refused by the client
		{ID: "negative", Topic: "t", Delay: -time.Second},        // refused by the client
		{Namespace: "no way", ID: "ns", Topic: "t", Due: farDue}, // bad namespace
		{ID: "big", Topic: "t", Due: farDue, Payload: make([]byte, 65537)},
		{ID: "ns2", Namespace: "other", Topic: "t", Due: farDue},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []struct {
		kind     error
		attempts int
	}{
		{nil, 1}, {nil, 1}, {client.ErrExists, 1}, {client.ErrInvalid, 1}, {client.ErrInvalid, 1},
		{client.ErrInvalid, 0}, {client.ErrInvalid, 0}, {client.ErrInvalid, 1}, {client.ErrInvalid, 1}, {nil, 1},
	}
	for i, w := range want {
		r := res[i]
		if (w.kind == nil) != (r.Err == nil) || (w.kind != nil && !errors.Is(r.Err, w.kind)) || r.Attempts != w.attempts {
			t.Errorf("item %d (%q) = %+v; want %v after %d attempts", i, r.ID, r, w.kind, w.attempts)
		}
		if r.Err == nil && !r.Due.Equal(farDue) {
			t.Errorf("item %d due %v; want %v", i, r.Due, farDue)
		}
		if r.Err != nil && (!r.Due.IsZero() || status.Code(r.Err) == codes.OK) {
			t.Errorf("item %d: failed with due %v, code %v", i, r.Due, status.Code(r.Err))
		}
	}
	if _, err := c.Get(ctx, "other", "ns2"); err != nil {
		t.Errorf("a batch spanning namespaces: %v", err)
	}

	moves, err := c.RescheduleBatch(ctx, "", []client.Move{{ID: "ok", Due: farDue.Add(time.Hour)}, {ID: "missing", Due: farDue}, {ID: "ok", Delay: -1}})
	if err != nil {
		t.Fatal(err)
	}
	if moves[0].Err != nil || !moves[0].Due.Equal(farDue.Add(time.Hour)) ||
		!errors.Is(moves[1].Err, client.ErrNotFound) || !errors.Is(moves[2].Err, client.ErrInvalid) {
		t.Fatalf("RescheduleBatch = %+v", moves)
	}

	if res, err := c.ScheduleBatch(ctx, nil); err != nil || len(res) != 0 {
		t.Fatalf("empty ScheduleBatch = %v, %v", res, err)
	}
	if res, err := c.Cancel(ctx, ""); err != nil || len(res) != 0 {
		t.Fatalf("empty Cancel = %v, %v", res, err)
	}
	// A malformed request as a whole fails the call.
	if _, err := c.Cancel(ctx, "bad namespace", "x"); !errors.Is(err, client.ErrInvalid) || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("Cancel in a bad namespace = %v; want ErrInvalid", err)
	}
}

// loseFirstResponse returns a dial option that lets the first Schedule RPC
// reach the server but reports it to the client as UNAVAILABLE, as when
// the answer is lost, and records every Schedule request sent.
func loseFirstResponse(sent *[]*timerdv1.ScheduleRequest, mu *sync.Mutex) grpc.DialOption {
	var calls atomic.Int32
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != scheduleMethod {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		mu.Lock()
		*sent = append(*sent, proto.Clone(req.(proto.Message)).(*timerdv1.ScheduleRequest))
		mu.Unlock()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if calls.Add(1) == 1 && err == nil {
			return status.Error(codes.Unavailable, "answer lost")
		}
		return err
	})
}

func TestDelayResolvedBeforeFirstAttempt(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	var (
		mu   sync.Mutex
		sent []*timerdv1.ScheduleRequest
	)
	c := newClient(t, srv.GRPCAddr(),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 3, MinBackoff: 20 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}),
		client.WithDialOptions(loseFirstResponse(&sent, &mu)))

	timer := client.Timer{ID: "d", Topic: "t", Delay: time.Hour, Payload: []byte("x")}
	before := time.Now()
	due, err := c.Schedule(ctx, timer)
	if err != nil {
		t.Fatalf("Schedule with a lost answer = %v; want its retry to succeed", err)
	}
	mu.Lock()
	sent = slices.Clone(sent)
	mu.Unlock()
	if len(sent) != 2 {
		t.Fatalf("%d Schedule RPCs; want 2", len(sent))
	}
	if !proto.Equal(sent[0], sent[1]) {
		t.Fatalf("the retry differs from the first attempt:\n%v\n%v", sent[0], sent[1])
	}
	wire := sent[0].GetTimers()[0]
	if wire.GetDelay() != nil || wire.GetDueTime() == nil {
		t.Fatalf("sent %v; want an absolute due time", wire)
	}
	// The server keeps whole milliseconds, rounding up.
	if d := due.Sub(wire.GetDueTime().AsTime()); d < 0 || d >= time.Millisecond {
		t.Fatalf("due %v; sent %v", due, wire.GetDueTime().AsTime())
	}
	if due.Before(before.Add(time.Hour)) || due.After(time.Now().Add(time.Hour+time.Millisecond)) {
		t.Fatalf("due %v; want an hour after the call at %v", due, before)
	}
	if info, err := c.Get(ctx, "", "d"); err != nil || !info.Due.Equal(due) {
		t.Fatalf("Get = %+v, %v; want due %v", info, err, due)
	}
	// Repeating the Schedule with the due time it returned is idempotent.
	timer.Delay, timer.Due = 0, due
	if again, err := c.Schedule(ctx, timer); err != nil || !again.Equal(due) {
		t.Fatalf("Schedule again = %v, %v; want %v", again, err, due)
	}
}

func TestItemRetry(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	var (
		mu    sync.Mutex
		sizes []int
	)
	// The first answer reports the second item as transiently failed.
	flaky := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method != scheduleMethod {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		mu.Lock()
		sizes = append(sizes, len(req.(*timerdv1.ScheduleRequest).GetTimers()))
		first := len(sizes) == 1
		mu.Unlock()
		err := invoker(ctx, method, req, reply, cc, opts...)
		if first && err == nil {
			it := reply.(*timerdv1.ScheduleResponse).GetResults()[1]
			it.Code, it.Message, it.DueTime = int32(codes.Unavailable), "shard moving", nil
		}
		return err
	})
	c := newClient(t, srv.GRPCAddr(), client.WithDialOptions(flaky),
		client.WithRetry(client.RetryPolicy{MaxAttempts: 2, MinBackoff: time.Millisecond, MaxBackoff: time.Millisecond}))
	res, err := c.ScheduleBatch(ctx, []client.Timer{{ID: "x", Topic: "t", Due: farDue}, {ID: "y", Topic: "t", Due: farDue}, {ID: "z", Topic: "t", Due: farDue}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || !r.Due.Equal(farDue) {
			t.Errorf("item %d = %+v", i, r)
		}
	}
	if res[0].Attempts != 1 || res[1].Attempts != 2 || res[2].Attempts != 1 {
		t.Errorf("attempts %d %d %d; want 1 2 1", res[0].Attempts, res[1].Attempts, res[2].Attempts)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, []int{3, 1}) {
		t.Errorf("RPC sizes %v; want [3 1]", sizes)
	}
}

// testCall marks the context of the calls a test counts.
type testCall struct{}

// counted returns ctx marked as the context of a test's own calls.
func counted(ctx context.Context) context.Context { return context.WithValue(ctx, testCall{}, true) }

// countCalls returns a dial option that fails the unary RPCs of method
// with code, and counts those made with a counted context: the client's
// own polls of the cluster (Members, ShardMap) fail alike but are not
// counted.
func countCalls(n *atomic.Int32, method string, code codes.Code) grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, m string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if m == method {
			if ctx.Value(testCall{}) != nil {
				n.Add(1)
			}
			return status.Error(code, "injected")
		}
		return invoker(ctx, m, req, reply, cc, opts...)
	})
}

func TestRetries(t *testing.T) {
	ctx := counted(testCtx(t))
	srv := startServer(t, t.TempDir(), "")
	policy := client.WithRetry(client.RetryPolicy{MaxAttempts: 3, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})

	t.Run("exhausted", func(t *testing.T) {
		var n atomic.Int32
		c := newClient(t, srv.GRPCAddr(), policy, client.WithDialOptions(countCalls(&n, "/timerd.v1.TimerService/Get", codes.Unavailable)))
		_, err := c.Get(ctx, "", "x")
		if !errors.Is(err, client.ErrUnavailable) || status.Code(err) != codes.Unavailable || n.Load() != 3 {
			t.Fatalf("Get = %v after %d calls; want ErrUnavailable after 3", err, n.Load())
		}
	})
	t.Run("batch exhausted", func(t *testing.T) {
		var n atomic.Int32
		c := newClient(t, srv.GRPCAddr(), policy, client.WithDialOptions(countCalls(&n, "/timerd.v1.TimerService/Cancel", codes.DeadlineExceeded)))
		res, err := c.Cancel(ctx, "", "x", "y")
		if !errors.Is(err, client.ErrUnavailable) || n.Load() != 3 {
			t.Fatalf("Cancel = %v after %d calls; want ErrUnavailable after 3", err, n.Load())
		}
		for _, r := range res {
			if r.Err != err || r.Attempts != 3 {
				t.Fatalf("item %+v; want the RPC's error after 3 attempts", r)
			}
		}
	})
	t.Run("permanent", func(t *testing.T) {
		var n atomic.Int32
		c := newClient(t, srv.GRPCAddr(), policy, client.WithDialOptions(countCalls(&n, "/timerd.v1.ClusterService/Members", codes.PermissionDenied)))
		if _, err := c.Members(ctx); !errors.Is(err, client.ErrDenied) || n.Load() != 1 {
			t.Fatalf("Members = %v after %d calls; want ErrDenied after 1", err, n.Load())
		}
	})
	t.Run("replay not retried", func(t *testing.T) {
		var n atomic.Int32
		c := newClient(t, srv.GRPCAddr(), policy, client.WithDialOptions(countCalls(&n, "/timerd.v1.TimerService/ReplayDeadLetters", codes.Unavailable)))
		res, err := c.ReplayDeadLetters(ctx, client.Replay{IDs: []string{"x"}})
		if !errors.Is(err, client.ErrUnavailable) || n.Load() != 1 || !errors.Is(res.Results[0].Err, client.ErrUnavailable) {
			t.Fatalf("ReplayDeadLetters = %+v, %v after %d calls; want ErrUnavailable after 1", res, err, n.Load())
		}
	})
	t.Run("nobody listening", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		c := newClient(t, addr, policy)
		if _, err := c.ShardMap(ctx); !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("ShardMap = %v; want ErrUnavailable", err)
		}
		wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := client.New(wctx, addr, client.WithWaitConnected()); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("New with WithWaitConnected = %v; want DeadlineExceeded", err)
		}
	})
	t.Run("caller gave up", func(t *testing.T) {
		c := newClient(t, srv.GRPCAddr())
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := c.Get(cctx, "", "x")
		if !errors.Is(err, context.Canceled) || status.Code(err) != codes.Canceled {
			t.Fatalf("Get with a cancelled context = %v; want context.Canceled", err)
		}
	})
}

func TestClose(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c, err := client.New(ctx, srv.GRPCAddr(), client.WithWaitConnected())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if _, err := c.Schedule(ctx, client.Timer{ID: "x", Topic: "t"}); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Schedule after Close = %v; want ErrClosed", err)
	}
	if _, err := c.Get(ctx, "", "x"); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Get after Close = %v; want ErrClosed", err)
	}
	if err := c.Subscribe(ctx, "", "t", func(context.Context, *client.Delivery) error { return nil }); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Subscribe after Close = %v; want ErrClosed", err)
	}
}

func TestOptionsValidated(t *testing.T) {
	ctx := testCtx(t)
	for name, opt := range map[string]client.Option{
		"keepalive":  client.WithKeepalive(keepalive.ClientParameters{Time: 5 * time.Second, Timeout: time.Second}),
		"namespace":  client.WithNamespace("no spaces"),
		"retry":      client.WithRetry(client.RetryPolicy{MaxAttempts: 0, MinBackoff: time.Millisecond, MaxBackoff: time.Second}),
		"backoff":    client.WithRetry(client.RetryPolicy{MaxAttempts: 2, MinBackoff: time.Second, MaxBackoff: time.Millisecond}),
		"logger":     client.WithLogger(nil),
		"credential": client.WithTransportCredentials(nil),
	} {
		if _, err := client.New(ctx, "127.0.0.1:1", opt); !errors.Is(err, client.ErrInvalidConfig) {
			t.Errorf("%s: New = %v; want ErrInvalidConfig", name, err)
		}
	}
	c := newClient(t, "127.0.0.1:1")
	for name, cfg := range map[string]client.SchedulerConfig{
		"MaxBatch":    {MaxBatch: -1},
		"MaxPending":  {MaxBatch: 100, MaxPending: 10},
		"MaxInFlight": {MaxInFlight: -2},
		"Linger":      {Linger: time.Hour},
	} {
		if _, err := c.NewScheduler(cfg); !errors.Is(err, client.ErrInvalidConfig) || !strings.Contains(err.Error(), name) {
			t.Errorf("NewScheduler(%+v) = %v; want ErrInvalidConfig naming %s", cfg, err, name)
		}
	}
	h := func(context.Context, *client.Delivery) error { return nil }
	for name, opt := range map[string]client.SubscribeOption{
		"WithWorkers":          client.WithWorkers(0),
		"WithMaxInFlight":      client.WithMaxInFlight(0),
		"WithAckBatch":         client.WithAckBatch(0, time.Millisecond),
		"WithReconnectBackoff": client.WithReconnectBackoff(time.Second, time.Millisecond),
		"WithAckTimeout":       client.WithAckTimeout(-time.Second),
	} {
		if err := c.Subscribe(ctx, "", "t", h, opt); !errors.Is(err, client.ErrInvalidConfig) || !strings.Contains(err.Error(), name) {
			t.Errorf("Subscribe with a bad %s = %v; want ErrInvalidConfig naming it", name, err)
		}
	}
	if err := c.Subscribe(ctx, "", "t", nil); !errors.Is(err, client.ErrInvalidConfig) {
		t.Errorf("Subscribe without a handler = %v; want ErrInvalidConfig", err)
	}
}

func TestScheduler(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr(), client.WithNamespace("sched"))
	s, err := c.NewScheduler(client.SchedulerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var ok, failed, calls atomic.Int64
	var firstErr atomic.Value
	done := func(r client.Result) {
		calls.Add(1)
		if r.Err != nil {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, r.Err)
			return
		}
		if !r.Due.Equal(farDue) {
			failed.Add(1)
			firstErr.CompareAndSwap(nil, fmt.Errorf("%s: due %v", r.ID, r.Due))
			return
		}
		ok.Add(1)
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := w; i < n; i += 4 {
				if err := s.Add(ctx, client.Timer{ID: fmt.Sprintf("t%d", i), Topic: "t", Due: farDue, Payload: []byte("p")}, done); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	// Invalid on its face: refused by Add, done not called.
	if err := s.Add(ctx, client.Timer{ID: "bad", Topic: "t", Due: farDue, Delay: time.Second}, done); !errors.Is(err, client.ErrInvalid) {
		t.Errorf("Add of an invalid timer = %v; want ErrInvalid", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != n || ok.Load() != n {
		t.Fatalf("after Close: %d done calls, %d ok, %d failed (first: %v); want %d ok", calls.Load(), ok.Load(), failed.Load(), firstErr.Load(), n)
	}
	if err := s.Add(ctx, client.Timer{ID: "late", Topic: "t"}, done); !errors.Is(err, client.ErrClosed) {
		t.Errorf("Add after Close = %v; want ErrClosed", err)
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("second Close = %v", err)
	}
	for _, id := range []string{"t0", "t9999", fmt.Sprint("t", n-1)} {
		if info, err := c.Get(ctx, "", id); err != nil || !info.Due.Equal(farDue) {
			t.Errorf("Get(%s) = %+v, %v", id, info, err)
		}
	}
}

func TestSchedulerFlush(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	// A linger far longer than the test: only Flush sends the batch.
	s, err := c.NewScheduler(client.SchedulerConfig{Linger: time.Second, MaxBatch: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	var calls atomic.Int32
	for i := range 10 {
		if err := s.Add(ctx, client.Timer{ID: fmt.Sprint("f", i), Topic: "t", Due: farDue}, func(r client.Result) {
			if r.Err != nil {
				t.Error(r.Err)
			}
			calls.Add(1)
		}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if calls.Load() != 10 {
		t.Fatalf("%d done calls after Flush; want 10", calls.Load())
	}
	if err := s.Flush(ctx); err != nil {
		t.Fatalf("Flush with nothing pending = %v", err)
	}
}

func TestSchedulerSchedule(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	s, err := c.NewScheduler(client.SchedulerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	due, err := s.Schedule(ctx, client.Timer{ID: "sync", Topic: "t", Due: farDue})
	if err != nil || !due.Equal(farDue) {
		t.Fatalf("Scheduler.Schedule = %v, %v", due, err)
	}
	if _, err := s.Schedule(ctx, client.Timer{ID: "sync", Topic: "other", Due: farDue}); !errors.Is(err, client.ErrExists) {
		t.Fatalf("Scheduler.Schedule of another spec = %v; want ErrExists", err)
	}
}

func TestSchedulerBackpressure(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	release := make(chan struct{})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	// Schedule RPCs wait until release is closed or their context ends.
	hold := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if method == scheduleMethod {
			select {
			case <-release:
			case <-ctx.Done():
				return status.FromContextError(ctx.Err()).Err()
			}
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	c := newClient(t, srv.GRPCAddr(), client.WithDialOptions(hold))
	s, err := c.NewScheduler(client.SchedulerConfig{MaxBatch: 10, MaxPending: 20, MaxInFlight: 1, Linger: -1})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var results []client.Result
	done := func(r client.Result) {
		mu.Lock()
		results = append(results, r)
		mu.Unlock()
	}
	for i := range 20 {
		if err := s.Add(ctx, client.Timer{ID: fmt.Sprint("b", i), Topic: "t", Due: farDue}, done); err != nil {
			t.Fatal(err)
		}
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := s.Add(short, client.Timer{ID: "b20", Topic: "t", Due: farDue}, done); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Add beyond MaxPending = %v; want it to block until its context ends", err)
	}
	blocked := make(chan error, 1)
	go func() { blocked <- s.Add(ctx, client.Timer{ID: "b21", Topic: "t", Due: farDue}, done) }()

	// Close gives up on the held RPCs when its context ends.
	cctx, ccancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer ccancel()
	if err := s.Close(cctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Close = %v; want DeadlineExceeded", err)
	}
	if err := <-blocked; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("blocked Add = %v; want ErrClosed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(results) != 20 {
		t.Fatalf("%d done calls; want 20", len(results))
	}
	for _, r := range results {
		if !errors.Is(r.Err, context.Canceled) {
			t.Fatalf("abandoned item %+v; want context.Canceled", r)
		}
	}
}

// receiver collects deliveries for a test.
type receiver struct {
	mu  sync.Mutex
	got []client.Delivery
	at  []time.Time
}

func (r *receiver) add(d *client.Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, *d)
	r.at = append(r.at, time.Now())
}

func (r *receiver) snapshot() []client.Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// subscribe runs Subscribe in the background until the test ends (or stop
// is called) and reports its result on the returned channel.
func subscribe(t *testing.T, c *client.Client, ns, topic string, h client.Handler, opts ...client.SubscribeOption) (stop func(), result <-chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- c.Subscribe(ctx, ns, topic, h, opts...) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("Subscribe = %v; want nil after its context ended", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Subscribe did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return stop, ch
}

func TestSubscribe(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr(), client.WithNamespace("sub"))

	const n = 200
	due := time.Now().Add(300 * time.Millisecond)
	timers := make([]client.Timer, n)
	for i := range timers {
		timers[i] = client.Timer{ID: fmt.Sprint("s", i), Topic: "t", Due: due, Payload: []byte(fmt.Sprint("payload-", i))}
	}
	res, err := c.ScheduleBatch(ctx, timers)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range res {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	var r receiver
	stop, _ := subscribe(t, c, "", "t", func(_ context.Context, d *client.Delivery) error {
		r.add(d)
		return nil
	}, client.WithWorkers(4), client.WithMaxInFlight(50), client.WithAckBatch(16, time.Millisecond))
	eventually(t, "every delivery", func() bool { return r.count() >= n })

	seen := map[string]bool{}
	r.mu.Lock()
	for i, d := range r.got {
		if seen[d.ID] {
			t.Errorf("%s delivered twice without a failure", d.ID)
		}
		seen[d.ID] = true
		if d.Namespace != "sub" || d.Topic != "t" || d.Attempt != 1 || d.DeliveryID == "" ||
			!bytes.Equal(d.Payload, []byte("payload-"+strings.TrimPrefix(d.ID, "s"))) {
			t.Errorf("delivery %+v", d)
		}
		// Never early: the server's clock is this machine's.
		if d.Fired.Before(d.Due) || r.at[i].Before(due) || d.Due.Before(due) {
			t.Errorf("%s early: due %v, fired %v, received %v; scheduled for %v", d.ID, d.Due, d.Fired, r.at[i], due)
		}
	}
	r.mu.Unlock()
	// Acked one-shot timers are gone.
	eventually(t, "the acked timers to be gone", func() bool {
		for i := 0; i < n; i += 20 {
			if _, err := c.Get(ctx, "", fmt.Sprint("s", i)); !errors.Is(err, client.ErrNotFound) {
				return false
			}
		}
		return true
	})
	stop()
	if got := r.count(); got != n {
		t.Errorf("%d deliveries; want %d", got, n)
	}
}

func TestSubscribeRedeliversOnHandlerError(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	if _, err := c.Schedule(ctx, client.Timer{ID: "r", Topic: "retry"}); err != nil {
		t.Fatal(err)
	}
	var r receiver
	subscribe(t, c, "", "retry", func(_ context.Context, d *client.Delivery) error {
		r.add(d)
		if d.Attempt == 1 {
			return errors.New("not yet")
		}
		return nil
	}, client.WithAckTimeout(100*time.Millisecond))
	eventually(t, "the redelivery", func() bool { return r.count() >= 2 })
	eventually(t, "the acked timer to be gone", func() bool {
		_, err := c.Get(ctx, "", "r")
		return errors.Is(err, client.ErrNotFound)
	})
	got := r.snapshot()
	if len(got) != 2 || got[0].Attempt != 1 || got[1].Attempt != 2 || got[0].DeliveryID != got[1].DeliveryID {
		t.Fatalf("deliveries %+v; want attempts 1 and 2 of one delivery id", got)
	}
}

func TestSubscribeReconnects(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	first := startServer(t, dir, "")
	addr := first.GRPCAddr()
	c := newClient(t, addr, client.WithRetry(client.RetryPolicy{MaxAttempts: 50, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond}))

	var r receiver
	subscribe(t, c, "", "re", func(_ context.Context, d *client.Delivery) error {
		r.add(d)
		return nil
	}, client.WithReconnectBackoff(10*time.Millisecond, 200*time.Millisecond))

	if _, err := c.Schedule(ctx, client.Timer{ID: "before", Topic: "re"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first delivery to be acked", func() bool {
		_, err := c.Get(ctx, "", "before")
		return r.count() >= 1 && errors.Is(err, client.ErrNotFound)
	})
	// Due while no server runs: the next server on the same data fires it.
	if _, err := c.Schedule(ctx, client.Timer{ID: "during", Topic: "re", Delay: 300 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := first.Close(cctx); err != nil {
		t.Fatal(err)
	}
	startServer(t, dir, addr)
	if _, err := c.Schedule(ctx, client.Timer{ID: "after", Topic: "re"}); err != nil {
		t.Fatal(err)
	}
	ids := func() []string {
		var ids []string
		for _, d := range r.snapshot() {
			ids = append(ids, d.ID)
		}
		slices.Sort(ids)
		return slices.Compact(ids)
	}
	// At least once: a redelivery of "before" is possible, if its ack was
	// cut short, but every timer must come.
	eventually(t, "the deliveries after the restart", func() bool {
		return slices.Equal(ids(), []string{"after", "before", "during"})
	})
}

func TestSubscribePermanentError(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	h := func(context.Context, *client.Delivery) error { return nil }
	for name, call := range map[string]func() error{
		"bad topic":     func() error { return c.Subscribe(ctx, "", "no spaces", h) },
		"bad namespace": func() error { return c.Subscribe(ctx, "a/b", "t", h) },
		"credit":        func() error { return c.Subscribe(ctx, "", "t", h, client.WithMaxInFlight(1<<20)) },
		"ack timeout":   func() error { return c.Subscribe(ctx, "", "t", h, client.WithAckTimeout(time.Hour)) },
	} {
		err := call()
		if !errors.Is(err, client.ErrInvalid) || status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: Subscribe = %v; want ErrInvalid", name, err)
		}
	}
}

func TestSubscribeClientClosed(t *testing.T) {
	srv := startServer(t, t.TempDir(), "")
	c, err := client.New(context.Background(), srv.GRPCAddr())
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan error, 1)
	go func() {
		ch <- c.Subscribe(context.Background(), "", "t", func(context.Context, *client.Delivery) error { return nil })
	}()
	time.Sleep(50 * time.Millisecond) // let it subscribe (either way it must end)
	c.Close()
	select {
	case err := <-ch:
		if !errors.Is(err, client.ErrClosed) {
			t.Fatalf("Subscribe = %v; want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return after Close")
	}
}

func TestDeadLetters(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	if err := deadLetter(srv.GRPCAddr(), "dl", "mail", "m1"); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, srv.GRPCAddr(), client.WithNamespace("dl"))
	page, err := c.ListDeadLetters(ctx, "", "mail", 10, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page.DeadLetters) != 1 || page.NextPageToken != "" {
		t.Fatalf("ListDeadLetters = %+v", page)
	}
	d := page.DeadLetters[0]
	if d.ID != "m1" || d.State != client.StateDead || d.Attempts != 3 || d.LastAttempt.IsZero() || d.Reason == "" {
		t.Fatalf("dead letter %+v", d)
	}
	if _, err := c.Reschedule(ctx, "", "m1", farDue); !errors.Is(err, client.ErrDead) ||
		!errors.Is(err, client.ErrFailedPrecondition) || status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("Reschedule of a dead letter = %v; want ErrDead", err)
	}
	if _, err := c.ListDeadLetters(ctx, "", "", -1, ""); !errors.Is(err, client.ErrInvalid) {
		t.Fatalf("ListDeadLetters with a negative page size = %v; want ErrInvalid", err)
	}

	res, err := c.ReplayDeadLetters(ctx, client.Replay{IDs: []string{"m1", "nope"}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Replayed != 1 || res.Results[0].Err != nil || !errors.Is(res.Results[1].Err, client.ErrNotFound) {
		t.Fatalf("ReplayDeadLetters = %+v", res)
	}
	var r receiver
	subscribe(t, c, "", "mail", func(_ context.Context, d *client.Delivery) error {
		r.add(d)
		return nil
	})
	eventually(t, "the replayed delivery", func() bool { return r.count() >= 1 })
	if got := r.snapshot()[0]; got.ID != "m1" || got.Attempt != 1 {
		t.Fatalf("replayed delivery %+v", got)
	}
	eventually(t, "the acked timer to be gone", func() bool {
		_, err := c.Get(ctx, "", "m1")
		return errors.Is(err, client.ErrNotFound)
	})
	res, err = c.ReplayDeadLetters(ctx, client.Replay{})
	if err != nil || res.Replayed != 0 || len(res.Results) != 0 {
		t.Fatalf("ReplayDeadLetters of nothing = %+v, %v", res, err)
	}
}

// TestGoroutinesStop checks that a Scheduler's and a subscription's
// goroutines are gone once Close and Subscribe have returned, and the
// client's own once it is closed.
func TestGoroutinesStop(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	s, err := c.NewScheduler(client.SchedulerConfig{MaxBatch: 10})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := s.Add(ctx, client.Timer{ID: fmt.Sprint("g", i), Topic: "g"}, nil); err != nil {
			t.Fatal(err)
		}
	}
	var r receiver
	stop, _ := subscribe(t, c, "", "g", func(_ context.Context, d *client.Delivery) error {
		r.add(d)
		return nil
	})
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the deliveries", func() bool { return r.count() >= 100 })
	stop()
	stacks := func() string {
		buf := make([]byte, 1<<20)
		return string(buf[:runtime.Stack(buf, true)])
	}
	eventually(t, "the Scheduler's and the subscription's goroutines to stop", func() bool {
		s := stacks()
		return !strings.Contains(s, "timerd/client.(*Scheduler)") && !strings.Contains(s, "timerd/client.(*subscriber)") &&
			!strings.Contains(s, "timerd/client.(*session)") && !strings.Contains(s, "timerd/client.(*Client).Subscribe")
	})
	c.Close()
	eventually(t, "the package's goroutines to stop", func() bool {
		return !strings.Contains(stacks(), "timerd/client.(*")
	})
}

func TestKindOf(t *testing.T) {
	for _, tc := range []struct {
		op   string
		code codes.Code
		want error
	}{
		{"schedule", codes.OK, nil},
		{"schedule", codes.InvalidArgument, client.ErrInvalid},
		{"schedule", codes.OutOfRange, client.ErrInvalid},
		{"get", codes.NotFound, client.ErrNotFound},
		{"schedule", codes.AlreadyExists, client.ErrExists},
		{"reschedule", codes.FailedPrecondition, client.ErrDead},
		{"replay dead letters", codes.FailedPrecondition, client.ErrNotDead},
		{"cancel", codes.FailedPrecondition, client.ErrFailedPrecondition},
		{"schedule", codes.Unavailable, client.ErrUnavailable},
		{"schedule", codes.DeadlineExceeded, client.ErrUnavailable},
		{"schedule", codes.PermissionDenied, client.ErrDenied},
		{"schedule", codes.Unauthenticated, client.ErrDenied},
		{"schedule", codes.ResourceExhausted, client.ErrResourceExhausted},
		{"schedule", codes.Internal, client.ErrInternal},
		{"schedule", codes.Unknown, client.ErrInternal},
		{"schedule", codes.Unimplemented, client.ErrInternal},
		{"schedule", codes.DataLoss, client.ErrInternal},
		{"schedule", codes.Aborted, client.ErrInternal},
		{"schedule", codes.Canceled, client.ErrInternal},
		{"schedule", codes.Code(99), client.ErrInternal},
	} {
		if got := client.KindOf(tc.op, tc.code); got != tc.want {
			t.Errorf("KindOf(%q, %v) = %v; want %v", tc.op, tc.code, got, tc.want)
		}
	}
	if !errors.Is(client.ErrDead, client.ErrFailedPrecondition) || !errors.Is(client.ErrNotDead, client.ErrFailedPrecondition) {
		t.Error("ErrDead and ErrNotDead must wrap ErrFailedPrecondition")
	}
}

// BenchmarkScheduler measures schedules per second through a Scheduler to
// an in-process node on the embedded store (client and server share the
// machine, and the allocations counted are both sides').
func BenchmarkScheduler(b *testing.B) {
	ctx := context.Background()
	srv := startServer(b, b.TempDir(), "")
	c := newClient(b, srv.GRPCAddr())
	s, err := c.NewScheduler(client.SchedulerConfig{})
	if err != nil {
		b.Fatal(err)
	}
	var failed atomic.Int64
	done := func(r client.Result) {
		if r.Err != nil {
			failed.Add(1)
		}
	}
	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = fmt.Sprint("bench-", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		if err := s.Add(ctx, client.Timer{ID: ids[i], Topic: "t", Due: farDue}, done); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "timers/s")
	if failed.Load() > 0 {
		b.Fatalf("%d timers failed", failed.Load())
	}
}

// TestClusterStatus checks that Members and ShardMap carry the node's
// incarnation and state and every shard's state, assignment and counts.
func TestClusterStatus(t *testing.T) {
	ctx := testCtx(t)
	srv := startServer(t, t.TempDir(), "")
	c := newClient(t, srv.GRPCAddr())
	for _, id := range []string{"a", "b", "c"} {
		if _, err := c.Schedule(ctx, client.Timer{ID: id, Topic: "t", Due: farDue}); err != nil {
			t.Fatal(err)
		}
	}

	members, err := c.Members(ctx)
	if err != nil || len(members) != 1 {
		t.Fatalf("Members = %+v, %v", members, err)
	}
	if m := members[0]; srv.Owner() != m.Name+"/"+m.Incarnation || m.NodeState != client.NodeActive || m.NodeState.String() != "active" {
		t.Errorf("member %+v, owner %q", m, srv.Owner())
	}

	m, err := c.ShardMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var timers uint64
	for _, s := range m.Shards {
		if s.State != client.ShardServing || s.State.String() != "serving" || s.Assigned != "local" || s.InFlight != 0 || s.Dead != 0 {
			t.Errorf("shard %+v", s)
		}
		timers += s.Timers
	}
	if timers != 3 {
		t.Errorf("timers in the shard map: %d, want 3", timers)
	}
}
