package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/shard"
	"github.com/timerd/timerd/store"
)

func TestScheduleDeliverAck(t *testing.T) {
	e := start(t, "")
	res := e.schedule(spec("a", "orders", 200*time.Millisecond))
	due := res[0].DueTime.AsTime()
	st := e.subscribe(&pb.Subscription{Topic: "orders"})
	d := st.next()
	received := time.Now()
	switch {
	case d.Id != "a" || d.Namespace != "default" || d.Topic != "orders" || string(d.Payload) != "p-a":
		t.Fatalf("delivery = %v", d)
	case d.Attempt != 1:
		t.Fatalf("attempt = %d, want 1", d.Attempt)
	case !d.DueTime.AsTime().Equal(due):
		t.Fatalf("delivery due %v, scheduled due %v", d.DueTime.AsTime(), due)
	case d.FiredTime.AsTime().Before(due) || received.Before(due):
		t.Fatalf("early: due %v fired %v received %v", due, d.FiredTime.AsTime(), received)
	}
	got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "a"})
	if err != nil || got.Timer.State != pb.TimerState_TIMER_STATE_IN_FLIGHT || got.Timer.Attempts != 1 {
		t.Fatalf("Get in flight = %v, %v", got, err)
	}
	st.ack(d)
	waitFor(t, "the acked timer to be deleted", func() bool {
		_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "a"})
		return status.Code(err) == codes.NotFound
	})
}

func TestNoAckRedelivers(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", 0))
	st := e.subscribe(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Second)})
	first := st.next()
	second := st.next() // after the 1s ack timeout and the 100ms backoff
	if second.Attempt != 2 || second.DeliveryId != first.DeliveryId || second.Id != "a" {
		t.Fatalf("redelivery = attempt %d id %s, want attempt 2 of %s", second.Attempt, second.DeliveryId, first.DeliveryId)
	}
	st.ack(first) // an ack of any attempt ends the occurrence
	st.none(1500 * time.Millisecond)
}

func TestStreamEndReturnsAtOnce(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", 0))
	first := e.subscribe(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(10 * time.Minute)})
	d := first.next()
	first.close()
	// Far sooner than the 10-minute ack timeout.
	second := e.subscribe(&pb.Subscription{Topic: "t"})
	again := second.next()
	if again.DeliveryId != d.DeliveryId || again.Attempt != 2 {
		t.Fatalf("after the stream ended got %s attempt %d, want %s attempt 2", again.DeliveryId, again.Attempt, d.DeliveryId)
	}
}

func TestCancelBeforeDue(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", 300*time.Millisecond), spec("b", "t", 300*time.Millisecond))
	resp, err := e.timers.Cancel(e.ctx(), &pb.CancelRequest{Ids: []string{"a", "missing", ""}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.NotFound, codes.InvalidArgument}
	for i, r := range resp.Results {
		if codes.Code(r.Code) != want[i] {
			t.Errorf("cancel item %d (%q) = %v %q, want %v", i, r.Id, codes.Code(r.Code), r.Message, want[i])
		}
	}
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	if d := st.next(); d.Id != "b" {
		t.Fatalf("got %s, want b", d.Id)
	}
	st.none(500 * time.Millisecond)
}

func TestRescheduleMoves(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", time.Hour))
	resp, err := e.timers.Reschedule(e.ctx(), &pb.RescheduleRequest{Items: []*pb.RescheduleItem{
		{Id: "a", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(100 * time.Millisecond)}},
		{Id: "nope", When: &pb.RescheduleItem_Delay{Delay: durationpb.New(time.Second)}},
		{Id: "a"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.NotFound, codes.InvalidArgument}
	for i, r := range resp.Results {
		if codes.Code(r.Code) != want[i] {
			t.Errorf("reschedule item %d = %v %q, want %v", i, codes.Code(r.Code), r.Message, want[i])
		}
	}
	due := resp.Results[0].DueTime.AsTime()
	if d := time.Until(due); d > time.Second {
		t.Fatalf("new due time %v is not ~100ms away", due)
	}
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	if d := st.next(); d.Id != "a" || d.DueTime.AsTime().Before(due) || d.FiredTime.AsTime().Before(due) {
		t.Fatalf("delivery %v, want a at %v", d, due)
	}
}

func TestRepeatingTimer(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Shard.MinInterval = 50 * time.Millisecond })
	sp := spec("tick", "t", 0)
	sp.Interval = durationpb.New(100 * time.Millisecond)
	e.schedule(sp)
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	var ids []string
	var last time.Time
	for range 3 {
		d := st.next()
		if d.Id != "tick" || d.Attempt != 1 || slices.Contains(ids, d.DeliveryId) || !d.DueTime.AsTime().After(last) {
			t.Fatalf("occurrence %d: %v (earlier ids %v, last due %v)", len(ids), d, ids, last)
		}
		ids, last = append(ids, d.DeliveryId), d.DueTime.AsTime()
		st.ack(d)
	}
	got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "tick"})
	if err != nil || got.Timer.Spec.Interval.AsDuration() != 100*time.Millisecond {
		t.Fatalf("repeating timer after 3 acks: %v, %v", got, err)
	}
}

