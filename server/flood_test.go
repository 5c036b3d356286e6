package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/timerd/timerd/api/timerd/v1"
	"github.com/timerd/timerd/internal/scrape"
)

// floodResult is what a floodRun saw.
type floodResult struct {
	late []time.Duration // of the good client's timers, sorted
	bad  map[string]int  // "kind code" -> calls, of the flood
}

// floodTokens is the token file of a flood on a node that requires
// tokens: the well-behaved client's, and one of another namespace.
const floodTokens = `{"tokens":[
	{"name":"good","token":"tok-good","namespaces":["*"],"roles":["schedule","subscribe"]},
	{"name":"other","token":"tok-other","namespaces":["other"],"roles":["schedule","subscribe","admin"]}]}`

// startFlood starts a node for floodRun; with tokens it requires them
// (floodTokens), and the env's calls carry the good client's. Without
// tarpit the node answers bad calls as fast as they come.
func startFlood(tb testing.TB, tokens, tarpit bool) *env {
	tb.Helper()
	path := ""
	if tokens {
		path = writeTokens(tb, tb.TempDir(), floodTokens)
	}
	e := start(tb, "", func(c *Config) {
		c.MaxRecvMsgSize = 1 << 20
		c.AuthFile = path
		if !tarpit {
			c.BadCallRate = 0
		}
	})
	if tokens {
		e.token = "tok-good"
	}
	return e
}

