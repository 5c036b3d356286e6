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

// TestBadInput sends every kind of bad input and checks the code and the
// message, and that the stored timer sharing the bad items' id is exactly
// as it was.
func TestBadInput(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Shard.MaxPayload = 1024; c.MaxBatch = 100 })
	kept := spec("kept", "t", time.Hour)
	e.schedule(kept)
	before, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	with := func(change func(s *pb.TimerSpec)) *pb.TimerSpec {
		s := proto.Clone(kept).(*pb.TimerSpec)
		change(s)
		return s
	}
	far := timestamppb.New(time.Now().Add(101 * 365 * 24 * time.Hour))

	items := []struct {
		name string
		spec *pb.TimerSpec
		code codes.Code
		msg  string
	}{
		{"bad namespace", with(func(s *pb.TimerSpec) { s.Namespace = "no spaces" }), codes.InvalidArgument, "namespace"},
		{"long namespace", with(func(s *pb.TimerSpec) { s.Namespace = strings.Repeat("n", 65) }), codes.InvalidArgument, "namespace"},
		{"empty id", with(func(s *pb.TimerSpec) { s.Id = "" }), codes.InvalidArgument, "id"},
		{"long id", with(func(s *pb.TimerSpec) { s.Id = strings.Repeat("i", 257) }), codes.InvalidArgument, "id"},
		{"no topic", with(func(s *pb.TimerSpec) { s.Topic = "" }), codes.InvalidArgument, "topic"},
		{"bad topic", with(func(s *pb.TimerSpec) { s.Topic = "a/b" }), codes.InvalidArgument, "topic"},
		{"long topic", with(func(s *pb.TimerSpec) { s.Topic = strings.Repeat("t", 129) }), codes.InvalidArgument, "topic"},
		{"oversize payload", with(func(s *pb.TimerSpec) { s.Payload = make([]byte, 1025) }), codes.InvalidArgument, "payload"},
		{"negative delay", with(func(s *pb.TimerSpec) { s.When = &pb.TimerSpec_Delay{Delay: durationpb.New(-time.Second)} }), codes.InvalidArgument, "negative delay"},
		{"malformed delay", with(func(s *pb.TimerSpec) {
			s.When = &pb.TimerSpec_Delay{Delay: &durationpb.Duration{Seconds: 1, Nanos: -5}}
		}), codes.InvalidArgument, "delay"},
		{"delay beyond horizon", with(func(s *pb.TimerSpec) {
			s.When = &pb.TimerSpec_Delay{Delay: durationpb.New(101 * 365 * 24 * time.Hour)}
		}), codes.InvalidArgument, "horizon"},
		{"due time beyond horizon", with(func(s *pb.TimerSpec) { s.When = &pb.TimerSpec_DueTime{DueTime: far} }), codes.InvalidArgument, "horizon"},
		{"malformed due time", with(func(s *pb.TimerSpec) {
			s.When = &pb.TimerSpec_DueTime{DueTime: &timestamppb.Timestamp{Seconds: 1, Nanos: 2e9}}
		}), codes.InvalidArgument, "due_time"},
		{"neither due time nor delay", with(func(s *pb.TimerSpec) { s.When = nil }), codes.InvalidArgument, "exactly one of due_time and delay"},
		{"negative interval", with(func(s *pb.TimerSpec) { s.Interval = durationpb.New(-time.Second) }), codes.InvalidArgument, "interval"},
		{"interval below minimum", with(func(s *pb.TimerSpec) { s.Interval = durationpb.New(time.Millisecond) }), codes.InvalidArgument, "interval"},
		{"malformed interval", with(func(s *pb.TimerSpec) { s.Interval = &durationpb.Duration{Seconds: -1, Nanos: 1} }), codes.InvalidArgument, "interval"},
		{"same id, other topic", with(func(s *pb.TimerSpec) { s.Topic = "other" }), codes.AlreadyExists, "different spec"},
		{"same id, other payload", with(func(s *pb.TimerSpec) { s.Payload = []byte("other") }), codes.AlreadyExists, "different spec"},
		{"same id, other delay", with(func(s *pb.TimerSpec) { s.When = &pb.TimerSpec_Delay{Delay: durationpb.New(time.Minute)} }), codes.AlreadyExists, "different spec"},
		// kept was made with a delay: a due time never matches it, not
		// even the one it resolved to.
		{"same id, its due time", with(func(s *pb.TimerSpec) {
			s.When = &pb.TimerSpec_DueTime{DueTime: before.GetTimer().GetSpec().GetDueTime()}
		}), codes.AlreadyExists, "different spec"},
	}
	// One batch of every bad item, beside a good one: only the bad items
	// fail.
	batch := []*pb.TimerSpec{spec("good", "t", time.Hour)}
	for _, it := range items {
		batch = append(batch, it.spec)
	}
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: batch})
	if err != nil {
		t.Fatalf("Schedule: %v", err)
	}
	if len(resp.Results) != len(batch) || resp.Results[0].Code != 0 {
		t.Fatalf("results %v; want %d with the first OK", resp.Results, len(batch))
	}
	for i, it := range items {
		r := resp.Results[i+1]
		if codes.Code(r.Code) != it.code || !strings.Contains(r.Message, it.msg) || r.DueTime != nil {
			t.Errorf("%s: got %v %q; want %v mentioning %q", it.name, codes.Code(r.Code), r.Message, it.code, it.msg)
		}
	}

	// Requests that are malformed as a whole.
	bad := make([]*pb.TimerSpec, 101)
	for i := range bad {
		bad[i] = spec("x", "t", 0)
	}
	cancelItems := func(ns string, ids ...string) error {
		_, err := e.timers.Cancel(e.ctx(), &pb.CancelRequest{Namespace: ns, Ids: ids})
		return err
	}
	moves := []*pb.RescheduleItem{{Id: "kept", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(0)}}}
	requests := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"schedule nothing", func() error { _, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{}); return err }, codes.InvalidArgument, "timers"},
		{"schedule over the batch limit", func() error {
			_, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: bad})
			return err
		}, codes.InvalidArgument, "limit is 100"},
		{"cancel bad namespace", func() error { return cancelItems("a b", "kept") }, codes.InvalidArgument, "namespace"},
		{"cancel nothing", func() error { return cancelItems("") }, codes.InvalidArgument, "ids"},
		{"reschedule bad namespace", func() error {
			_, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{Namespace: "?", Items: moves})
			return err
		}, codes.InvalidArgument, "namespace"},
		{"schedule long request id", func() error {
			_, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: []*pb.TimerSpec{kept}, RequestId: strings.Repeat("r", 129)})
			return err
		}, codes.InvalidArgument, "request_id"},
		{"reschedule long request id", func() error {
			_, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{Items: moves, RequestId: strings.Repeat("r", 129)})
			return err
		}, codes.InvalidArgument, "request_id"},
		{"reschedule nothing", func() error {
			_, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{})
			return err
		}, codes.InvalidArgument, "items"},
		{"get bad namespace", func() error { _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Namespace: "!", Id: "kept"}); return err }, codes.InvalidArgument, "namespace"},
		{"get empty id", func() error { _, err := e.timers.Get(e.ctx(), &pb.GetRequest{}); return err }, codes.InvalidArgument, "id"},
		{"get unknown id", func() error { _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "nope"}); return err }, codes.NotFound, "not found"},
		{"list negative page size", func() error {
			_, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{PageSize: -1})
			return err
		}, codes.InvalidArgument, "page_size"},
		{"list bad topic", func() error {
			_, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{Topic: "a b"})
			return err
		}, codes.InvalidArgument, "topic"},
		{"list malformed token", func() error {
			_, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{PageToken: "%%%"})
			return err
		}, codes.InvalidArgument, "page_token"},
		{"list token of another filter", func() error {
			_, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{PageToken: pageToken(1, "x", "default", "other")})
			return err
		}, codes.InvalidArgument, "another namespace or topic"},
		{"list token past the shards", func() error {
			_, err := e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{PageToken: pageToken(99, "", "default", "")})
			return err
		}, codes.InvalidArgument, "page_token"},
		{"replay negative delay", func() error {
			_, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{When: &pb.ReplayDeadLettersRequest_Delay{Delay: durationpb.New(-1)}})
			return err
		}, codes.InvalidArgument, "negative delay"},
		{"replay beyond horizon", func() error {
			_, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{When: &pb.ReplayDeadLettersRequest_DueTime{DueTime: far}})
			return err
		}, codes.InvalidArgument, "horizon"},
		{"replay bad topic", func() error {
			_, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{Topic: "?"})
			return err
		}, codes.InvalidArgument, "topic"},
		{"replay over the batch limit", func() error {
			_, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{Ids: make([]string, 101)})
			return err
		}, codes.InvalidArgument, "limit is 100"},
	}
	for _, tt := range requests {
		err := tt.call()
		if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.msg) {
			t.Errorf("%s: got %v; want %v mentioning %q", tt.name, err, tt.code, tt.msg)
		}
	}

	// Bad items of Reschedule and Cancel fail alone too.
	rr, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{Items: []*pb.RescheduleItem{
		{Id: "kept"},
		{Id: "kept", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(-time.Second)}},
		{Id: "kept", When: &pb.RescheduleItem_DueTime{DueTime: far}},
		{Id: "", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(time.Second)}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range rr.Results {
		if codes.Code(r.Code) != codes.InvalidArgument {
			t.Errorf("reschedule item %d = %v %q; want InvalidArgument", i, codes.Code(r.Code), r.Message)
		}
	}
	cr, err := e.timers.Cancel(e.ctx(), &pb.CancelRequest{Ids: []string{"", strings.Repeat("x", 257)}})
	if err != nil || codes.Code(cr.Results[0].Code) != codes.InvalidArgument || codes.Code(cr.Results[1].Code) != codes.InvalidArgument {
		t.Fatalf("cancel bad ids = %v, %v", cr, err)
	}

	after, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "kept"})
	if err != nil || !proto.Equal(before, after) {
		t.Fatalf("stored timer changed by bad input:\nbefore %v\nafter  %v (%v)", before, after, err)
	}
}