func TestDeadLettersAndReplay(t *testing.T) {
	e := start(t, "") // 3 attempts
	e.schedule(spec("a", "t", 0), spec("b", "t", 0), spec("c", "other", 0))
	// Each stream that ends unacked uses up an attempt of what it held.
	for range 3 {
		st := e.subscribe(&pb.Subscription{Topic: "t"})
		st.next()
		st.next()
		st.close()
	}
	var page *pb.ListDeadLettersResponse
	waitFor(t, "two dead letters", func() bool {
		var err error
		page, err = e.timers.ListDeadLetters(e.ctx(), &pb.ListDeadLettersRequest{Topic: "t"})
		return err == nil && len(page.DeadLetters) == 2
	})
	for _, dl := range page.DeadLetters {
		if dl.Timer.State != pb.TimerState_TIMER_STATE_DEAD || dl.Timer.Attempts != 3 || dl.Reason == "" || dl.LastAttemptTime == nil {
			t.Fatalf("dead letter %v", dl)
		}
	}
	// Pages of one walk the shards without repeats.
	var seen []string
	req := &pb.ListDeadLettersRequest{PageSize: 1}
	for {
		p, err := e.timers.ListDeadLetters(e.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, dl := range p.DeadLetters {
			seen = append(seen, dl.Timer.Spec.Id)
		}
		if p.NextPageToken == "" {
			break
		}
		req.PageToken = p.NextPageToken
	}
	slices.Sort(seen)
	if !slices.Equal(seen, []string{"a", "b"}) {
		t.Fatalf("paged dead letters = %v, want [a b]", seen)
	}
	rr, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{Ids: []string{"a", "c", "zz"}})
	if err != nil {
		t.Fatal(err)
	}
	want := []codes.Code{codes.OK, codes.FailedPrecondition, codes.NotFound}
	for i, r := range rr.Results {
		if codes.Code(r.Code) != want[i] {
			t.Errorf("replay item %d = %v %q, want %v", i, codes.Code(r.Code), r.Message, want[i])
		}
	}
	if rr.Replayed != 1 {
		t.Fatalf("replayed %d, want 1", rr.Replayed)
	}
	all, err := e.timers.ReplayDeadLetters(e.ctx(), &pb.ReplayDeadLettersRequest{Topic: "t"})
	if err != nil || all.Replayed != 1 {
		t.Fatalf("replay all = %v, %v; want b replayed", all, err)
	}
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	got := []string{st.next().Id, st.next().Id}
	slices.Sort(got)
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("after replay got %v", got)
	}
}

func TestCreditsBoundInFlight(t *testing.T) {
	e := start(t, "")
	var specs []*pb.TimerSpec
	for i := range 5 {
		specs = append(specs, spec(fmt.Sprint(i), "t", 0))
	}
	e.schedule(specs...)
	st := e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: 2})
	a, b := st.next(), st.next()
	st.none(300 * time.Millisecond)
	st.ack(a)
	c := st.next()
	st.none(300 * time.Millisecond)
	st.ack(b, c)
	st.next()
	st.next()
}

func TestCompetingConsumers(t *testing.T) {
	e := start(t, "")
	const n = 200
	s1 := e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: 1000})
	s2 := e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: 1000})
	e.waitSubscribers("t", 2)
	var specs []*pb.TimerSpec
	for i := range n {
		specs = append(specs, spec(fmt.Sprint(i), "t", 0))
	}
	e.schedule(specs...)
	// The deliveries are never acked: on a slow machine (the race
	// detector, a busy CI) some time out before the last is sent and come
	// again, which is not a second consumer's share. Only first attempts
	// are counted.
	seen := map[string]int{}
	per := [2]int{}
	count := func(k int, d *pb.Delivery) {
		if d.Attempt == 1 {
			seen[d.Id]++
			per[k]++
		}
	}
	for len(seen) < n {
		select {
		case d := <-s1.got:
			count(0, d)
		case d := <-s2.got:
			count(1, d)
		case <-time.After(15 * time.Second):
			t.Fatalf("got %d of %d", len(seen), n)
		}
	}
	if per[0] == 0 || per[1] == 0 || per[0]+per[1] != n {
		t.Fatalf("split %v of first attempts over two subscribers; want both used and %d in all", per, n)
	}
}