// floodRun runs a well-behaved client that schedules n timers due over
// span and receives and acks them, while (with flood) another client
// sends malformed, oversized and invalid-namespace requests as fast as
// it can, some naming the stored timers of namespace victim, and, when
// the node requires tokens (e.token set), requests without a token,
// with an unknown one, and with a token of another namespace. It fails
// tb if a good timer is lost, early or delivered twice, if a flood call
// gets a code other than its kind's, or if a victim timer changed.
func floodRun(tb testing.TB, e *env, n int, span time.Duration, flood bool) floodResult {
	tb.Helper()
	ctx := bearer(context.Background(), e.token)
	victims := make([]*pb.TimerSpec, 50)
	for i := range victims {
		victims[i] = &pb.TimerSpec{Namespace: "victim", Id: fmt.Sprint("v", i), Topic: "t", Payload: []byte("intact"),
			When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(time.Now().Add(time.Hour).Truncate(time.Millisecond))}}
	}
	if _, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Timers: victims}); err != nil {
		tb.Fatal(err)
	}
	res := floodResult{bad: map[string]int{}}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex // guards res.bad
		stop = make(chan struct{})
	)
	if flood {
		fc := pb.NewTimerServiceClient(dial(tb, e.srv.GRPCAddr()))
		big := make([]byte, e.cfg.MaxRecvMsgSize+1024)
		kinds := []struct {
			name string
			want codes.Code
			call func() error
		}{
			{"bad-namespace", codes.InvalidArgument, func() error {
				_, err := fc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "no/such ns", Timers: victims[:1]})
				return err
			}},
			{"empty-batch", codes.InvalidArgument, func() error {
				_, err := fc.Cancel(ctx, &pb.CancelRequest{Namespace: "victim"})
				return err
			}},
			{"bad-items", codes.OK, func() error {
				bad := make([]*pb.TimerSpec, len(victims))
				for i, v := range victims {
					b := proto.CloneOf(v)
					b.Topic, b.Payload = "bad topic", nil
					bad[i] = b
				}
				resp, err := fc.Schedule(ctx, &pb.ScheduleRequest{Timers: bad})
				for _, r := range resp.GetResults() {
					if codes.Code(r.GetCode()) != codes.InvalidArgument {
						return status.Errorf(codes.Internal, "item %s: code %d %s", r.GetId(), r.GetCode(), r.GetMessage())
					}
				}
				return err
			}},
			{"bad-get", codes.InvalidArgument, func() error {
				_, err := fc.Get(ctx, &pb.GetRequest{Namespace: "victim", Id: strings.Repeat("x", 300)})
				return err
			}},
			{"oversized", codes.ResourceExhausted, func() error {
				_, err := fc.Schedule(ctx, &pb.ScheduleRequest{Namespace: "victim", Timers: []*pb.TimerSpec{{Id: "v0", Topic: "t", Payload: big}}})
				return err
			}},
		}
		if e.token != "" {
			victim := &pb.ScheduleRequest{Namespace: "victim", Timers: []*pb.TimerSpec{{Id: "v0", Topic: "t", Payload: []byte("changed"),
				When: &pb.TimerSpec_Delay{Delay: durationpb.New(time.Second)}}}}
			kinds = append(kinds, []struct {
				name string
				want codes.Code
				call func() error
			}{
				{"no-token", codes.Unauthenticated, func() error {
					_, err := fc.Schedule(context.Background(), victim)
					return err
				}},
				{"unknown-token", codes.Unauthenticated, func() error {
					_, err := fc.Cancel(bearer(context.Background(), "tok-guess"), &pb.CancelRequest{Namespace: "victim", Ids: []string{"v1"}})
					return err
				}},
				{"foreign-token", codes.PermissionDenied, func() error {
					_, err := fc.Schedule(bearer(context.Background(), "tok-other"), victim)
					return err
				}},
				{"foreign-subscribe", codes.PermissionDenied, func() error {
					st, err := fc.Subscribe(bearer(context.Background(), "tok-other"))
					if err != nil {
						return err
					}
					_ = st.Send(&pb.SubscribeRequest{Kind: &pb.SubscribeRequest_Subscription{Subscription: &pb.Subscription{Namespace: "victim", Topic: "t"}}})
					_, err = st.Recv()
					return err
				}},
			}...)
		}
		for w := range 2 {
			wg.Go(func() {
				for i := w; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					k := kinds[i%len(kinds)]
					if k.name == "oversized" && i%(10*len(kinds)) >= len(kinds) {
						continue // a tenth as often: its cost is mostly the client's
					}
					err := k.call()
					key := fmt.Sprintf("%s %v", k.name, status.Code(err))
					mu.Lock()
					res.bad[key]++
					mu.Unlock()
					if status.Code(err) != k.want {
						tb.Errorf("flood call %s: %v, want %v", k.name, err, k.want)
						return
					}
				}
			})
		}
	}

	st := e.subscribe(&pb.Subscription{Topic: "good", MaxInFlight: 1000})
	due := map[string]time.Time{}
	start := time.Now().Add(300 * time.Millisecond)
	const batch = 100
	for b := 0; b < n; b += batch {
		var specs []*pb.TimerSpec
		for i := b; i < min(n, b+batch); i++ {
			at := start.Add(span * time.Duration(i) / time.Duration(n)).Truncate(time.Millisecond)
			id := fmt.Sprint("g", i)
			due[id] = at
			specs = append(specs, &pb.TimerSpec{Id: id, Topic: "good", When: &pb.TimerSpec_DueTime{DueTime: timestamppb.New(at)}})
		}
		resp, err := e.timers.Schedule(ctx, &pb.ScheduleRequest{Timers: specs})
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range resp.GetResults() {
			if r.GetCode() != 0 {
				tb.Fatalf("good timer %s: code %d %s", r.GetId(), r.GetCode(), r.GetMessage())
			}
		}
	}
	seen := map[string]bool{}
	for len(seen) < n {
		d := st.next()
		got := time.Now()
		if d.GetAttempt() != 1 || seen[d.GetId()] {
			tb.Fatalf("good timer %s delivered again (attempt %d)", d.GetId(), d.GetAttempt())
		}
		seen[d.GetId()] = true
		if d.GetFiredTime().AsTime().Before(due[d.GetId()]) {
			tb.Fatalf("good timer %s fired at %v, before its due time %v", d.GetId(), d.GetFiredTime().AsTime(), due[d.GetId()])
		}
		res.late = append(res.late, got.Sub(due[d.GetId()]))
		st.ack(d)
	}
	close(stop)
	wg.Wait()
	for _, v := range victims {
		g, err := e.timers.Get(ctx, &pb.GetRequest{Namespace: "victim", Id: v.GetId()})
		if err != nil {
			tb.Fatalf("victim %s: %v", v.GetId(), err)
		}
		sp := g.GetTimer().GetSpec()
		if sp.GetTopic() != "t" || string(sp.GetPayload()) != "intact" || !sp.GetDueTime().AsTime().Equal(v.GetDueTime().AsTime()) ||
			g.GetTimer().GetState() != pb.TimerState_TIMER_STATE_PENDING {
			tb.Fatalf("victim %s changed: %v", v.GetId(), g.GetTimer())
		}
	}
	slices.Sort(res.late)
	return res
}