// TestScheduleRetryDelay: a Schedule retried with the same spec matches
// the timer it made, however much later; a spec given as a delay is the
// same spec only with the same delay (to the millisecond, rounded up),
// because a client retrying sends its request again as it was. A
// different delay asks for a different due time, and gets ALREADY_EXISTS
// even when it would resolve to the first one's.
func TestScheduleRetryDelay(t *testing.T) {
	e := start(t, "")
	due := timestamppb.New(time.Now().Add(time.Hour).Truncate(time.Millisecond))
	byDelay := func(id string, d time.Duration) *pb.TimerSpec { return spec(id, "t", d) }
	byDue := func(id string, ts *timestamppb.Timestamp) *pb.TimerSpec {
		return &pb.TimerSpec{Id: id, Topic: "t", When: &pb.TimerSpec_DueTime{DueTime: ts}, Payload: []byte("p-" + id)}
	}
	cases := []struct {
		name         string
		first, retry *pb.TimerSpec
		want         codes.Code
	}{
		{"same delay", byDelay("a", 30*time.Second), byDelay("a", 30*time.Second), codes.OK},
		{"31s after 30s", byDelay("b", 30*time.Second), byDelay("b", 31*time.Second), codes.AlreadyExists},
		{"29s after 30s", byDelay("c", 30*time.Second), byDelay("c", 29*time.Second), codes.AlreadyExists},
		{"delays within one millisecond", byDelay("d", 30*time.Second+100*time.Microsecond), byDelay("d", 30*time.Second+900*time.Microsecond), codes.OK},
		{"delays a millisecond apart", byDelay("e", 30*time.Second), byDelay("e", 30*time.Second+time.Millisecond), codes.AlreadyExists},
		{"same due time", byDue("f", due), byDue("f", due), codes.OK},
		{"other due time", byDue("g", due), byDue("g", timestamppb.New(due.AsTime().Add(time.Millisecond))), codes.AlreadyExists},
		{"a delay after a due time", byDue("h", due), byDelay("h", time.Hour), codes.AlreadyExists},
	}
	firsts := make([]*pb.TimerSpec, len(cases))
	for i, c := range cases {
		firsts[i] = c.first
	}
	res := e.schedule(firsts...)
	time.Sleep(1100 * time.Millisecond) // the retries come a second later
	retries := make([]*pb.TimerSpec, len(cases))
	for i, c := range cases {
		retries[i] = c.retry
	}
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: retries})
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range cases {
		r := resp.Results[i]
		if codes.Code(r.Code) != c.want {
			t.Errorf("%s: %v %q, want %v", c.name, codes.Code(r.Code), r.Message, c.want)
			continue
		}
		// A retry that matches changes nothing: the timer keeps the due
		// time its first call resolved.
		if c.want == codes.OK && !r.DueTime.AsTime().Equal(res[i].DueTime.AsTime()) {
			t.Errorf("%s: the retry moved the timer from %v to %v", c.name, res[i].DueTime.AsTime(), r.DueTime.AsTime())
		}
	}
}