func TestTopicWithoutSubscriberWaits(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "late", 0))
	time.Sleep(200 * time.Millisecond) // due, with nobody to take it
	got, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "a"})
	if err != nil || got.Timer.State != pb.TimerState_TIMER_STATE_PENDING || got.Timer.Attempts != 0 {
		t.Fatalf("waiting timer = %v, %v; want PENDING with no attempts", got, err)
	}
	if d := e.subscribe(&pb.Subscription{Topic: "late"}).next(); d.Id != "a" || d.Attempt != 1 {
		t.Fatalf("got %v", d)
	}
}

func TestRestartKeepsTimers(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	var specs []*pb.TimerSpec
	for i := range 50 {
		specs = append(specs, spec(fmt.Sprint("later-", i), "t", 800*time.Millisecond))
	}
	specs = append(specs, spec("now-1", "t", 0), spec("now-2", "t", 0))
	e.schedule(specs...)
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	st.next()
	st.next() // both in flight, never acked
	e.stop()

	e = start(t, dir)
	st = e.subscribe(&pb.Subscription{Topic: "t", MaxInFlight: 1000})
	seen := map[string]bool{}
	for len(seen) < len(specs) {
		d := st.next()
		if d.FiredTime.AsTime().Before(d.DueTime.AsTime()) {
			t.Fatalf("%s fired early", d.Id)
		}
		seen[d.Id] = true
		st.ack(d)
	}
}

func TestSubscribeProtocolErrors(t *testing.T) {
	e := start(t, "")
	tests := []struct {
		name  string
		first *pb.SubscribeRequest
		later *pb.SubscribeRequest
		want  string
	}{
		{"ack first", &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{}}}, nil, "first message"},
		{"empty first", &pb.SubscribeRequest{}, nil, "first message"},
		{"bad namespace", sub(&pb.Subscription{Namespace: "a b", Topic: "t"}), nil, "subscription.namespace"},
		{"no topic", sub(&pb.Subscription{}), nil, "subscription.topic"},
		{"bad topic", sub(&pb.Subscription{Topic: "t/x"}), nil, "subscription.topic"},
		{"max_in_flight too big", sub(&pb.Subscription{Topic: "t", MaxInFlight: 10_001}), nil, "max_in_flight"},
		{"ack timeout zero", sub(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(0)}), nil, "ack_timeout"},
		{"ack timeout negative", sub(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(-time.Second)}), nil, "ack_timeout"},
		{"ack timeout too long", sub(&pb.Subscription{Topic: "t", AckTimeout: durationpb.New(time.Hour)}), nil, "ack_timeout"},
		{"ack timeout malformed", sub(&pb.Subscription{Topic: "t", AckTimeout: &durationpb.Duration{Seconds: 1, Nanos: -1}}), nil, "ack_timeout"},
		{"second subscription", sub(&pb.Subscription{Topic: "t"}), sub(&pb.Subscription{Topic: "t"}), "one subscription"},
		{"empty later message", sub(&pb.Subscription{Topic: "t"}), &pb.SubscribeRequest{}, "kind"},
		{"too many acks", sub(&pb.Subscription{Topic: "t"}), &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{DeliveryIds: make([]string, 10_001)}}}, "limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := e.timers.Subscribe(e.ctx())
			if err != nil {
				t.Fatal(err)
			}
			_ = s.Send(tt.first)
			if tt.later != nil {
				_ = s.Send(tt.later)
			}
			_, err = s.Recv()
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("stream ended with %v; want InvalidArgument mentioning %q", err, tt.want)
			}
		})
	}
}

func sub(s *pb.Subscription) *pb.SubscribeRequest {
	return &pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: s}}
}

func TestUnknownAcksAreIgnored(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", 0))
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	d := st.next()
	if err := st.s.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Ack{Ack: &pb.Ack{
		DeliveryIds: []string{"", "garbage!", "AAAA", d.DeliveryId, d.DeliveryId},
	}}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ack to apply", func() bool {
		_, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "a"})
		return status.Code(err) == codes.NotFound
	})
}

