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
	"github.com/timerd/timerd/internal/scrape"
)

// TestTarpitTake: an address makes its burst of bad calls unhindered;
// then each waits for its turn at the rate, at most the longest delay,
// and waits pile up no further than that; the bucket fills again with
// time, and addresses have buckets of their own.
func TestTarpitTake(t *testing.T) {
	tp := newTarpit(Config{BadCallRate: 10, BadCallBurst: 3, BadCallDelay: 500 * time.Millisecond}, nil)
	now := time.Unix(1_700_000_000, 0)
	for i := range 3 {
		if d := tp.take("10.0.0.1", now); d != 0 {
			t.Fatalf("bad call %d of the burst waits %v", i+1, d)
		}
	}
	for i, want := range []time.Duration{100, 200, 300, 400, 500, 500, 500} {
		if d := tp.take("10.0.0.1", now); d != want*time.Millisecond {
			t.Fatalf("bad call %d past the burst waits %v, want %v", i+1, d, want*time.Millisecond)
		}
	}
	if d := tp.take("10.0.0.2", now); d != 0 {
		t.Fatalf("another address waits %v", d)
	}
	// Five waiting calls' worth (0.5 s at 10/s) lapse in 0.5 s, and the
	// burst fills again in 0.3 s more.
	if d := tp.take("10.0.0.1", now.Add(800*time.Millisecond)); d != 0 {
		t.Fatalf("after 0.8 s of quiet a bad call waits %v", d)
	}
	// A full bucket is swept away, as it matches a new one.
	tp.mu.Lock()
	tp.sweepLocked(now.Add(time.Hour))
	left := len(tp.clients)
	tp.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d buckets left after an hour of quiet", left)
	}
}

// TestBadCall: which answers count against a client.
func TestBadCall(t *testing.T) {
	item := func(c codes.Code) *pb.ItemResult { return &pb.ItemResult{Id: "x", Code: int32(c)} }
	for _, tc := range []struct {
		name string
		resp any
		err  error
		want bool
	}{
		{"ok", &pb.GetResponse{}, nil, false},
		{"invalid argument", nil, status.Error(codes.InvalidArgument, "x"), true},
		{"unauthenticated", nil, status.Error(codes.Unauthenticated, "x"), true},
		{"permission denied", nil, status.Error(codes.PermissionDenied, "x"), true},
		{"unimplemented", nil, status.Error(codes.Unimplemented, "x"), true},
		{"not found", nil, status.Error(codes.NotFound, "x"), false},
		{"resource exhausted", nil, status.Error(codes.ResourceExhausted, "x"), false},
		{"unavailable", nil, status.Error(codes.Unavailable, "x"), false},
		{"not a status", nil, errors.New("x"), false},
		{"every item invalid", &pb.ScheduleResponse{Results: []*pb.ItemResult{item(codes.InvalidArgument), item(codes.PermissionDenied)}}, nil, true},
		{"one item fine", &pb.ScheduleResponse{Results: []*pb.ItemResult{item(codes.InvalidArgument), item(codes.OK)}}, nil, false},
		{"items limited", &pb.ScheduleResponse{Results: []*pb.ItemResult{item(codes.ResourceExhausted)}}, nil, false},
		{"cancel of unknown ids", &pb.CancelResponse{Results: []*pb.ItemResult{item(codes.NotFound)}}, nil, false},
		{"empty batch answer", &pb.ScheduleResponse{}, nil, false},
	} {
		if got := badCall(tc.resp, tc.err); got != tc.want {
			t.Errorf("%s: badCall = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestTarpitSlowsBadCalls runs a node whose tarpit lets an address make
// five bad calls a second after a burst of five: of twelve malformed
// calls in a row, the last seven are answered late, and they still get
// their own error; the same client's good calls are not slowed, and a
// node with the tarpit off slows nothing.
func TestTarpitSlowsBadCalls(t *testing.T) {
	for _, tc := range []struct {
		name            string
		rate            float64
		wantBad, slowed float64 // the counters after the calls
	}{
		{"on", 5, 12, 7},
		{"off", 0, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, "", func(c *Config) {
				c.BadCallRate, c.BadCallBurst, c.BadCallDelay = tc.rate, 5, 50*time.Millisecond
			})
			ctx := e.ctx()
			for i := range 12 {
				_, err := e.timers.Get(ctx, &pb.GetRequest{Id: ""})
				if status.Code(err) != codes.InvalidArgument {
					t.Fatalf("bad call %d: %v, want INVALID_ARGUMENT", i+1, err)
				}
			}
			for i := range 5 {
				resp, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Timers: []*pb.TimerSpec{{Id: "good", Topic: "t", When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Hour)}}}})
				if err != nil || resp.GetResults()[0].GetCode() != 0 {
					t.Fatalf("good call %d: %v %v", i+1, resp, err)
				}
			}
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for name, want := range map[string]float64{"timerd_bad_calls_total": tc.wantBad, "timerd_bad_calls_slowed_total": tc.slowed} {
				got, err := scrape.Sum(sctx, e.srv.HTTPAddr(), name)
				if err != nil || got != want {
					t.Fatalf("%s = %v (%v), want %v", name, got, err, want)
				}
			}
		})
	}
}
