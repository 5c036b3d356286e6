package server

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/timerd/timerd/api/timerd/v1"
)

// inNamespace is spec in namespace ns.
func inNamespace(ns, id string, delay time.Duration) *pb.TimerSpec {
	s := spec(id, "t", delay)
	s.Namespace = ns
	return s
}

// scheduleCodes schedules specs and returns the code of each item.
func (e *env) scheduleCodes(specs ...*pb.TimerSpec) ([]codes.Code, []*pb.ItemResult) {
	e.t.Helper()
	resp, err := e.timers.Schedule(e.ctx(), &pb.ScheduleRequest{Timers: specs})
	if err != nil {
		e.t.Fatalf("Schedule: %v", err)
	}
	out := make([]codes.Code, len(resp.Results))
	for i, r := range resp.Results {
		out[i] = codes.Code(r.Code)
	}
	return out, resp.Results
}

func batch(ns, prefix string, n int, delay time.Duration) []*pb.TimerSpec {
	out := make([]*pb.TimerSpec, n)
	for i := range out {
		out[i] = inNamespace(ns, fmt.Sprintf("%s%d", prefix, i), delay)
	}
	return out
}

// setLimitsNow stops the clock of the limiter's rate buckets at at.
func (e *env) setLimitsNow(at time.Time) {
	e.srv.limits.mu.Lock()
	e.srv.limits.now = func() time.Time { return at }
	e.srv.limits.mu.Unlock()
}

func countCodes(cs []codes.Code) map[codes.Code]int {
	out := map[codes.Code]int{}
	for _, c := range cs {
		out[c]++
	}
	return out
}

func TestNamespaceMaxPending(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Limits.MaxPending = 10 })
	e.schedule(batch("a", "x", 8, 0)...)
	got, res := e.scheduleCodes(batch("a", "y", 5, time.Hour)...)
	want := []codes.Code{codes.OK, codes.OK, codes.ResourceExhausted, codes.ResourceExhausted, codes.ResourceExhausted}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("item %d: %v (%s), want %v", i, got[i], res[i].Message, want[i])
		}
	}
	r := res[2]
	if !strings.Contains(r.Message, `namespace "a"`) || !strings.Contains(r.Message, "10 pending timers") ||
		r.RetryDelay.AsDuration() != PendingRetryDelay {
		t.Fatalf("refused item: %q, retry delay %v", r.Message, r.RetryDelay.AsDuration())
	}
	if r := res[0]; r.RetryDelay != nil {
		t.Fatalf("admitted item has a retry delay %v", r.RetryDelay.AsDuration())
	}
	// Another namespace has its own limit.
	e.schedule(batch("b", "x", 10, time.Hour)...)

	// Timers that fire and are acked make room again; those in flight
	// still count.
	st := e.subscribe(&pb.Subscription{Namespace: "a", Topic: "t"})
	var ds []*pb.Delivery
	for range 8 {
		ds = append(ds, st.next())
	}
	if got, _ := e.scheduleCodes(inNamespace("a", "z", time.Hour)); got[0] != codes.ResourceExhausted {
		t.Fatalf("with 8 timers in flight and 2 pending: %v, want RESOURCE_EXHAUSTED", got[0])
	}
	st.ack(ds[:3]...)
	waitFor(t, "the acked timers to leave the count", func() bool { return e.srv.limits.pending("a") == 7 })
	e.schedule(batch("a", "w", 3, time.Hour)...)
	if got, _ := e.scheduleCodes(inNamespace("a", "v", time.Hour)); got[0] != codes.ResourceExhausted {
		t.Fatalf("at the limit again: %v, want RESOURCE_EXHAUSTED", got[0])
	}
	if body := e.metricsText(); !strings.Contains(body, `timerd_limit_rejections_total{limit="pending",namespace="a"} 5`) {
		t.Fatalf("/metrics lacks 5 pending rejections of a:\n%s", grepLines(body, "limit_rejections"))
	}
}

func grepLines(body, substr string) string {
	var out []string
	for l := range strings.SplitSeq(body, "\n") {
		if strings.Contains(l, substr) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func TestNamespaceScheduleRate(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Limits.ScheduleRate, c.Limits.ScheduleBurst = 10, 5 })
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	setNow := e.setLimitsNow
	setNow(now)
	got, res := e.scheduleCodes(batch("a", "x", 8, time.Hour)...)
	if c := countCodes(got); c[codes.OK] != 5 || c[codes.ResourceExhausted] != 3 {
		t.Fatalf("8 at once with a burst of 5: %v", c)
	}
	// Each refused item is told when the rate admits it: 100ms apart.
	for k, r := range res[5:] {
		if want := time.Duration(k+1) * 100 * time.Millisecond; r.RetryDelay.AsDuration() != want || !strings.Contains(r.Message, "schedule rate") {
			t.Fatalf("refused item %d: retry delay %v, want %v; %q", k, r.RetryDelay.AsDuration(), want, r.Message)
		}
	}
	e.schedule(batch("b", "x", 5, time.Hour)...) // another namespace, another bucket
	setNow(now.Add(200 * time.Millisecond))
	if c := countCodes(func() []codes.Code { g, _ := e.scheduleCodes(batch("a", "y", 3, time.Hour)...); return g }()); c[codes.OK] != 2 || c[codes.ResourceExhausted] != 1 {
		t.Fatalf("200ms later: %v, want 2 admitted", c)
	}
	setNow(now.Add(time.Hour))
	if c := countCodes(func() []codes.Code { g, _ := e.scheduleCodes(batch("a", "z", 6, time.Hour)...); return g }()); c[codes.OK] != 5 {
		t.Fatalf("an hour later: %v, want the burst of 5 and no more", c)
	}
	if body := e.metricsText(); !strings.Contains(body, `timerd_limit_rejections_total{limit="rate",namespace="a"} 5`) {
		t.Fatalf("/metrics lacks 5 rate rejections of a:\n%s", grepLines(body, "limit_rejections"))
	}
}