func TestShutdownEndsStreamsUnavailable(t *testing.T) {
	e := start(t, "")
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	e.waitSubscribers("t", 1)
	closed := make(chan error, 1)
	go func() { closed <- e.srv.Close(context.Background()) }()
	if err := st.end(); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream ended with %v, want Unavailable", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.srv.Close(context.Background()); err != nil { // safe twice
		t.Fatalf("second Close: %v", err)
	}
}

func TestHealthReflectionAndHTTP(t *testing.T) {
	e := start(t, "")
	h, err := healthpb.NewHealthClient(e.conn).Check(e.ctx(), &healthpb.HealthCheckRequest{Service: "timerd.v1.TimerService"})
	if err != nil || h.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v", h, err)
	}
	e.schedule(spec("a", "t", time.Hour), spec("b", "t", time.Hour))
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ready: 4 of 4",
		"/metrics": `timerd_timers_scheduled_total{namespace="default"} 2`,
	} {
		resp, err := http.Get("http://" + e.srv.HTTPAddr() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), want) {
			t.Fatalf("GET %s = %d %q; want 200 containing %q", path, resp.StatusCode, body, want)
		}
	}
	resp, _ := http.Get("http://" + e.srv.HTTPAddr() + "/metrics")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"timerd_shard_timers{shard=", `state="pending"`, "timerd_store_commit_seconds_bucket", "timerd_store_commit_ops_bucket", "timerd_shards_loaded 4"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestScheduleRequestNamespace: ScheduleRequest.namespace is the
// namespace of the specs that give none, as the namespace of a
// RescheduleRequest or CancelRequest is for its items; a spec's own wins.
func TestScheduleRequestNamespace(t *testing.T) {
	e := start(t, "")
	own := spec("b", "t", time.Hour)
	own.Namespace = "tenant-b"
	req := &pb.ScheduleRequest{Namespace: "tenant-a", Timers: []*pb.TimerSpec{spec("a", "t", time.Hour), own}}
	for range 2 { // and a retry of it is idempotent
		resp, err := e.timers.Schedule(e.ctx(), req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.Results {
			if r.Code != 0 {
				t.Fatalf("%s: %d %s", r.Id, r.Code, r.Message)
			}
		}
	}
	for _, c := range []struct {
		ns, id string
		want   codes.Code
	}{
		{"tenant-a", "a", codes.OK},
		{"", "a", codes.NotFound},
		{"tenant-b", "b", codes.OK},
		{"tenant-a", "b", codes.NotFound},
	} {
		g, err := e.timers.Get(e.ctx(), &pb.GetRequest{Namespace: c.ns, Id: c.id})
		if status.Code(err) != c.want || err == nil && g.Timer.Spec.Namespace != c.ns {
			t.Errorf("Get %q/%s = %v, %v; want %v", c.ns, c.id, g, err, c.want)
		}
	}
	// The same namespace on the request names them in the other calls.
	if r, err := e.timers.Cancel(e.ctx(), &pb.CancelRequest{Namespace: "tenant-a", Ids: []string{"a"}}); err != nil || r.Results[0].Code != 0 {
		t.Fatalf("Cancel tenant-a/a = %v, %v", r, err)
	}
	_, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Namespace: "no spaces", Timers: []*pb.TimerSpec{own}})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "namespace") {
		t.Fatalf("Schedule with a bad request namespace = %v, want INVALID_ARGUMENT", err)
	}
}

