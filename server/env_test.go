package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// env is a running in-process server and a client connection to it over
// loopback.
type env struct {
	t       testing.TB
	srv     *Server
	cfg     Config
	conn    *grpc.ClientConn
	timers  pb.TimerServiceClient
	cluster pb.ClusterServiceClient
	// token, when set, is the bearer token subscribe sends.
	token string
}

// testLogger logs to the test when TIMERD_TEST_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TIMERD_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// start starts a server with LocalConfig in dir (a new temp dir when
// empty), changed by opts, and connects to it. Both end with the test.
func start(t testing.TB, dir string, opts ...func(*Config)) *env {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cfg := LocalConfig(dir)
	cfg.Logger = testLogger(t)
	for _, o := range opts {
		o(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	e := &env{t: t, srv: srv, cfg: cfg, conn: conn, timers: pb.NewTimerServiceClient(conn), cluster: pb.NewClusterServiceClient(conn)}
	t.Cleanup(func() { e.stop() })
	return e
}

// stop closes the connection and the server; later calls do nothing.
func (e *env) stop() {
	e.t.Helper()
	_ = e.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := e.srv.Close(ctx); err != nil {
		e.t.Errorf("Close: %v", err)
	}
}

func (e *env) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	e.t.Cleanup(cancel)
	return ctx
}

// spec is a TimerSpec due after delay.
func spec(id, topic string, delay time.Duration) *pb.TimerSpec {
	return &pb.TimerSpec{Id: id, Topic: topic, When: &pb.TimerSpec_Delay{Delay: durationpb.New(delay)}, Payload: []byte("p-" + id)}
}

// schedule schedules specs and fails the test unless every item is OK.
func (e *env) schedule(specs ...*pb.TimerSpec) []*pb.ItemResult {
	e.t.Helper()
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: specs})
	if err != nil {
		e.t.Fatalf("Schedule: %v", err)
	}
	for _, r := range resp.Results {
		if r.Code != 0 {
			e.t.Fatalf("Schedule %s: code %d: %s", r.Id, r.Code, r.Message)
		}
	}
	return resp.Results
}

// stream is an open Subscribe stream whose deliveries arrive on got.
type stream struct {
	t      testing.TB
	s      pb.TimerService_SubscribeClient
	cancel context.CancelFunc
	got    chan *pb.Delivery
	ended  chan error // the stream's end: nil for io.EOF
}

// subscribe opens a stream for topic in the default namespace.
func (e *env) subscribe(sub *pb.Subscription) *stream {
	e.t.Helper()
	ctx, cancel := context.WithCancel(bearer(context.Background(), e.token))
	s, err := e.timers.Subscribe(ctx)
	if err != nil {
		cancel()
		e.t.Fatalf("Subscribe: %v", err)
	}
	// io.EOF from Send means the server has already ended the stream (a
	// refused one, say); its status is what Recv returns, which ended
	// carries, so only another error fails here.
	if err := s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: sub}}); err != nil && !errors.Is(err, io.EOF) {
		cancel()
		e.t.Fatalf("send subscription: %v", err)
	}
	st := &stream{t: e.t, s: s, cancel: cancel, got: make(chan *pb.Delivery, 10_000), ended: make(chan error, 1)}
	go func() {
		for {
			m, err := s.Recv()
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				st.ended <- err
				return
			}
			st.got <- m.Delivery
		}
	}()
	e.t.Cleanup(st.close)
	return st
}

func (s *stream) close() { s.cancel() }

// next waits for the next delivery.
func (s *stream) next() *pb.Delivery {
	s.t.Helper()
	select {
	case d := <-s.got:
		return d
	case err := <-s.ended:
		s.t.Fatalf("stream ended while waiting for a delivery: %v", err)
	case <-time.After(15 * time.Second):
		s.t.Fatal("no delivery within 15s")
	}
	return nil
}

// none fails if a delivery arrives within d.
func (s *stream) none(d time.Duration) {
	s.t.Helper()
	select {
	case got := <-s.got:
		s.t.Fatalf("unexpected delivery of %s (attempt %d)", got.Id, got.Attempt)
	case <-time.After(d):
	}
}

func (s *stream) ack(ds ...*pb.Delivery) {
	s.t.Helper()
	ids := make([]string, len(ds))
	for i, d := range ds {
		ids[i] = d.DeliveryId
	}
	if err := s.s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: ids}}}); err != nil {
		s.t.Fatalf("send ack: %v", err)
	}
}

// end waits for the server to end the stream and returns its error.
func (s *stream) end() error {
	s.t.Helper()
	select {
	case err := <-s.ended:
		return err
	case <-time.After(15 * time.Second):
		s.t.Fatal("stream did not end within 15s")
	}
	return nil
}

// waitSubscribers waits until n streams of topic (default namespace) are
// registered in the hub: a stream's subscription is read by the server
// some time after the client sent it.
func (e *env) waitSubscribers(topic string, n int) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		tp := (*e.srv.hub.topics.Load())[topicKey{"default", topic}]
		if (tp == nil && n == 0) || (tp != nil && len(tp.subs) == n) {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%d subscribers of %q did not register", n, topic)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
