package server

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
)

// fuzzServer starts a node on the embedded store for a fuzz target, with
// one timer, default/kept, due in an hour, which no request of the
// fuzzer may change unless it names it.
func fuzzServer(f *testing.F) (*Server, *timerService) {
	f.Helper()
	cfg := LocalConfig(f.TempDir())
	cfg.HTTPAddr = ""
	cfg.Logger = testLogger(f)
	srv, err := New(cfg)
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = srv.Close(context.Background()) })
	svc := &timerService{s: srv}
	if _, err := svc.Schedule(context.Background(), &pb.ScheduleRequest{Timers: []*pb.TimerSpec{spec("kept", "t", time.Hour)}}); err != nil {
		f.Fatal(err)
	}
	return srv, svc
}

// checkCall fails t unless err is nil or a status of one of the codes
// allowed, whose message names a field when it is INVALID_ARGUMENT.
func checkCall(t *testing.T, err error, allowed ...codes.Code) {
	t.Helper()
	if err == nil {
		return
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status: %v", err)
	}
	for _, c := range allowed {
		if st.Code() == c {
			if c == codes.InvalidArgument && !strings.Contains(st.Message(), ":") {
				t.Fatalf("INVALID_ARGUMENT names no field: %q", st.Message())
			}
			return
		}
	}
	t.Fatalf("code %v (%s), want one of %v", st.Code(), st.Message(), allowed)
}

// checkResults fails t unless there is one result per item, each with
// its item's id and a code of allowed.
func checkResults(t *testing.T, results []*pb.ItemResult, ids []string, allowed ...codes.Code) {
	t.Helper()
	if len(results) != len(ids) {
		t.Fatalf("%d results for %d items", len(results), len(ids))
	}
	for i, r := range results {
		if r.GetId() != ids[i] {
			t.Fatalf("result %d is of %q, the item is %q", i, r.GetId(), ids[i])
		}
		found := false
		for _, c := range allowed {
			found = found || codes.Code(r.GetCode()) == c
		}
		if !found {
			t.Fatalf("item %d (%q): code %d %q", i, ids[i], r.GetCode(), r.GetMessage())
		}
	}
}

// keptIntact fails t unless the fuzz server's timer default/kept is
// still pending, due in about an hour, when the request did not name it.
func keptIntact(t *testing.T, svc *timerService, named bool) {
	t.Helper()
	if named {
		return
	}
	g, err := svc.Get(context.Background(), &pb.GetRequest{Id: "kept"})
	if err != nil {
		t.Fatalf("the stored timer kept: %v", err)
	}
	if due := time.Until(g.GetTimer().GetSpec().GetDueTime().AsTime()); g.GetTimer().GetState() != pb.TimerState_TIMER_STATE_PENDING || due < 50*time.Minute {
		t.Fatalf("the stored timer kept changed: %v", g.GetTimer())
	}
}

// fuzzSeeds adds the encodings of msgs to f's corpus.
func fuzzSeeds(f *testing.F, msgs ...proto.Message) {
	for _, m := range msgs {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

func FuzzReschedule(f *testing.F) {
	fuzzSeeds(f,
		&pb.RescheduleRequest{Items: []*pb.RescheduleItem{{Id: "a", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(time.Second)}}}},
		&pb.RescheduleRequest{Namespace: "n", Items: []*pb.RescheduleItem{{Id: "", When: &pb.RescheduleItem_DueTime{DueTime: timestamppb.Now()}}, {Id: "b"}}},
		&pb.RescheduleRequest{Items: []*pb.RescheduleItem{{Id: "x", When: &pb.RescheduleItem_Delay{Delay: &durationpb.Duration{Seconds: -1}}}}, RequestId: "r"},
	)
	_, svc := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.RescheduleRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.Reschedule(context.Background(), &req)
		checkCall(t, err, codes.InvalidArgument)
		named := false
		if err == nil {
			ids := make([]string, len(req.GetItems()))
			for i, it := range req.GetItems() {
				ids[i] = it.GetId()
				named = named || it.GetId() == "kept"
			}
			checkResults(t, resp.GetResults(), ids, codes.OK, codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition)
		}
		keptIntact(t, svc, named && namespaceOr(req.GetNamespace()) == defaultNamespace)
	})
}

func FuzzCancel(f *testing.F) {
	fuzzSeeds(f,
		&pb.CancelRequest{Ids: []string{"a", "b"}},
		&pb.CancelRequest{Namespace: "bad/ns", Ids: []string{"a"}},
		&pb.CancelRequest{Ids: []string{"", strings.Repeat("x", 300)}},
	)
	_, svc := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.CancelRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.Cancel(context.Background(), &req)
		checkCall(t, err, codes.InvalidArgument)
		named := false
		if err == nil {
			checkResults(t, resp.GetResults(), req.GetIds(), codes.OK, codes.InvalidArgument, codes.NotFound)
			for _, id := range req.GetIds() {
				named = named || id == "kept"
			}
		}
		keptIntact(t, svc, named && namespaceOr(req.GetNamespace()) == defaultNamespace)
	})
}