// TestGRPCMetrics: every call is counted by method and code and timed,
// and the node's timers are summed by state.
func TestGRPCMetrics(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("a", "t", time.Hour))
	if _, err := e.timers.Get(e.ctx(), &pb.GetRequest{Id: "nope"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Get = %v, want NotFound", err)
	}
	body := e.metricsText()
	for _, want := range []string{
		`grpc_server_started_total{grpc_method="Schedule",grpc_service="timerd.v1.TimerService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="OK",grpc_method="Schedule",grpc_service="timerd.v1.TimerService",grpc_type="unary"} 1`,
		`grpc_server_handled_total{grpc_code="NotFound",grpc_method="Get",grpc_service="timerd.v1.TimerService",grpc_type="unary"} 1`,
		`grpc_server_handling_seconds_count{grpc_method="Get",grpc_service="timerd.v1.TimerService",grpc_type="unary"} 1`,
		`timerd_timers{state="pending"} 1`,
		`timerd_timers{state="in_flight"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// TestMetricsCountDeliveries: a timer that came due with no subscriber
// and waited for one is counted in timerd_fire_wait_seconds, and one
// that a subscriber took when it came due in timerd_fire_lateness_seconds:
// a consumer that connects late does not make the node look late.
func TestMetricsCountDeliveries(t *testing.T) {
	e := start(t, "")
	e.schedule(spec("waited", "t", 0))
	time.Sleep(200 * time.Millisecond) // due, with no subscriber
	st := e.subscribe(&pb.Subscription{Topic: "t"})
	if d := st.next(); d.Id != "waited" {
		t.Fatalf("got %q, want waited", d.Id)
	} else {
		st.ack(d)
	}
	// The subscriber is there now: the next timer is dispatched when due.
	e.schedule(spec("on-time", "t", 0))
	if d := st.next(); d.Id != "on-time" {
		t.Fatalf("got %q, want on-time", d.Id)
	} else {
		st.ack(d)
	}
	want := []string{
		`timerd_timers_fired_total{namespace="default"} 2`,
		`timerd_timers_acked_total{namespace="default"} 2`,
		`timerd_fire_lateness_seconds_count{namespace="default"} 1`,
		`timerd_fire_wait_seconds_count{namespace="default"} 1`,
		// The wait was at least the 200 ms slept: above the 0.1 s bucket.
		`timerd_fire_wait_seconds_bucket{namespace="default",le="0.1"} 0`,
		`timerd_subscribers{namespace="default"} 1`,
	}
	waitFor(t, "fired, acked, lateness and wait to be counted", func() bool {
		body := e.metricsText()
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
}

// TestMetricNamespacesCap: past Config.MetricNamespaces, namespaces share
// the series labelled "(other)", in every namespace-labelled metric; a
// client's namespace that looks like an overflow label keeps its own.
func TestMetricNamespacesCap(t *testing.T) {
	e := start(t, "", func(c *Config) { c.MetricNamespaces = 2 })
	inNS := func(ns, id string) *pb.TimerSpec {
		s := spec(id, "t", 0)
		s.Namespace = ns
		return s
	}
	// One call each: the first two namespaces seen get series.
	e.schedule(inNS("_other", "a"))
	e.schedule(inNS("b", "b"))
	e.schedule(inNS("c", "c1"), inNS("c", "c2"), inNS("d", "d"))
	for _, ns := range []string{"_other", "b", "c", "d"} {
		st := e.subscribe(&pb.Subscription{Namespace: ns, Topic: "t"})
		d := st.next()
		st.ack(d)
		if ns == "c" {
			st.ack(st.next())
		}
	}
	want := []string{
		`timerd_timers_scheduled_total{namespace="_other"} 1`,
		`timerd_timers_scheduled_total{namespace="b"} 1`,
		`timerd_timers_scheduled_total{namespace="(other)"} 3`,
		`timerd_timers_fired_total{namespace="(other)"} 3`,
		`timerd_timers_acked_total{namespace="(other)"} 3`,
		`timerd_subscribers{namespace="(other)"} 2`,
	}
	// Each first attempt is counted once, in one of two histograms: as
	// having waited for a subscriber when it fired before its stream
	// connected (the usual case here), or not, when a starved machine
	// fired it only after.
	firstAttempts := func(body string) (n int) {
		for _, h := range []string{"timerd_fire_wait_seconds_count", "timerd_fire_lateness_seconds_count"} {
			prefix := h + `{namespace="(other)"} `
			for line := range strings.Lines(body) {
				if v, ok := strings.CutPrefix(strings.TrimSpace(line), prefix); ok {
					c, _ := strconv.Atoi(v)
					n += c
				}
			}
		}
		return n
	}
	waitFor(t, "the overflow namespaces to be counted together", func() bool {
		body := e.metricsText()
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return firstAttempts(body) == 3
	})
	body := e.metricsText()
	for _, ns := range []string{"c", "d"} {
		if l := fmt.Sprintf(`namespace=%q`, ns); strings.Contains(body, l) {
			t.Errorf("/metrics has a series with %s, past the cap of 2", l)
		}
	}
	if shard.ValidNamespace(otherNamespace) == nil {
		t.Errorf("%q is a valid namespace: a tenant's series could mix with the overflow", otherNamespace)
	}
}

func TestClusterServiceSingleNode(t *testing.T) {
	e := start(t, "")
	m, err := e.cluster.Members(e.ctx(), &pb.MembersRequest{})
	if err != nil || len(m.Members) != 1 || m.Members[0].Name != "local" || m.Members[0].ShardsOwned != 4 ||
		m.Members[0].GrpcAddr != e.srv.GRPCAddr() || m.Members[0].State != pb.MemberState_MEMBER_STATE_ALIVE {
		t.Fatalf("Members = %v, %v", m, err)
	}
	sm, err := e.cluster.ShardMap(e.ctx(), &pb.ShardMapRequest{})
	if err != nil || sm.ShardCount != 4 || len(sm.Shards) != 4 {
		t.Fatalf("ShardMap = %v, %v", sm, err)
	}
	for i, o := range sm.Shards {
		if o.Shard != uint32(i) || o.Owner != "local" || o.Epoch == 0 || o.OwnerGrpcAddr != e.srv.GRPCAddr() {
			t.Fatalf("shard %d = %v", i, o)
		}
	}
}

func TestStartErrors(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	first := start(t, "")
	first.stop()
	tests := []struct {
		name string
		set  func(c *Config)
		want string
	}{
		{"port in use", func(c *Config) { c.GRPCAddr = busy.Addr().String() }, busy.Addr().String()},
		{"http port in use", func(c *Config) { c.HTTPAddr = busy.Addr().String() }, "HTTP address"},
		{"data dir under a file", func(c *Config) { c.DataDir = filepath.Join(file, "data") }, "data dir"},
		{"shard count changed", func(c *Config) { c.DataDir = first.cfg.DataDir; c.Shards = 8 }, "holds 4 shards"},
		{"redis unreachable", func(c *Config) { c.RedisURL = "redis://" + busy.Addr().String() }, "Redis at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := LocalConfig(t.TempDir())
			tt.set(&cfg)
			srv, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err = srv.Start(ctx)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Start = %v, want an error mentioning %q", err, tt.want)
			}
			if tt.name == "shard count changed" && !errors.Is(err, store.ErrShardCount) {
				t.Fatalf("Start = %v, want store.ErrShardCount", err)
			}
			if err := srv.Close(ctx); err != nil {
				t.Fatalf("Close after a failed Start: %v", err)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		field string
		set   func(c *Config)
	}{
		{"GRPCAddr", func(c *Config) { c.GRPCAddr = "" }},
		{"DataDir", func(c *Config) { c.DataDir = "" }},
		{"RedisURL", func(c *Config) { c.RedisURL = "redis://127.0.0.1:1,127.0.0.1:x" }},
		{"Shards", func(c *Config) { c.Shards = 0 }},
		{"LoadParallelism", func(c *Config) { c.LoadParallelism = 0 }},
		{"MaxBatch", func(c *Config) { c.MaxBatch = 0 }},
		{"MaxInFlight", func(c *Config) { c.MaxInFlight = 0 }},
		{"DefaultInFlight", func(c *Config) { c.DefaultInFlight = c.MaxInFlight + 1 }},
		{"MinAckTimeout", func(c *Config) { c.MinAckTimeout = 0 }},
		{"MaxAckTimeout", func(c *Config) { c.MaxAckTimeout = c.MinAckTimeout - 1 }},
		{"Shard.AckTimeout", func(c *Config) { c.Shard.AckTimeout = time.Hour }},
		{"SubscriptionTimeout", func(c *Config) { c.SubscriptionTimeout = 0 }},
		{"MaxRecvMsgSize", func(c *Config) { c.MaxRecvMsgSize = 10 }},
		{"MaxConcurrentStreams", func(c *Config) { c.MaxConcurrentStreams = 0 }},
		{"KeepaliveMinTime", func(c *Config) { c.KeepaliveMinTime = 0 }},
		{"MetricNamespaces", func(c *Config) { c.MetricNamespaces = -1 }},
		{"Commit.MaxQueueOps", func(c *Config) { c.Commit.MaxQueueOps = c.MaxBatch - 1 }},
		{"MaxAttempts", func(c *Config) { c.Shard.MaxAttempts = 0 }},
		{"MaxPayload", func(c *Config) { c.Shard.MaxPayload = -1 }},
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig: %v", err)
	}
	if err := LocalConfig(t.TempDir()).Validate(); err != nil {
		t.Fatalf("LocalConfig: %v", err)
	}
	for _, tt := range tests {
		c := DefaultConfig()
		tt.set(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tt.field) {
			t.Errorf("%s: Validate = %v, want ErrInvalidConfig naming it", tt.field, err)
		}
	}
}

// waitFor polls cond until it holds, failing the test after 15s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