// TestFlood: a client flooding a node with bad requests gets the right
// code for each, and neither loses, hurries nor duplicates a
// well-behaved client's timers, nor changes a stored one; on a node that
// requires tokens, the flood also sends none, unknown ones and another
// namespace's. The first two runs turn the node's tarpit off, so that
// the flood comes as fast as the client can send it; the last leaves it
// on, and the node slows the flood down.
func TestFlood(t *testing.T) {
	kinds := []string{"bad-namespace InvalidArgument", "empty-batch InvalidArgument", "bad-items OK", "bad-get InvalidArgument", "oversized ResourceExhausted"}
	withTokens := append(slices.Clone(kinds), "no-token Unauthenticated", "unknown-token Unauthenticated", "foreign-token PermissionDenied", "foreign-subscribe PermissionDenied")
	for _, tc := range []struct {
		name           string
		tokens, tarpit bool
		kinds          []string
	}{
		{"open", false, false, kinds},
		{"tokens", true, false, withTokens},
		{"tokens and tarpit", true, true, withTokens},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := startFlood(t, tc.tokens, tc.tarpit)
			r := floodRun(t, e, 1000, 2*time.Second, true)
			t.Logf("flood calls by kind and code: %v", r.bad)
			t.Logf("good timers' lateness under the flood: p50 %v p99 %v", pct(r.late, 50), pct(r.late, 99))
			for _, kind := range tc.kinds {
				if r.bad[kind] == 0 {
					t.Errorf("no flood call of %q", kind)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			slowed, err := scrape.Sum(ctx, e.srv.HTTPAddr(), "timerd_bad_calls_slowed_total")
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("bad calls slowed: %v", slowed)
			if tc.tarpit != (slowed > 0) {
				t.Errorf("with the tarpit %v, %v bad calls were slowed", tc.tarpit, slowed)
			}
		})
	}
}

// BenchmarkFlood prints a well-behaved client's lateness (1,000 timers
// due over 2 s) without and with another client flooding the node with
// bad requests, side by side, and with a flood that adds unauthenticated
// and foreign-namespace requests on a node that requires tokens. The
// node slows a client's bad calls past a burst (Config.BadCallRate); the
// last run floods a node with that off, to show what it saves.
func BenchmarkFlood(b *testing.B) {
	run := func(flood, tokens, tarpit bool) floodResult {
		e := startFlood(b, tokens, tarpit)
		defer e.stop()
		return floodRun(b, e, 1000, 2*time.Second, flood)
	}
	calls := func(r floodResult) float64 {
		n := 0
		for _, c := range r.bad {
			n += c
		}
		return float64(n)
	}
	for range b.N {
		quiet, loud, authed, open := run(false, false, true), run(true, false, true), run(true, true, true), run(true, false, false)
		b.ReportMetric(ms(pct(quiet.late, 50)), "p50-quiet-ms")
		b.ReportMetric(ms(pct(quiet.late, 99)), "p99-quiet-ms")
		b.ReportMetric(ms(pct(loud.late, 50)), "p50-flood-ms")
		b.ReportMetric(ms(pct(loud.late, 99)), "p99-flood-ms")
		b.ReportMetric(calls(loud), "flood-calls")
		b.ReportMetric(ms(pct(authed.late, 50)), "p50-flood-tokens-ms")
		b.ReportMetric(ms(pct(authed.late, 99)), "p99-flood-tokens-ms")
		b.ReportMetric(ms(pct(open.late, 50)), "p50-flood-no-tarpit-ms")
		b.ReportMetric(ms(pct(open.late, 99)), "p99-flood-no-tarpit-ms")
		b.ReportMetric(calls(open), "flood-calls-no-tarpit")
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func pct(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, len(sorted)*p/100)]
}