func TestMaxSubscribeStreams(t *testing.T) {
	e := start(t, "", func(c *Config) { c.Limits.MaxSubscribeStreams = 2 })
	first := e.subscribe(&pb.Subscription{Topic: "t"})
	e.subscribe(&pb.Subscription{Topic: "t"})
	e.waitSubscribers("t", 2)

	third := e.subscribe(&pb.Subscription{Topic: "t"})
	err := third.end()
	st := status.Convert(err)
	if st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "2 Subscribe streams") {
		t.Fatalf("third stream ended with %v, want RESOURCE_EXHAUSTED naming the limit", err)
	}
	var retry *errdetails.RetryInfo
	for _, d := range st.Details() {
		if r, ok := d.(*errdetails.RetryInfo); ok {
			retry = r
		}
	}
	if retry == nil || retry.RetryDelay.AsDuration() != StreamRetryDelay {
		t.Fatalf("details %v, want a RetryInfo of %v", st.Details(), StreamRetryDelay)
	}

	first.close()
	waitFor(t, "the closed stream to leave the count", func() bool { return e.srv.limits.streams.Load() == 1 })
	again := e.subscribe(&pb.Subscription{Topic: "t"})
	e.schedule(spec("a", "t", 0))
	select {
	case d := <-again.got:
		t.Logf("delivery %s on the stream opened after one closed", d.Id)
	case d := <-third.got:
		t.Fatalf("refused stream got %v", d)
	case <-time.After(15 * time.Second):
		// The other stream of the two may have taken it.
	}
	if body := e.metricsText(); !strings.Contains(body, "timerd_subscribe_streams_refused_total 1") {
		t.Fatalf("/metrics lacks the refused stream:\n%s", grepLines(body, "refused"))
	}
}

// TestMaxConcurrentStreams: past MaxConcurrentStreams calls on one
// connection, the next call waits (here until its deadline) while other
// connections are served; it goes through once a stream ends.
func TestMaxConcurrentStreams(t *testing.T) {
	e := start(t, "", func(c *Config) { c.MaxConcurrentStreams = 2 })
	a := e.subscribe(&pb.Subscription{Topic: "t"})
	e.subscribe(&pb.Subscription{Topic: "t"})
	e.waitSubscribers("t", 2)

	get := func(c pb.TimerServiceClient, d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.Get(ctx, &pb.GetRequest{Id: "none"})
		return err
	}
	if err := get(e.timers, 300*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("a third call on a connection of 2 streams: %v, want it to wait until its deadline", err)
	}
	other := pb.NewTimerServiceClient(dial(t, e.srv.GRPCAddr()))
	if err := get(other, 15*time.Second); status.Code(err) != codes.NotFound {
		t.Fatalf("a call on another connection: %v, want NOT_FOUND", err)
	}
	a.close()
	if err := get(e.timers, 15*time.Second); status.Code(err) != codes.NotFound {
		t.Fatalf("once a stream ended: %v, want NOT_FOUND", err)
	}
}

func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		set   func(*Limits)
		field string // "" for valid
	}{
		{"defaults", func(*Limits) {}, ""},
		{"all set", func(l *Limits) { l.MaxPending, l.ScheduleRate, l.ScheduleBurst = 10, 0.5, 3 }, ""},
		{"negative pending", func(l *Limits) { l.MaxPending = -1 }, "Limits.MaxPending"},
		{"negative rate", func(l *Limits) { l.ScheduleRate = -1 }, "Limits.ScheduleRate"},
		{"infinite rate", func(l *Limits) { l.ScheduleRate = math.Inf(1) }, "Limits.ScheduleRate"},
		{"burst without rate", func(l *Limits) { l.ScheduleBurst = 3 }, "Limits.ScheduleBurst"},
		{"negative burst", func(l *Limits) { l.ScheduleRate, l.ScheduleBurst = 1, -1 }, "Limits.ScheduleBurst"},
		{"delivery rate", func(l *Limits) { l.DeliverRate, l.DeliverBurst = 5000, 10 }, ""},
		{"negative delivery rate", func(l *Limits) { l.DeliverRate = -1 }, "Limits.DeliverRate"},
		{"NaN delivery rate", func(l *Limits) { l.DeliverRate = math.NaN() }, "Limits.DeliverRate"},
		{"delivery burst without rate", func(l *Limits) { l.DeliverBurst = 3 }, "Limits.DeliverBurst"},
		{"negative delivery burst", func(l *Limits) { l.DeliverRate, l.DeliverBurst = 1, -1 }, "Limits.DeliverBurst"},
		{"no streams", func(l *Limits) { l.MaxSubscribeStreams = 0 }, "Limits.MaxSubscribeStreams"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := LocalConfig(t.TempDir())
			tc.set(&c.Limits)
			err := c.Validate()
			switch {
			case tc.field == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.field != "" && (!errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.field)):
				t.Fatalf("Validate = %v, want an ErrInvalidConfig naming %s", err, tc.field)
			}
		})
	}
}