func FuzzGet(f *testing.F) {
	fuzzSeeds(f, &pb.GetRequest{Id: "kept"}, &pb.GetRequest{Namespace: "n", Id: "a"}, &pb.GetRequest{Namespace: "(x)"})
	_, svc := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.GetRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.Get(context.Background(), &req)
		checkCall(t, err, codes.InvalidArgument, codes.NotFound)
		if err == nil && (resp.GetTimer().GetSpec().GetId() != req.GetId() || resp.GetTimer().GetSpec().GetNamespace() != namespaceOr(req.GetNamespace())) {
			t.Fatalf("Get(%q, %q) returned %v", req.GetNamespace(), req.GetId(), resp.GetTimer())
		}
		keptIntact(t, svc, false)
	})
}

func FuzzSubscription(f *testing.F) {
	fuzzSeeds(f,
		&pb.Subscription{Topic: "t"},
		&pb.Subscription{Namespace: "n", Topic: "t", MaxInFlight: 5, AckTimeout: durationpb.New(time.Minute)},
		&pb.Subscription{Topic: "t", AckTimeout: &durationpb.Duration{Seconds: -1, Nanos: 5}},
	)
	srv, _ := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var p pb.Subscription
		if proto.Unmarshal(b, &p) != nil {
			return
		}
		sub, err := srv.subscriber(&p)
		checkCall(t, err, codes.InvalidArgument)
		if err != nil {
			return
		}
		switch {
		case sub.key.namespace != namespaceOr(p.GetNamespace()) || sub.key.topic != p.GetTopic():
			t.Fatalf("subscription %v made a subscriber of %v", &p, sub.key)
		case sub.limit < 1 || sub.limit > int(srv.cfg.MaxInFlight):
			t.Fatalf("subscription %v: %d in flight", &p, sub.limit)
		}
	})
}

// FuzzAck acks made-up delivery ids on a stream that holds none: every
// one is ignored, and the stored timer is untouched.
func FuzzAck(f *testing.F) {
	f.Add("1.6b6570.0.1")
	f.Add("")
	f.Add("0.default\x00kept.1.1,zz,..,4294967295.x.1.1")
	srv, svc := fuzzServer(f)
	sub, err := srv.subscriber(&pb.Subscription{Topic: "t"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, list string) {
		ids := strings.Split(list, ",")
		mine, notHeld, notSent, _ := sub.acks(ids, nil)
		if len(mine) != 0 || notHeld+notSent != len(ids) {
			t.Fatalf("a stream that holds nothing acked %v (%d not held, %d not sent)", mine, notHeld, notSent)
		}
		srv.ack(sub, ids, nil, map[uint32][]shard.DeliveryID{})
		keptIntact(t, svc, false)
	})
}

func FuzzListDeadLetters(f *testing.F) {
	fuzzSeeds(f,
		&pb.ListDeadLettersRequest{},
		&pb.ListDeadLettersRequest{Namespace: "n", Topic: "t", PageSize: 5, PageToken: pageToken(1, "a", "n", "t")},
		&pb.ListDeadLettersRequest{PageSize: -1, PageToken: "!!"},
	)
	_, svc := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.ListDeadLettersRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.ListDeadLetters(context.Background(), &req)
		checkCall(t, err, codes.InvalidArgument)
		if n := len(resp.GetDeadLetters()); n != 0 {
			t.Fatalf("%d dead letters listed; there are none", n)
		}
	})
}

func FuzzReplayDeadLetters(f *testing.F) {
	fuzzSeeds(f,
		&pb.ReplayDeadLettersRequest{},
		&pb.ReplayDeadLettersRequest{Namespace: "n", Topic: "t", Ids: []string{"a", "kept"}, When: &pb.ReplayDeadLettersRequest_Delay{Delay: durationpb.New(time.Second)}},
		&pb.ReplayDeadLettersRequest{Ids: []string{""}, When: &pb.ReplayDeadLettersRequest_DueTime{DueTime: &timestamppb.Timestamp{Seconds: -1 << 40}}},
	)
	_, svc := fuzzServer(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.ReplayDeadLettersRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.ReplayDeadLetters(context.Background(), &req)
		checkCall(t, err, codes.InvalidArgument)
		if err == nil {
			if len(req.GetIds()) > 0 {
				checkResults(t, resp.GetResults(), req.GetIds(), codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition)
			}
			if resp.GetReplayed() != 0 {
				t.Fatalf("%d replayed; there are no dead letters", resp.GetReplayed())
			}
		}
		keptIntact(t, svc, false) // a pending timer is no dead letter to replay
	})
}