// FuzzSchedule sends arbitrary ScheduleRequests (decoded from fuzzed
// bytes) to a real server's handler: every item gets a result, codes are
// ones the contract names, and an OK item is stored as asked.
func FuzzSchedule(f *testing.F) {
	for _, req := range []*pb.ScheduleRequest{
		{Timers: []*pb.TimerSpec{spec("a", "t", time.Second)}},
		{Timers: []*pb.TimerSpec{{Namespace: "n", Id: "b", Topic: "t", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.Now()}, Interval: durationpb.New(time.Minute)}}},
		{Timers: []*pb.TimerSpec{{Id: "c", Topic: "t"}, {Id: "", Topic: "?"}}},
		{Namespace: "r", Timers: []*pb.TimerSpec{spec("d", "t", time.Second), {Namespace: "n", Id: "e", Topic: "t", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.Now()}}}},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	srv, svc := fuzzServer(f)
	cfg := srv.cfg
	allowed := map[codes.Code]bool{codes.OK: true, codes.InvalidArgument: true, codes.AlreadyExists: true}

	f.Fuzz(func(t *testing.T, b []byte) {
		var req pb.ScheduleRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		resp, err := svc.Schedule(context.Background(), &req)
		if err != nil {
			if n := len(req.Timers); status.Code(err) != codes.InvalidArgument ||
				(n > 0 && n <= cfg.MaxBatch && shard.ValidNamespace(namespaceOr(req.Namespace)) == nil) {
				t.Fatalf("Schedule of %d timers failed as a whole: %v", n, err)
			}
			return
		}
		if len(resp.Results) != len(req.Timers) {
			t.Fatalf("%d results for %d timers", len(resp.Results), len(req.Timers))
		}
		for i, r := range resp.Results {
			sp := req.Timers[i]
			if !allowed[codes.Code(r.Code)] || r.Id != sp.GetId() {
				t.Fatalf("item %d: %v", i, r)
			}
			if r.Code != 0 {
				continue
			}
			ns := sp.GetNamespace()
			if ns == "" {
				ns = req.GetNamespace()
			}
			got, err := svc.Get(context.Background(), &pb.GetRequest{Namespace: ns, Id: sp.GetId()})
			if err != nil {
				t.Fatalf("item %d OK but Get: %v", i, err)
			}
			if got.Timer.Spec.Topic != sp.GetTopic() || string(got.Timer.Spec.Payload) != string(sp.GetPayload()) {
				t.Fatalf("item %d stored as %v, asked %v", i, got.Timer.Spec, sp)
			}
		}
	})
}
